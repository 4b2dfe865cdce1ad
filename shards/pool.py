"""Runs `make_sample` over inputs in worker processes and yields the results in input order, with a
bounded number in flight (memory stays flat however slow one video is). A worker killed by a
decoder crash does not end the run: the victim is found by re-running in isolation and rejected."""
from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from shards.inputs import Rejection


def _quiet_worker() -> None:
    import av

    av.logging.set_level(av.logging.PANIC)  # a rejection carries the reason; FFmpeg's chatter is noise


class OrderedPool:
    def __init__(self, function, workers: int, max_pending_per_worker: int = 4):
        self.function, self.workers = function, max(1, workers)
        self.max_pending = self.workers * max_pending_per_worker
        self._context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
        self._executor = self._new_executor(self.workers)

    def _new_executor(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=self._context, initializer=_quiet_worker)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def map(self, items):
        """Yields (item, result) in the order of `items`."""
        items = iter(items)
        pending: deque = deque()

        def submit_next():
            for item in items:
                pending.append([item, self._executor.submit(self.function, item)])
                return

        for _ in range(self.max_pending):
            submit_next()
        while pending:
            item, future = pending[0]
            try:
                result = future.result()
            except BrokenProcessPool:
                result = self._recover(pending)
            pending.popleft()
            yield item, result
            submit_next()

    def _recover(self, pending: deque):
        """The pool died under one of the pending inputs. Run the oldest alone: if it kills its
        process again it is the culprit; then give the others a fresh pool."""
        item = pending[0][0]
        isolated = self._new_executor(1)
        try:
            result = isolated.submit(self.function, item).result()
        except BrokenProcessPool:
            path = getattr(item, "path", str(item))
            result = Rejection(path, "crashed the decoder process (killed by a signal)", "crash")
        finally:
            isolated.shutdown(wait=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor(self.workers)
        for entry in list(pending)[1:]:
            entry[1] = self._executor.submit(self.function, entry[0])
        return result
