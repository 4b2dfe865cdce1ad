"""The DALI pretraining pipeline (on CPU here) and the reference loader: the XKD views, their
shapes, dtypes and ranges, audio/video alignment, determinism, rank shares, padding of short
clips, and errors that name the shard and key."""
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dali_pipelines.config import DataConfig
from dali_pipelines.iterator import SampleDecodeError
from dali_pipelines.loader import pretrain_loader
from dali_pipelines.reference import reference_loader
from shards.synthetic import write_clip

FLASH_AT = 3.0  # the flash clip: a white frame and a click at 3.0 s of 5.0 s
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def vp9_shards(tmp_path_factory):
    from xkd.commands import main

    videos = tmp_path_factory.mktemp("pipeline_videos")
    write_clip(videos / "flash.mp4", seconds=5.0, fps=25, flash_at=FLASH_AT, width=192, height=144)
    write_clip(videos / "short.mp4", seconds=2.0, fps=25, seed=1)  # < 4 s: padded
    for index in range(8):
        write_clip(videos / f"clip{index}.mp4", seconds=4.5 + index % 3, fps=30, seed=index + 2,
                   width=176 + 16 * (index % 2), height=144)
    out = tmp_path_factory.mktemp("pipeline_shards")
    assert main(["shards", "create", str(videos), str(out), "--quiet", "--workers", "2",
                 "--samples-per-shard", "3"]) == 0
    return out


def config(**overrides) -> DataConfig:
    return DataConfig(**{"batch_size": 2, "num_threads": 1, **overrides})


def first_batch(loader):
    return next(iter(loader))


@pytest.mark.parametrize("make", [pretrain_loader, reference_loader], ids=["dali", "reference"])
def test_views_have_the_documented_shapes_dtypes_and_ranges(vp9_shards, make):
    batch = first_batch(make(str(vp9_shards), config()))
    assert [tuple(v.shape) for v in batch.video] == [(2, 3, 32, 112, 112), (2, 3, 8, 96, 96)]
    assert [tuple(a.shape) for a in batch.audio] == [(2, 1, 80, 448), (2, 1, 80, 112)]
    for view in batch.video:
        assert view.dtype == torch.float32
        # ImageNet-normalised [0, 1] pixels lie in [-2.12, 2.64]
        assert -2.2 < view.min() and view.max() < 2.7 and view.std() > 0.1
    floor = (np.log(1.1920929e-07) + 5.3688107) / 4.410007  # log-mel of silence, normalised
    for view in batch.audio:
        assert view.dtype == torch.float32 and torch.isfinite(view).all()
        assert view.min() >= floor - 0.5 and view.max() < 10
    assert batch.label.dtype == torch.int64 and batch.label.tolist() == [-1, -1]
    assert len(batch.key) == 2


def test_mas_preset_views_and_bf16(vp9_shards):
    batch = first_batch(pretrain_loader(str(vp9_shards), config(local_video_views=3), dtype=torch.bfloat16))
    assert len(batch.video) == 4 and len(batch.audio) == 2
    assert all(v.dtype == torch.bfloat16 for v in batch.video + batch.audio)


def _flash_offsets(loader, epochs: int):
    """(flash time in the video clip, click time in the audio clip) for every flash sample."""
    found = []
    for _ in range(epochs):
        for batch in loader:
            for row, key in enumerate(batch.key):
                if key != "flash":
                    continue
                video = batch.video[0][row].float().mean(dim=(0, 2, 3))  # brightness per frame
                onset = int((video > (video.min() + video.max()) / 2).int().argmax())
                audio = batch.audio[0][row, 0].float().mean(dim=0)  # energy per mel frame
                found.append((onset / 8, int(audio.argmax()) * 143 / 16000))  # frame k is centred at k hops
    return found


@pytest.mark.parametrize("make", [pretrain_loader, reference_loader], ids=["dali", "reference"])
def test_flash_and_click_land_at_the_same_relative_time(vp9_shards, make):
    cfg = config(shuffle_buffer=4)
    cfg.global_video.brightness = cfg.global_video.contrast = 0.0  # keep the flash the brightest frame
    found = _flash_offsets(make(str(vp9_shards), cfg, drop_last=False), epochs=3)
    assert len(found) == 3
    starts = {round(FLASH_AT - video, 3) for video, _ in found}
    assert len(starts) > 1  # the clip start really is random
    hop = cfg.mel.hop / cfg.mel.sample_rate  # 8.9 ms; the flash starts on the 1/8 s frame grid
    for video_time, audio_time in found:
        assert abs(video_time - audio_time) < hop  # the click's loudest mel frame: within one hop


def test_same_seed_same_batches_other_seed_other_batches(vp9_shards):
    one = first_batch(pretrain_loader(str(vp9_shards), config(), seed=3))
    two = first_batch(pretrain_loader(str(vp9_shards), config(), seed=3))
    other = first_batch(pretrain_loader(str(vp9_shards), config(), seed=4))
    assert one.key == two.key
    for a, b in zip(one.video + one.audio, two.video + two.audio):
        assert torch.equal(a, b)
    assert one.key != other.key or not torch.equal(one.video[0], other.video[0])


