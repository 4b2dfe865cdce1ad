"""The shard tool's worker pool: a worker killed in the middle of an input (as by a decoder crash)
costs that input alone, rejected as `crash` with its path; the others keep their order and results."""
import os
import signal
import time

from shards.inputs import Rejection
from shards.pool import OrderedPool


def _work(path: str) -> str:
    """Stands in for decoding a file: 'crash*' kills its process half-way through."""
    time.sleep(0.05)
    if path.startswith("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    return path.upper()


def test_a_worker_killed_mid_file_rejects_that_file_and_the_run_goes_on():
    items = ["a.mp4", "b.mp4", "crash.mp4", "c.mp4", "d.mp4", "crash_too.mp4", "e.mp4"]
    with OrderedPool(_work, workers=2, max_pending_per_worker=2) as pool:
        results = list(pool.map(items))
    assert [item for item, _ in results] == items  # input order, every input once
    for item, result in results:
        if item.startswith("crash"):
            assert isinstance(result, Rejection) and result.category == "crash" and result.path == item
            assert "crashed the decoder process" in result.reason
        else:
            assert result == item.upper()
