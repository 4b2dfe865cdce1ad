"""The training state a checkpoint holds, the checkpoint manager's cadence, and the metrics window, on
their own (the whole loop saving, resuming and exporting is tested in test_train.py)."""
import math
from pathlib import Path

import torch

from xkd.config import load_config, to_dict
from xkd.models import build_xkd
from xkd.train.checkpoint import CheckpointManager, complete_tags, read_marker
from xkd.train.metrics import MetricsLog, MetricsWindow
from xkd.train.state import TrainingState

# the client_state keys of the checkpoints this project has written: they must stay readable
CLIENT_STATE_KEYS = {"teachers", "criterion", "step", "data", "nonfinite_total", "world_size", "config"}


class Position:
    """A batch source's resumable position (the interface of xkd/train/data.py)."""

    def __init__(self, epoch=0, batch=0):
        self.epoch, self.batch = epoch, batch

    def state_dict(self):
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state):
        self.epoch, self.batch = state["epoch"], state["batch"]


def micro_state(seed: int, data=None, **counters) -> TrainingState:
    cfg = load_config("xkd_micro")
    torch.manual_seed(seed)
    return TrainingState(cfg, build_xkd(cfg), data, **counters)


def test_the_training_state_round_trips_every_part_in_the_checkpoint_format():
    saved = micro_state(0, Position(epoch=2, batch=5), world_size=4, step=17, nonfinite_total=3)
    with torch.no_grad():
        for buffer in saved.model.criterion.buffers():
            buffer.fill_(0.5)  # centres moved away from their initial zeros
    state = saved.state_dict()
    assert set(state) == CLIENT_STATE_KEYS and state["data"] == {"epoch": 2, "batch": 5}
    assert saved.marker() == {"variant": "xkd", "model": to_dict(saved.config.model), "epoch": 2, "world_size": 4}

    loaded = micro_state(1, Position(), world_size=1)
    loaded.load_state_dict(state)
    assert (loaded.step, loaded.nonfinite_total, loaded.data.state_dict()) == (17, 3, {"epoch": 2, "batch": 5})
    assert loaded.world_size == 1  # this run's, not the checkpoint's
    for part in ("teachers", "criterion"):
        mine, theirs = getattr(loaded.model, part).state_dict(), getattr(saved.model, part).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), part
    assert TrainingState.saved_config(state) == saved.config

    exported = micro_state(2)  # export: no batch source
    exported.load_state_dict(state)
    assert exported.step == 17


class FakeEngine:
    """DeepSpeed's save/load of the engine, keeping the client state in memory."""

    def __init__(self):
        self.saved: dict[str, dict] = {}

    def save_checkpoint(self, root, tag, client_state, save_latest):
        (Path(root) / tag).mkdir(parents=True)
        self.saved[tag] = client_state

    def load_checkpoint(self, root, tag, **_):
        return None, self.saved[tag]


def test_the_checkpoint_manager_saves_at_its_cadence_the_last_step_and_a_stop(tmp_path):
    state = micro_state(0, Position(), world_size=1)
    engine = FakeEngine()

    def manager(run_state):
        return CheckpointManager(tmp_path, engine, run_state, MetricsLog(tmp_path, False), every=3, last_step=10,
                                 keep=2, rank=0, device=torch.device("cpu"),
                                 engine_facts={"zero_stage": 0, "precision": "fp32"})

    checkpoints = manager(state)
    for step in range(1, 8):
        state.step, state.data.batch = step, step
        took = checkpoints.save_if_due()
        assert (took > 0) == (step in (3, 6))
    checkpoints.save_unless_saved()  # a stop at step 7
    checkpoints.save_unless_saved()  # nothing new to save
    assert sorted(engine.saved) == ["step000000003", "step000000006", "step000000007"]
    assert complete_tags(tmp_path) == ["step000000006", "step000000007"]  # keep 2
    marker = read_marker(tmp_path / "checkpoints" / "step000000007")
    assert marker == {"step": 7, **state.marker(), "zero_stage": 0, "precision": "fp32"}

    resumed = micro_state(1, Position(), world_size=1)
    resumed_checkpoints = manager(resumed)
    saved = resumed_checkpoints.load(tmp_path / "checkpoints" / "step000000007")
    assert (resumed.step, resumed.data.state_dict(), saved["data"]) == (7, {"epoch": 0, "batch": 7}, {"epoch": 0, "batch": 7})
    resumed_checkpoints.save_unless_saved()  # the resumed step is saved already
    resumed.step = 10
    resumed_checkpoints.save_if_due()  # the last step
    assert sorted(engine.saved)[-1] == "step000000010"


def test_the_metrics_window_averages_the_losses_and_leaves_out_paused_time():
    window = MetricsWindow()
    window.add({"loss": 1.0, "loss_recon": 4.0}, clips=8)
    window.add({"loss": 3.0, "loss_recon": 2.0}, clips=8)
    assert window.mean_losses() == {"loss": 2.0, "loss_recon": 3.0} and window.clips == 16
    window.started -= 5.0
    window.pause(2.0)
    assert 3.0 <= window.elapsed() < 3.5
    assert math.isnan(MetricsWindow().mean_losses()["loss"])
