"""DALI outputs -> the batch dict every stage shares:
{"video": [global (B,3,T,H,W), local_1, ...], "audio": [global (B,1,80,T), local_1, ...],
 "label": (B,) int64 (-1 when unlabelled), "key": list[str]}, as torch tensors on the device."""
from __future__ import annotations

import json
import os
import re

import torch
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from dali_pipelines.pretrain import READER


class SampleDecodeError(RuntimeError):
    """A shard member that fails to decode, named by shard and key."""


# DALI names the failing member as "<tar path>:<offset>:<key>.<ext>" in its error text
_DALI_SOURCE = re.compile(r'"([^"]+\.tar):(\d+):([^".]+)\.([^"]+)"')


def explain_dali_error(error: Exception) -> Exception:
    match = _DALI_SOURCE.search(str(error))
    if not match:
        return error
    tar, _, key, ext = match.groups()
    return SampleDecodeError(f"{os.path.basename(tar)}: sample {key}: member .{ext} does not decode "
                             f"(shard {tar}; find every bad member with `xkd shards verify`)")


def parse_meta(meta: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """The zero-padded JSON members of a batch -> (keys, labels)."""
    keys, labels = [], []
    for row in meta.cpu().numpy():
        info = json.loads(row.tobytes().rstrip(b"\0"))
        keys.append(info["key"])
        labels.append(-1 if info.get("label_id") is None else info["label_id"])
    return keys, torch.tensor(labels, dtype=torch.int64)


class BatchIterator:
    """Iterates one epoch of batch dicts per `iter()`. With `drop_last`, every rank yields the same
    number of batches (that of the smallest rank share), as DDP/DeepSpeed need."""

    def __init__(self, pipeline, names: list[str], batches_per_epoch: int | None, drop_last: bool,
                 dtype: str = "float32"):
        self.names = names
        self.batches_per_epoch = batches_per_epoch
        self.cast = torch.bfloat16 if dtype == "bfloat16" else None
        try:  # the iterator runs the first batch right away
            self._dali = DALIGenericIterator(
                [pipeline], names, reader_name=READER, auto_reset=True,
                last_batch_policy=LastBatchPolicy.DROP if drop_last else LastBatchPolicy.PARTIAL)
        except RuntimeError as error:
            raise explain_dali_error(error) from error

    def __len__(self) -> int:
        return self.batches_per_epoch if self.batches_per_epoch is not None else len(self._dali)

    def _to_batch(self, outputs: dict) -> dict:
        keys, labels = parse_meta(outputs["meta"])
        convert = (lambda t: t.to(self.cast)) if self.cast else (lambda t: t)
        batch = {
            "video": [convert(outputs[n]) for n in self.names if n.startswith("video")],
            "audio": [convert(outputs[n]) for n in self.names if n.startswith("audio")],
            "label": labels.to(next(t.device for n, t in outputs.items() if n != "meta")),
            "key": keys,
            "skipped": [],  # the reference loader can skip undecodable members; DALI stops instead
        }
        return batch

    def __iter__(self):
        yielded = 0
        while True:
            try:
                outputs = next(self._dali)
            except StopIteration:
                return
            except RuntimeError as error:
                raise explain_dali_error(error) from error
            if self.batches_per_epoch is not None and yielded >= self.batches_per_epoch:
                continue  # drain this rank's extra batch so the next epoch starts clean
            yielded += 1
            yield self._to_batch(outputs[0])