def test_ranks_share_every_sample_once_per_epoch(vp9_shards):
    keys = []
    for rank in range(2):
        loader = pretrain_loader(str(vp9_shards), config(), rank=rank, world_size=2, drop_last=False)
        keys.append([k for batch in loader for k in batch.key])
    assert not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == sorted(["flash", "short"] + [f"clip{i}" for i in range(8)])
    # for training every rank yields the same number of batches
    lengths = [len(list(pretrain_loader(str(vp9_shards), config(batch_size=3), rank=r, world_size=2)))
               for r in range(2)]
    assert lengths == [1, 1]


def test_several_pipelines_per_device_make_each_batch_from_their_parts_of_the_share(vp9_shards):
    """data.pipelines_per_device: each batch joins one part-batch of every pipeline; the parts split the
    rank's own share (the same samples as one pipeline reads), each sample once per epoch; an epoch
    replays exactly for a resume."""
    two = config(batch_size=4, pipelines_per_device=2)
    loader = pretrain_loader(str(vp9_shards), two)
    epoch = list(loader)
    assert len(epoch) == len(loader) == 2  # 5 samples a part: 2 batches of 2 from each
    keys = [k for batch in epoch for k in batch.key]
    assert len(keys) == len(set(keys)) == 8
    for batch in epoch:
        assert batch.video[0].shape[0] == batch.audio[0].shape[0] == batch.label.shape[0] == 4
    for rank in range(2):  # with two ranks: a rank's parts stay inside the share one pipeline would read
        share = {k for batch in pretrain_loader(str(vp9_shards), config(), rank=rank, world_size=2, drop_last=False)
                 for k in batch.key}
        parted = [k for batch in pretrain_loader(str(vp9_shards), config(pipelines_per_device=2), rank=rank,
                                                 world_size=2) for k in batch.key]
        assert len(parted) == len(set(parted)) == 4 and set(parted) <= share

    resumed = pretrain_loader(str(vp9_shards), two)
    resumed.load_state_dict({"epoch": 0, "batch": 1})
    (second,) = list(resumed)
    assert second.key == epoch[1].key
    for a, b in zip(second.video + second.audio, epoch[1].video + epoch[1].audio):
        assert torch.equal(a, b)


def test_pipelines_per_device_that_cannot_split_the_batch_are_refused(vp9_shards):
    with pytest.raises(ValueError, match="pipelines_per_device=3 must be at least 1 and divide data.batch_size=4"):
        pretrain_loader(str(vp9_shards), config(batch_size=4, pipelines_per_device=3))
    with pytest.raises(ValueError, match="needs whole batches"):
        pretrain_loader(str(vp9_shards), config(pipelines_per_device=2), drop_last=False)


def test_epochs_come_in_a_new_order(vp9_shards):
    loader = pretrain_loader(str(vp9_shards), config(), drop_last=False)
    first = [k for batch in loader for k in batch.key]
    second = [k for batch in loader for k in batch.key]
    assert sorted(first) == sorted(second) and first != second


def test_short_clips_are_padded_not_dropped(vp9_shards):
    loader = pretrain_loader(str(vp9_shards), config(), drop_last=False)
    for batch in loader:
        if "short" in batch.key:
            row = batch.key.index("short")
            video, audio = batch.video[0][row], batch.audio[0][row, 0]
            assert video.shape[1] == 32
            floor = (np.log(1.1920929e-07) + 5.3688107) / 4.410007
            # 2 s of sound, then silence: the last mel frames sit at the log floor (+-jitter)
            assert torch.allclose(audio[:, -100:], torch.full_like(audio[:, -100:], floor), atol=1e-3)
            assert audio[:, :150].max(dim=0).values.min() > floor + 2  # every early frame holds the tone
            return
    pytest.fail("the short clip never came")


