"""A non-finite step changes nothing, on every rank: two processes under torchrun, one batch with a NaN
in rank 1's teacher view and, later, one step with a NaN in a student gradient on rank 0. Both are
skipped by both ranks; weights, optimizer state, teachers and KD centres equal their values before
each, and the run goes on to finish with finite losses."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # six two-process training runs

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Runs on each rank. Batches are made by the data source below, which also photographs the whole
# training state before handing out each batch (after the previous batch's step).
SCRIPT = r"""
import json, sys, torch
from xkd.train.distributed import finish_process, start_process
process = start_process()
from xkd.config import load_config
from xkd.models.synthetic import synthetic_batch
from xkd.train.loop import Trainer

ds, run_dir, out = sys.argv[1:4]
BATCHES, NAN_TEACHER_AT, NAN_GRADIENT_AT = 9, 3, 6
cfg = load_config("xkd_micro", ["data.batch_size=2", "train.max_steps=7", "train.log_every_steps=1",
                                "train.warmup_epochs=0", "train.base_lr=0.05"])
rank = process.rank
gradient_fault = [False]


def tensors(state):
    return [v.detach().clone() for v in state.values() if torch.is_tensor(v)]


def photograph(trainer):
    optimizer = trainer.base_optimizer
    # ZeRO-3: this rank's partition of each weight (.data is whatever was last gathered)
    students = [getattr(p, "ds_tensor", p).detach().clone() for p in trainer.engine.module.parameters()]
    return {"students": students,
            # the fp32 weights the optimizer steps (ZeRO-3 hands them to it only during its step)
            "fp32_weights": [p.detach().clone() for p in
                             [p for group in optimizer.param_groups for p in group["params"]] or list(optimizer.state)],
            "optimizer_state": [t for state in optimizer.state.values() for t in tensors(state)],
            "teachers": tensors(trainer.model.teachers.state_dict()),
            "centres": tensors(trainer.model.criterion.state_dict())}


class FaultyBatches:  # the training-batch interface (xkd/train/data.py)
    epoch = 0
    def __init__(self):
        self.photos = []
    def __len__(self):
        return BATCHES
    def __iter__(self):
        for index in range(BATCHES):
            self.photos.append(photograph(trainer))
            batch = synthetic_batch(cfg.data, 2, generator=torch.Generator().manual_seed(100 * rank + index))
            if index == NAN_TEACHER_AT and rank == 1:
                batch.video[cfg.model.teacher_view][0, 0, 0, 0, 0] = float("nan")
            gradient_fault[0] = index == NAN_GRADIENT_AT and rank == 0
            yield batch
        self.photos.append(photograph(trainer))
        self.epoch += 1
    def state_dict(self):
        return {"epoch": self.epoch, "batch": 0}
    def load_state_dict(self, state):
        self.epoch = state["epoch"]


data = FaultyBatches()
trainer = Trainer(cfg, None, run_dir, process, ds, quiet=True, data=data)
fc1 = trainer.model.students.video.blocks[0].mlp.fc1.weight
fc1.register_hook(lambda grad: grad * float("nan") if gradient_fault[0] else grad)
summary = trainer.run()
changed = []  # per batch: which parts of the state its step changed
for before, after in zip(data.photos, data.photos[1:]):
    changed.append({part: len(before[part]) != len(after[part])
                          or any(not torch.equal(a, b) for a, b in zip(before[part], after[part]))
                    for part in before})
    changed[-1]["finite"] = all(bool(torch.isfinite(t).all()) for part in after.values() for t in part)
json.dump({"summary": summary, "changed": changed, "layout": trainer.gradient_layout},
          open(f"{out}/rank{rank}.json", "w"))
finish_process()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("ds, layout", [("zero0_fp32.json", "full"), ("zero1_fp32.json", "fragments"),
                                        ("zero2_fp32.json", "fragments"), ("zero3_fp32.json", "zero3"),
                                        ("zero0.json", "full"), ("zero1.json", "fragments")])
def test_a_nonfinite_batch_or_gradient_changes_nothing_on_any_rank(tmp_path, ds, layout):
    """Every way DeepSpeed holds the gradients: whole (ZeRO-0, fp32 and bf16), fragments (ZeRO-1/2, and
    DeepSpeed's bf16 optimizer at ZeRO-1), ZeRO-3 partitions."""
    script = tmp_path / "faulty_run.py"
    script.write_text(SCRIPT)
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env = {**inherited, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    run = tmp_path / "run"
    done = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), str(script),
         str(ROOT / "xkd" / "deepspeed_configs" / ds), str(run), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    skipped = [(e["event"], e["step"]) for e in events if e.get("event", "").startswith("nonfinite")]
    # batch 3 (NaN teacher view on rank 1) and batch 6 (NaN gradient on rank 0; step 5, since batch 3 made none)
    assert skipped == [("nonfinite_loss_skipped", 3), ("nonfinite_gradient_skipped", 5)]
    losses = [e["loss"] for e in events if "loss" in e]
    assert len(losses) == 7 and all(abs(x) < 1e6 for x in losses)  # and finite: NaN fails the comparison
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text().replace("NaN", "null"))
        assert result["summary"]["outcome"] == "finished" and result["summary"]["step"] == 7
        assert result["summary"]["nonfinite_total"] == 2 and result["layout"] == layout
        for batch, changed in enumerate(result["changed"]):
            parts = {part for part, moved in changed.items() if moved and part != "finite"}
            assert changed["finite"], (rank, batch)
            if batch in (3, 6):
                assert parts == set(), (rank, batch)  # nothing moved on a skipped batch
            else:
                assert parts == {"students", "fp32_weights", "optimizer_state", "teachers", "centres"}, (rank, batch)
