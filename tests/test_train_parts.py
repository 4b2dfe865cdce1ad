"""The pieces of `xkd pretrain` on their own: DeepSpeed config filling, schedules, per-parameter
clipping, and resuming the data stream mid-epoch (DALI and the reference loader)."""
import json

import numpy as np
import pytest
import torch

from xkd.config import ConfigError, load_config
from xkd.schedules import TrainSchedules
from xkd.train.ds_config import CONFIG_DIR, deepspeed_config, precision, zero_stage


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("suffix,expected", [("", "bf16"), ("_fp16", "fp16"), ("_fp32", "fp32")])
def test_every_shipped_deepspeed_config_is_filled_from_the_experiment(stage, suffix, expected):
    cfg = load_config("xkd_tiny", ["data.batch_size=8", "train.grad_accumulation=2"])
    ds = deepspeed_config(CONFIG_DIR / f"zero{stage}{suffix}.json", cfg, world_size=4)
    assert zero_stage(ds) == stage and precision(ds) == expected
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 64
    assert ds["gradient_clipping"] == 0.0  # per-parameter clipping happens in the loop
    global_clip = load_config("xkd_tiny", ["train.clip_mode=global", "train.clip_grad=1.5"])
    assert deepspeed_config(CONFIG_DIR / f"zero{stage}{suffix}.json", global_clip, 1)["gradient_clipping"] == 1.5


@pytest.mark.parametrize("content,message", [
    ({"train_micro_batch_size_per_gpu": 4}, "data.batch_size"),
    ({"gradient_accumulation_steps": 2}, "train.grad_accumulation"),
    ({"gradient_clipping": 1.0}, "train.clip_grad"),
    ({"optimizer": {"type": "Adam"}}, "builds AdamW"),
    ({"scheduler": {"type": "WarmupLR"}}, "per-iteration schedules"),
    ({"bf16": {"enabled": True}, "fp16": {"enabled": True}}, "choose one"),
])
def test_a_deepspeed_config_cannot_contradict_the_experiment(tmp_path, content, message):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        deepspeed_config(path, load_config("xkd_tiny"), 1)
    with pytest.raises(ConfigError, match="no such DeepSpeed config"):
        deepspeed_config(tmp_path / "missing.json", load_config("xkd_tiny"), 1)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        deepspeed_config(path, load_config("xkd_tiny"), 1)


def test_schedules_follow_the_authors_and_scale_with_the_total_batch():
    train = load_config("xkd_base").train
    iters = 10
    at_256 = TrainSchedules(train, iters, total_batch=256)
    assert len(at_256) == 800 * iters
    assert at_256.lr[0] == 0.0 and at_256.lr[30 * iters] == pytest.approx(1e-4)  # warm-up 30 epochs, peak 1e-4
    assert np.all(np.diff(at_256.lr[:30 * iters]) > 0) and np.all(np.diff(at_256.lr[30 * iters:]) <= 0)
    assert at_256.lr[-1] < 1e-8
    assert TrainSchedules(train, iters, total_batch=512).peak_lr == pytest.approx(2e-4)
    assert np.all(at_256.weight_decay == 0.3)
    assert at_256.momentum[0] == pytest.approx(0.997) and at_256.momentum[-1] == pytest.approx(1.0, abs=1e-8)
    assert at_256.at(10**9) == at_256.at(len(at_256) - 1)  # past the end: the last values
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainSchedules(load_config("xkd_tiny", ["train.epochs=2", "train.warmup_epochs=3"]).train, 1, 1)


def test_per_parameter_clipping_limits_each_gradient_on_its_own():
    from xkd.train.gradients import check_and_clip

    big, small, free = (torch.nn.Parameter(torch.zeros(10)), torch.nn.Parameter(torch.zeros(3, 3)),
                        torch.nn.Parameter(torch.zeros(5)))
    big.grad, small.grad, free.grad = torch.full((10,), 1.0), torch.full((3, 3), 0.01), torch.full((5,), 1.0)
    check = check_and_clip([big, small, free], [True, True, False], max_norm=0.3)
    assert check.finite and check.layout == "full" and check.clipped == 1
    assert big.grad.norm().item() == pytest.approx(0.3, rel=1e-5)
    assert torch.allclose(big.grad, torch.full((10,), 0.3 / (10 ** 0.5 + 1e-6)))
    assert torch.equal(small.grad, torch.full((3, 3), 0.01))  # norm 0.03: untouched
    assert torch.equal(free.grad, torch.full((5,), 1.0))  # not one of the clipped parameters
    # fp16 gradients still carry the loss scale: the limit applies to the unscaled norm
    scaled = torch.nn.Parameter(torch.zeros(4))
    scaled.grad = torch.full((4,), 0.1 * 1024)  # unscaled norm 0.2 < 0.3
    check_and_clip([scaled], [True], max_norm=0.3, scale=1024.0)
    assert torch.equal(scaled.grad, torch.full((4,), 0.1 * 1024))


