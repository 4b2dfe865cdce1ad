"""DALI outputs -> `TrainingBatch`es (dali_pipelines/batch.py) on the pipeline's device, by epoch."""
from __future__ import annotations

import gc
import json
import re
import warnings
import weakref

import torch
from nvidia.dali.plugin.base_iterator import LastBatchPolicy

from dali_pipelines.batch import SampleDecodeError, TrainingBatch
from dali_pipelines.bounded_iterator import BoundedIterator
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
    number of batches (that of the smallest rank share), as DDP/DeepSpeed need.

    `pipeline_factory(excluded, epoch)` builds the DALI pipeline for `epoch` without the (tar, key)
    samples in `excluded`. With `per_epoch_pipelines`, every epoch gets a fresh pipeline whose
    seed and rank share depend only on the epoch, so a run can resume in the middle of an epoch
    (`load_state_dict`): the pipeline of that epoch is rebuilt and the batches already trained on are
    decoded and passed over (DALI cannot checkpoint its video decoder), giving exactly the batches an
    uninterrupted run would have seen. Otherwise one pipeline runs epoch after epoch. A per-epoch
    pipeline decodes only the batches its epoch reads (`BoundedIterator`), and the heap it freed goes
    back to the system before the next is built (`release_free_heap`), so rebuilds cost little time
    and no memory.

    With `skip_bad`, a sample that does not decode is named (in the next batch's `skipped`, and as
    a warning), left out, and the pipeline rebuilt without it; the run goes
    on. After such a rebuild an epoch is the next `len(self)` batches of the stream (so every rank
    still yields the same count); without `skip_bad` the error stops the iteration."""

    def __init__(self, pipeline_factory, names: list[str], batches_per_epoch: int | None, drop_last: bool,
                 cast: torch.dtype | None = None, skip_bad: bool = False, per_epoch_pipelines: bool = False):
        """cast: the dtype torch turns DALI's float outputs into (bfloat16, which DALI lacks), or None."""
        self.names = names
        self.batches_per_epoch = batches_per_epoch
        self.cast = cast
        self.epoch = 0  # the epoch the next iter() yields
        self._factory, self._skip_bad, self._per_epoch = pipeline_factory, skip_bad, per_epoch_pipelines
        self._policy = LastBatchPolicy.DROP if drop_last else LastBatchPolicy.PARTIAL
        self._excluded: set[tuple[str, str]] = set()
        self._unreported: list[str] = []
        self._windowed = False  # epochs are windows of the stream after a rebuild
        self._yielded = 0  # batches of the current epoch handed out
        self._pass_over = 0  # batches of self.epoch to decode and drop (resume)
        self._dali = self._pipeline = None
        self._dali = self._start(batches_per_epoch if per_epoch_pipelines else None)
        self._unread_pipeline_epoch = 0  # the epoch the freshly built pipeline is for

    def _start(self, runs: int | None = None) -> BoundedIterator:
        """A DALI iterator over a new pipeline for `self.epoch`; `runs`: the batches it will be asked
        for (None: read on until stopped)."""
        while True:
            try:  # the iterator runs the first batch right away
                pipeline = self._factory(frozenset(self._excluded), self.epoch)
                self._pipeline = weakref.ref(pipeline)
                return BoundedIterator([pipeline], self.names, runs, reader_name=READER, auto_reset=True,
                                       last_batch_policy=self._policy)
            except RuntimeError as error:
                self._record(error)

    def _drop_pipeline(self) -> None:
        """Stop the current pipeline and free its threads and buffers before the next is built."""
        self._dali = None  # the pipeline shuts down here, unless a cycle (a traceback) still holds it
        if self._pipeline is not None and self._pipeline() is not None:
            gc.collect()
        release_free_heap()

    def _record(self, error: RuntimeError) -> None:
        explained = explain_dali_error(error)
        if not (self._skip_bad and isinstance(explained, SampleDecodeError)):
            raise explained from error
        self._excluded.add((explained.tar, explained.key))
        self._unreported.append(str(explained))
        warnings.warn(f"skipped: {explained}", stacklevel=3)

    def _recover(self, error: RuntimeError) -> None:
        self._record(error)
        self._drop_pipeline()
        self._dali = self._start()
        self._windowed = True

    def __len__(self) -> int:
        return self.batches_per_epoch if self.batches_per_epoch is not None else len(self._dali)

    def state_dict(self) -> dict:
        """Where the stream stands: the next batch to train on, and the samples left out so far."""
        epoch, batch = self.epoch, self._yielded
        if self.batches_per_epoch is not None and batch >= self.batches_per_epoch:
            epoch, batch = epoch + 1, 0
        return {"epoch": epoch, "batch": batch, "excluded": sorted(list(pair) for pair in self._excluded)}

    def load_state_dict(self, state: dict) -> None:
        if not self._per_epoch:
            raise ValueError("only an iterator with per-epoch pipelines can resume mid-stream")
        self.epoch, self._pass_over = int(state["epoch"]), int(state["batch"])
        self._excluded = {tuple(pair) for pair in state.get("excluded", [])}
        self._unread_pipeline_epoch = None  # rebuild, with the exclusions, on the next iter()

    def _views(self, outputs: dict, prefix: str) -> list[torch.Tensor]:
        views = [outputs[n] for n in self.names if n.startswith(prefix)]
        return [v.to(self.cast) for v in views] if self.cast else views

    def _to_batch(self, outputs: dict) -> TrainingBatch:
        keys, labels = parse_meta(outputs["meta"])
        device = next(t.device for n, t in outputs.items() if n != "meta")
        batch = TrainingBatch(self._views(outputs, "video"), self._views(outputs, "audio"), labels.to(device), keys,
                              skipped=self._unreported)  # members left out since the previous batch
        self._unreported = []
        return batch

    def __iter__(self):
        if self._per_epoch and self._unread_pipeline_epoch != self.epoch:
            self._drop_pipeline()
            self._windowed = bool(self._excluded)  # fewer samples than len(self) counts on: fill from the stream
            bounded = not self._windowed and self.batches_per_epoch is not None
            self._dali = self._start(self._pass_over + self.batches_per_epoch if bounded else None)
        self._unread_pipeline_epoch = None
        pass_over, self._pass_over = self._pass_over, 0
        self._yielded = position = pass_over if self.batches_per_epoch is not None else 0
        stream_ended = False
        while self.batches_per_epoch is None or position < self.batches_per_epoch:
            try:
                outputs = next(self._dali)
            except StopIteration:
                if self._windowed and self.batches_per_epoch is not None:
                    continue  # the rebuilt stream's epoch ended: go on filling this one
                stream_ended = True
                break
            except RuntimeError as error:
                self._recover(error)
                continue
            if pass_over > 0:  # resuming: these batches were trained on before the interruption
                pass_over -= 1
                continue
            position += 1
            self._yielded = position
            yield self._to_batch(outputs[0])
        while not (stream_ended or self._windowed or self._per_epoch):  # drain this rank's extra batch: next epoch starts clean
            try:
                next(self._dali)
            except StopIteration:
                break
            except RuntimeError as error:
                self._recover(error)
        self.epoch += 1
        self._yielded = 0
