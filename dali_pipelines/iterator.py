"""DALI outputs -> `TrainingBatch`es (dali_pipelines/batch.py) on the pipeline's device, by epoch."""
from __future__ import annotations

import gc
import json
import re
import warnings
import weakref

import torch
from nvidia.dali.plugin.base_iterator import LastBatchPolicy

from dali_pipelines.batch import SampleDecodeError, TrainingBatch, sample_labels
from dali_pipelines.bounded_iterator import BoundedIterator
from dali_pipelines.epochs import EpochStream
from dali_pipelines.host_memory import release_free_heap
from dali_pipelines.pretrain import READER


# DALI names the failing member as "<tar path>:<offset>:<key>.<ext>" in its error text
_DALI_SOURCE = re.compile(r'"([^"]+\.tar):(\d+):([^".]+)\.([^"]+)"')


def explain_dali_error(error: Exception) -> Exception:
    match = _DALI_SOURCE.search(str(error))
    if not match:
        return error
    tar, _, key, extension = match.groups()
    return SampleDecodeError(tar, key, extension)


def parse_meta(meta: torch.Tensor) -> tuple[list[str], torch.Tensor, list[tuple[int, ...]]]:
    """The zero-padded JSON members of a batch -> (keys, labels (B,) int64, label sets): see
    `sample_labels` (-1 and the ids for a multi-label sample)."""
    keys, labels, label_sets = [], [], []
    for row in meta.cpu().numpy():
        info = json.loads(row.tobytes().rstrip(b"\0"))
        keys.append(info["key"])
        label, label_set = sample_labels(info)
        labels.append(label)
        label_sets.append(label_set)
    return keys, torch.tensor(labels, dtype=torch.int64), label_sets


def join_parts(parts: list[dict]) -> dict:
    """One batch from the outputs of several pipelines (each a part of it), in pipeline order. The
    zero-padded JSON rows are padded to the widest before they are stacked."""
    if len(parts) == 1:
        return parts[0]
    joined = {}
    for name in parts[0]:
        tensors = [part[name] for part in parts]
        if name == "meta":
            width = max(t.shape[1] for t in tensors)
            tensors = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors]
        joined[name] = torch.cat(tensors)
    return joined


class PipelineEpochs(EpochStream):
    """TrainingBatches by epoch from DALI pipelines. With `drop_last`, every rank yields the same number
    of batches (that of the smallest rank share), as DDP/DeepSpeed need; without it an epoch is one
    pass over the rank's share, the last batch possibly smaller.

    `pipeline_factory(excluded, epoch)` builds the pipelines of `epoch` (a list: one, or several that
    each make a part of every batch) without the (tar, key) samples in `excluded`; their seeds and
    rank shares depend only on the epoch, so an epoch can be replayed to
    resume in its middle (see `EpochStream`). Each epoch gets a fresh pipeline, which decodes only the
    batches its epoch reads (`BoundedIterator`); the heap the previous one freed goes back to the
    system before the next is built (`release_free_heap`), so rebuilds cost little time and no memory.

    With `skip_bad`, a sample that does not decode is named (in the next batch's `skipped`, and as a
    warning), left out, and the pipeline rebuilt without it; the run goes on. After such a rebuild an
    epoch is the next `len(self)` batches of the stream (so every rank still yields the same count);
    without `skip_bad` the error stops the iteration."""

    def __init__(self, pipeline_factory, names: list[str], batches_per_epoch: int | None, drop_last: bool,
                 cast: torch.dtype | None = None, skip_bad: bool = False):
        """cast: the dtype torch turns DALI's float outputs into (bfloat16, which DALI lacks), or None."""
        super().__init__(batches_per_epoch)
        self.names, self.cast = names, cast
        self._factory, self._skip_bad = pipeline_factory, skip_bad
        self._policy = LastBatchPolicy.DROP if drop_last else LastBatchPolicy.PARTIAL
        self._excluded: set[tuple[str, str]] = set()
        self._unreported: list[str] = []
        self._dali, self._pipelines = None, []
        # epoch 0's pipeline right away: it tells len() when there is no count, and a bad first sample shows early
        self._dali = self._start(0, batches_per_epoch)
        self._ready_for = (0, batches_per_epoch)  # (epoch, runs) the unread pipeline was built for

    def __len__(self) -> int:
        return self.batches_per_epoch if self.batches_per_epoch is not None else len(self._dali)

    def _start(self, epoch: int, runs: int | None) -> BoundedIterator:
        """A DALI iterator over a new pipeline for `epoch`; `runs`: the batches it will be asked for
        (None: read on until stopped)."""
        while True:
            try:  # the iterator runs the first batch right away
                pipelines = self._factory(frozenset(self._excluded), epoch)
                self._pipelines = [weakref.ref(pipeline) for pipeline in pipelines]
                return BoundedIterator(pipelines, self.names, runs, reader_name=READER, auto_reset=True,
                                       last_batch_policy=self._policy)
            except RuntimeError as error:
                self._record(error)

    def _drop_pipeline(self) -> None:
        """Stop the current pipeline and free its threads and buffers before the next is built."""
        self._dali = None  # the pipelines shut down here, unless a cycle (a traceback) still holds one
        if any(pipeline() is not None for pipeline in self._pipelines):
            gc.collect()
        release_free_heap()

    def _record(self, error: RuntimeError) -> None:
        explained = explain_dali_error(error)
        if not (self._skip_bad and isinstance(explained, SampleDecodeError)):
            raise explained from error
        self._excluded.add((explained.tar, explained.key))
        self._unreported.append(str(explained))
        warnings.warn(f"skipped: {explained}", stacklevel=3)

    def _epoch(self, epoch: int, total: int | None):
        # without exclusions the epoch's pipeline holds exactly its batches; with them, fewer samples
        # than len(self) counts on: fill the epoch from the stream (the pipeline's next pass)
        windowed = bool(self._excluded)
        runs = None if windowed else total
        if self._ready_for != (epoch, runs):
            self._drop_pipeline()
            self._dali = self._start(epoch, runs)
        self._ready_for = None
        while True:
            try:
                yield join_parts(next(self._dali))
            except StopIteration:
                if windowed and total is not None:
                    continue  # the rebuilt stream's pass ended: go on filling this epoch
                return
            except RuntimeError as error:
                self._record(error)
                self._drop_pipeline()
                self._dali = self._start(epoch, None)
                windowed = True

    def state_dict(self) -> dict:
        """Where the stream stands: the next batch to train on, and the samples left out so far."""
        return {**super().state_dict(), "excluded": sorted(list(pair) for pair in self._excluded)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._excluded = {tuple(pair) for pair in state.get("excluded", [])}
        self._ready_for = None  # rebuild, with the exclusions, on the next iter()

    def _views(self, outputs: dict, prefix: str) -> list[torch.Tensor]:
        views = [outputs[n] for n in self.names if n.startswith(prefix)]
        return [v.to(self.cast) for v in views] if self.cast else views

    def _to_batch(self, outputs: dict) -> TrainingBatch:
        keys, labels, _ = parse_meta(outputs["meta"])  # pretraining reads no label sets
        device = next(t.device for n, t in outputs.items() if n != "meta")
        batch = TrainingBatch(self._views(outputs, "video"), self._views(outputs, "audio"), labels.to(device), keys,
                              skipped=self._unreported)  # members left out since the previous batch
        self._unreported = []
        return batch
