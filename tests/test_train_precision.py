"""Under bf16 training the students compute in bf16 (autocast), but the MAE targets and the fp32
teachers read the float32 views unrounded, as in the authors' autocast loop."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# One bf16 ZeRO-0 step of the micro preset on the CPU (its own process: it initialises torch.distributed),
# with a spy on the reconstruction targets and on the views the teachers are given.
STEP = r"""
import json, sys, tempfile, torch
from xkd.train.distributed import start_process
process = start_process()
import xkd.models.xkd as xkd_module
from xkd.config import load_config
from xkd.models.synthetic import synthetic_batch
from xkd.train.loop import Trainer

ds = sys.argv[1]
cfg = load_config("xkd_micro", ["data.batch_size=2", "train.max_steps=1", "train.log_every_steps=1"])
batch = synthetic_batch(cfg.data, 2, generator=torch.Generator().manual_seed(0))
flat = batch.video[0][:, :, :4, :16, :16]  # exactly one 4x16x16 tubelet: nearly flat, as a patch of sky
flat.copy_(1 + 0.01 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(1)))


class OneBatch:  # the training-batch interface (xkd/train/data.py) over one batch
    epoch = 0
    def __len__(self): return 1
    def __iter__(self):
        yield batch
        self.epoch += 1
    def state_dict(self): return {"epoch": self.epoch, "batch": 0}
    def load_state_dict(self, state): self.epoch = state["epoch"]


targets, teacher_inputs = [], []
reconstruction_loss = xkd_module.reconstruction_loss
def spy(pred, target, mask, norm_pix=True):
    targets.append(target.detach().clone())
    return reconstruction_loss(pred, target, mask, norm_pix)
xkd_module.reconstruction_loss = spy

with tempfile.TemporaryDirectory() as run:
    trainer = Trainer(cfg, None, run, process, ds, quiet=True, data=OneBatch())
    trainer.model.teachers.register_forward_pre_hook(lambda module, args: teacher_inputs.extend(args[:2]))
    summary = trainer.run()
students = trainer.model.students
expected = [students.video.patch_embed.patchify(batch.video[0]), students.audio.patch_embed.patchify(batch.audio[0])]
out = {"precision": trainer.precision, "finished": summary["outcome"], "target_dtypes": [str(t.dtype) for t in targets],
       "targets_exact": [bool(torch.equal(t, e)) for t, e in zip(targets, expected)],
       "teacher_input_dtypes": [str(t.dtype) for t in teacher_inputs],
       "teacher_inputs_exact": [bool(torch.equal(t, views[cfg.model.teacher_view]))
                                for t, views in zip(teacher_inputs, (batch.video, batch.audio))]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def bf16_step() -> dict:
    # a world of one with its own port: not the rendezvous an in-process test may have left in os.environ
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-c", STEP, str(ROOT / "xkd" / "deepspeed_configs" / "zero0.json")], cwd=ROOT,
                          env={**inherited, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_mae_targets_of_a_bf16_step_are_the_float32_pixels(bf16_step):
    assert bf16_step["precision"] == "bf16" and bf16_step["finished"] == "finished"
    assert bf16_step["target_dtypes"] == ["torch.float32", "torch.float32"]  # video, audio
    assert bf16_step["targets_exact"] == [True, True]  # the flat patch's target carries no bf16 rounding


def test_the_teachers_of_a_bf16_step_read_float32_views(bf16_step):
    assert bf16_step["teacher_input_dtypes"] == ["torch.float32", "torch.float32"]  # video, audio
    assert bf16_step["teacher_inputs_exact"] == [True, True]


@pytest.mark.parametrize("loader", ["dali", "reference"])
def test_the_training_loaders_give_float32_views_whatever_the_precision(tmp_path, loader):
    """The loaders are told float32 by `training_batches` (the only place that decides it); a bf16 run
    rounds nothing the MAE targets or the teachers read."""
    from dali_pipelines.shardset import ShardSet
    from shards.synthetic import write_clip
    from xkd.commands import main
    from xkd.config import load_config
    from xkd.train.data import training_batches

    (tmp_path / "videos").mkdir()
    for i in range(2):
        write_clip(tmp_path / "videos" / f"c{i}.mp4", seconds=4.2, fps=8, width=128, height=96, seed=i)
    assert main(["shards", "create", str(tmp_path / "videos"), str(tmp_path / "shards"), "--quiet"]) == 0
    cfg = load_config("xkd_micro", ["data.batch_size=2", "data.num_threads=1", f"train.loader={loader}",
                                    "train.reference_workers=0"])
    batch = next(iter(training_batches(ShardSet.from_path(str(tmp_path / "shards")), cfg, 0, 1, "cpu")))
    assert {str(view.dtype) for view in batch.video + batch.audio} == {"torch.float32"}
