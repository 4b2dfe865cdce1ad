"""Training batches by epoch, resumable in the middle of one: the bookkeeping both pretraining loaders
share (the DALI pipeline, `dali_pipelines/iterator.py`; the reference loader, `xkd/train/data.py`).

A loader can replay any epoch from its start with the same batches (its order and augmentation are
seeded by the epoch), but not jump into the middle of one: DALI cannot checkpoint its video decoder,
and a DataLoader cannot skip ahead either. So a resumed epoch is replayed and the batches trained on
before the interruption are read and passed over, which gives exactly the batches an uninterrupted
run would have seen."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator


class EpochStream(ABC):
    """`iter()` yields the next epoch's batches: `len(self)` of them (equal on every rank), or, when the
    loader gives no count (None), as many as its epoch holds. `state_dict()` / `load_state_dict()` say
    and restore where the stream stands: the epoch and the next batch to train on.

    A loader implements `_epoch(epoch, total)`: an iterator over the epoch's batches in order, as
    loader outputs (`total`: how many will be read, passed-over ones included; None: all), and
    `_to_batch(output)`: the TrainingBatch of one output (passed-over outputs skip it)."""

    def __init__(self, batches_per_epoch: int | None):
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0  # the epoch the next iter() yields
        self._position = 0  # batches of self.epoch handed out
        self._pass_over = 0  # batches of self.epoch read and dropped on the next iter() (resume)

    def __len__(self) -> int:
        return self.batches_per_epoch

    @abstractmethod
    def _epoch(self, epoch: int, total: int | None) -> Iterator:
        """The epoch's loader outputs in order (see the class docstring)."""

    def _to_batch(self, output):
        return output

    def __iter__(self):
        pass_over, self._pass_over = self._pass_over, 0
        total = self.batches_per_epoch
        outputs = self._epoch(self.epoch, total)
        self._position = 0
        try:
            while total is None or self._position < total:  # never read past the epoch's last batch
                output = next(outputs, None)
                if output is None:
                    break
                self._position += 1
                if self._position > pass_over:  # the others were trained on before the interruption
                    yield self._to_batch(output)
        finally:
            outputs.close()
        self.epoch += 1
        self._position = 0

    def state_dict(self) -> dict:
        epoch, batch = self.epoch, self._position
        if self.batches_per_epoch is not None and batch >= self.batches_per_epoch:
            epoch, batch = epoch + 1, 0
        return {"epoch": epoch, "batch": batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._pass_over = int(state["epoch"]), int(state["batch"])