def test_a_member_that_does_not_decode_is_named(vp9_shards, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(vp9_shards, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    tar = broken / manifest["shards"][0]["tar"]
    fields = tar.with_suffix(".idx").read_text().splitlines()[1].split()
    offset, size, name = int(fields[1]), int(fields[2]), fields[3]
    data = bytearray(tar.read_bytes())
    data[offset + 100:offset + size] = bytes(size - 100)
    tar.write_bytes(bytes(data))
    key = name.split(".")[0]
    with pytest.raises(SampleDecodeError, match=f"{tar.name}: sample {key}: member .mp4"):
        for _ in pretrain_loader(str(broken), config(), drop_last=False):
            pass
    with pytest.raises(SampleDecodeError, match=f"{tar.name}: sample {key}: member .mp4"):  # one error, both loaders
        for _ in reference_loader(str(broken), config(), num_workers=0, drop_last=False):
            pass
    seen, skipped = [], []
    for batch in reference_loader(str(broken), config(), num_workers=0, drop_last=False, skip_bad=True):
        seen += batch.key
        skipped += batch.skipped
    assert len(seen) == 9 and key not in seen and len(skipped) == 1 and key in skipped[0]

    # DALI with skip_bad: the sample is named, left out, and training goes on with equal epochs
    loader = pretrain_loader(str(broken), config(), skip_bad=True)
    with pytest.warns(UserWarning, match=f"skipped: {tar.name}: sample {key}"):
        epochs = [[batch for batch in loader] for _ in range(3)]
    assert [len(epoch) for epoch in epochs] == [len(loader)] * 3 == [5] * 3
    keys = [k for epoch in epochs for batch in epoch for k in batch.key]
    assert key not in keys and len(set(keys)) == 9
    assert sum(len(b.skipped) for e in epochs for b in e) == 1  # named once, by the batch after it


@pytest.mark.parametrize("preset", ["xkd_tiny", "xkd_mas_tiny"])
def test_a_pipeline_batch_feeds_the_model(vp9_shards, preset):
    from xkd.config import load_config
    from xkd.models import build_xkd

    cfg = load_config(preset, ["data.batch_size=2", "data.num_threads=1"])
    batch = first_batch(pretrain_loader(str(vp9_shards), cfg.data))
    assert len(batch.video) == 1 + cfg.data.local_video_views
    losses = build_xkd(cfg)(batch, epoch=0)
    assert torch.isfinite(losses["loss"]) and losses["loss"].requires_grad


def video_decoder_backend(pipeline) -> str:
    """The backend DALI's graph gives the video decoder ('cpu', or 'mixed': NVDEC), read from the
    serialised pipeline (the operator's `device` argument)."""
    import re

    found = re.search(rb"decoders__Video.{0,400}?\x06device\x12\x06string\*.(cpu|mixed|gpu)",
                      pipeline.serialize(), re.S)
    assert found, "no video decoder in the pipeline graph"
    return found.group(1).decode()


@pytest.mark.parametrize("gpu", [False, pytest.param(True, marks=pytest.mark.gpu)], ids=["cpu", "gpu"])
def test_the_video_decoder_backend_is_the_devices(vp9_shards, gpu):
    from dali_pipelines.pretrain import pretrain_pipeline
    from dali_pipelines.shardset import ShardSet

    pipeline = pretrain_pipeline(ShardSet.from_path(str(vp9_shards)), config(), gpu=gpu, batch_size=2,
                                 num_threads=1, device_id=0 if gpu else None)
    assert video_decoder_backend(pipeline) == ("mixed" if gpu else "cpu")


@pytest.mark.gpu
def test_gpu_pipeline_decodes_with_nvdec_and_matches_the_contract(vp9_shards):
    loader = pretrain_loader(str(vp9_shards), config(), device="cuda:0", dtype=torch.bfloat16)
    batch = first_batch(loader)
    assert [tuple(v.shape) for v in batch.video] == [(2, 3, 32, 112, 112), (2, 3, 8, 96, 96)]
    assert [tuple(a.shape) for a in batch.audio] == [(2, 1, 80, 448), (2, 1, 80, 112)]
    assert all(t.is_cuda and t.dtype == torch.bfloat16 for t in batch.video + batch.audio)

    # two pipelines on the one GPU, each decoding half of every batch with NVDEC
    parted = list(pretrain_loader(str(vp9_shards), config(batch_size=4, pipelines_per_device=2), device="cuda:0"))
    assert len(parted) == 2 and all(b.video[0].shape == (4, 3, 32, 112, 112) and b.video[0].is_cuda for b in parted)
    assert len({k for b in parted for k in b.key}) == 8


@pytest.mark.gpu
def test_gpu_and_cpu_log_mel_agree(vp9_shards):
    from dali_pipelines.evaluation import eval_loader

    settings = config(eval_clips=2)
    cpu = next(iter(eval_loader(str(vp9_shards), settings, modality="audio")))
    gpu = next(iter(eval_loader(str(vp9_shards), settings, modality="audio", device="cuda:0")))
    assert cpu.key == gpu.key
    assert torch.allclose(cpu.audio_clips, gpu.audio_clips.cpu(), atol=1e-3)


REBUILD_RSS = """
import json, sys
import psutil
from dali_pipelines.config import DataConfig
from dali_pipelines.loader import pretrain_loader

loader = pretrain_loader(sys.argv[1], DataConfig(batch_size=8, num_threads=2))
assert len(loader) == 1
rss = []
for _ in range(int(sys.argv[2])):
    for _ in loader:
        pass
    rss.append(psutil.Process().memory_info().rss / 2**20)
print(json.dumps(rss))
"""


@pytest.mark.slow
def test_host_memory_stays_flat_across_pipeline_rebuilds(vp9_shards):
    """Each epoch reads through a new pipeline (here a one-batch epoch). glibc keeps what the last one
    freed unless told to give it back: without that, resident memory rose by 160-240 MiB over these 20
    rebuilds (within 30 MiB with it). A fresh process, so earlier tests' heap hides nothing."""
    result = subprocess.run([sys.executable, "-c", REBUILD_RSS, str(vp9_shards), "20"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    rss = json.loads(result.stdout.strip().splitlines()[-1])
    growth = statistics.median(rss[-5:]) - rss[1]  # from the first rebuild (working size) to the last few
    assert growth < 80, f"resident memory grew {growth:.0f} MiB over {len(rss) - 2} pipeline rebuilds: {rss}"