def test_a_nonfinite_gradient_is_found_and_nothing_is_clipped():
    from xkd.train.gradients import check_and_clip

    clean, broken = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    clean.grad, broken.grad = torch.full((4,), 5.0), torch.tensor([1.0, float("nan"), 0.0, 0.0])
    check = check_and_clip([clean, broken], [True, False], max_norm=0.3)  # the broken one is not even clipped
    assert not check.finite and check.clipped == 0
    assert torch.equal(clean.grad, torch.full((4,), 5.0))
    assert check_and_clip([clean], None).finite


def test_a_skipped_optimizer_step_changes_neither_weights_nor_state():
    from xkd.train.gradients import optimizer_step_skipped

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.ones(3)
    optimizer.step()
    before = weight.detach().clone(), {k: v.clone() for k, v in optimizer.state[weight].items()}
    with optimizer_step_skipped(optimizer):
        optimizer.step()
    assert torch.equal(weight, before[0]) and all(torch.equal(optimizer.state[weight][k], v) for k, v in before[1].items())
    optimizer.step()  # and steps again afterwards
    assert not torch.equal(weight, before[0])


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    from shards.synthetic import write_clip
    from xkd.commands import main

    root = tmp_path_factory.mktemp("resume")
    (root / "videos").mkdir()
    for i in range(10):
        write_clip(root / "videos" / f"c{i}.mp4", seconds=4.2, fps=8, width=128, height=96, seed=i)
    assert main(["shards", "create", str(root / "videos"), str(root / "shards"), "--samples-per-shard", "3"]) == 0
    return root / "shards"


def _keys_and_audio(batch):
    return batch.key, batch.audio[0].clone()


def test_the_dali_stream_resumes_mid_epoch_exactly(small_shards):
    from dali_pipelines.loader import pretrain_loader

    cfg = load_config("xkd_tiny", ["data.batch_size=2", "data.num_threads=1"]).data
    straight = pretrain_loader(str(small_shards), cfg, seed=7, rank=1, world_size=2)
    list(straight)  # epoch 0
    epoch1 = iter(straight)
    next(epoch1)
    state = straight.state_dict()
    assert state == {"epoch": 1, "batch": 1, "excluded": []}
    rest = [_keys_and_audio(b) for b in epoch1] + [_keys_and_audio(b) for b in straight]

    resumed = pretrain_loader(str(small_shards), cfg, seed=7, rank=1, world_size=2)
    resumed.load_state_dict(state)
    again = [_keys_and_audio(b) for b in resumed] + [_keys_and_audio(b) for b in resumed]
    assert len(again) == len(rest) == 1 + 2
    for (keys_a, audio_a), (keys_b, audio_b) in zip(rest, again):
        assert keys_a == keys_b and torch.equal(audio_a, audio_b)
    assert resumed.epoch == 3


def test_the_reference_stream_resumes_mid_epoch(small_shards):
    from dali_pipelines.shardset import ShardSet
    from xkd.train.data import ReferenceEpochs

    cfg = load_config("xkd_tiny", ["data.batch_size=2", "train.reference_workers=0", "train.loader=reference"])
    shards = ShardSet.from_path(str(small_shards))
    straight = ReferenceEpochs(shards, cfg, rank=0, world_size=1, seed=3)
    assert len(straight) == 5
    first = iter(straight)
    for _ in range(2):
        next(first)
    state = straight.state_dict()
    assert state == {"epoch": 0, "batch": 2}
    rest = [b.key for b in first]
    resumed = ReferenceEpochs(shards, cfg, rank=0, world_size=1, seed=3)
    resumed.load_state_dict(state)
    assert [b.key for b in resumed] == rest and len(rest) == 3
    assert resumed.epoch == 1


def test_a_stale_extension_build_lock_is_removed(tmp_path, monkeypatch):
    """A lock left by a process killed while torch built DeepSpeed's CPU comm op would hang every
    later start; a fresh one (a build in progress) is left alone."""
    import os
    import time

    from xkd.train.distributed import clear_stale_extension_locks

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = tmp_path / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "other_op" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    old = time.time() - 3600
    os.utime(stale, (old, old))
    with pytest.warns(UserWarning, match="stale torch extension build lock"):
        assert clear_stale_extension_locks() == [stale]
    assert not stale.exists() and fresh.exists()
