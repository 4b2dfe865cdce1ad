"""The evaluation pipeline: N clips spread uniformly over each video and its audio, 1 or 3 crops,
no randomness, every sample once; video-only and audio-only shard sets."""
import io
import json
import tarfile
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile
import torch

from dali_pipelines.config import DataConfig
from dali_pipelines.evaluation import eval_loader
from dali_pipelines.reference import LogMel

BITS = 6  # frame k of a counter video shows k in binary: 6 horizontal bands, white = 1


def counter_image(k: int, width: int, height: int = 128) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    for bit in range(BITS):  # band `bit` covers rows 16 + 16 bit .. 32 + 16 bit
        if k >> bit & 1:
            image[16 + 16 * bit:32 + 16 * bit] = 255
    return image


def write_counter_video(path, frames: int, width=192, height=128):
    """8 fps, frame k shows k in binary, a different tone per second in the audio."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=8, options={"preset": "ultrafast", "crf": "0"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=16000, layout="mono")
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(counter_image(k, width, height), format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, 8)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        total = frames * 2000
        t = np.arange(total) / 16000
        tone = (0.3 * np.sin(2 * np.pi * (300 + 200 * np.floor(t)) * t)).astype(np.float32)
        for start in range(0, total, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024].copy(), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, start
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))


@pytest.fixture(scope="session")
def eval_shards(tmp_path_factory):
    from xkd.commands import main

    videos = tmp_path_factory.mktemp("eval_videos")
    for name, frames in (("a/long", 60), ("a/mid", 44), ("b/short", 20)):  # 7.5 s, 5.5 s, 2.5 s
        (videos / name).parent.mkdir(exist_ok=True)
        write_counter_video(videos / f"{name}.mp4", frames)
    out = tmp_path_factory.mktemp("eval_shards")
    assert main(["shards", "create", str(videos), str(out), "--quiet", "--workers", "2", "--no-shuffle",
                 "--samples-per-shard", "2"]) == 0
    return out


def cfg(**overrides) -> DataConfig:
    return DataConfig(**{"batch_size": 2, "num_threads": 1, "eval_clips": 4, **overrides})


def frame_index(clip: torch.Tensor, scale: float = 1.0, crop_top: int = 8) -> np.ndarray:
    """Normalised (3, T, H, W) -> the counter value of each frame. The bands sit at rows
    16 + 16 bit of the 128-row shard frame; the eval resize scales them, the crop shifts them."""
    mean, std = torch.tensor(DataConfig().mean), torch.tensor(DataConfig().std)
    pixels = ((clip.permute(1, 2, 3, 0) * std + mean) * 255).mean(dim=(2, 3))  # (T, rows)
    value = np.zeros(clip.shape[1], int)
    for bit in range(BITS):
        centre = round((24 + 16 * bit) * scale) - crop_top
        value += (pixels[:, centre - 3:centre + 4].mean(dim=1).numpy() > 128).astype(int) << bit
    return value


def flac_of(shards, key) -> np.ndarray:
    for tar in shards.glob("*.tar"):
        with tarfile.open(tar) as archive:
            for member in archive:
                if member.name == f"{key}.flac":
                    return soundfile.read(io.BytesIO(archive.extractfile(member).read()), dtype="float32")[0]
    raise KeyError(key)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda:0", marks=pytest.mark.gpu)])
def test_clips_are_spread_uniformly_and_audio_follows(eval_shards, device):
    """Frame by frame, on the CPU and (NVDEC decode, GPU log-mel) on a GPU."""
    batches = list(eval_loader(str(eval_shards), cfg(), device=device if device != "cpu" else None))
    keys = [k for b in batches for k in b.key]
    assert sorted(keys) == ["a__long", "a__mid", "b__short"]  # each once, the last batch partial
    log_mel = LogMel(DataConfig().mel)
    frames_of = {"a__long": 60, "a__mid": 44, "b__short": 20}
    for batch in batches:
        assert batch.clip_index.tolist() == [0, 1, 2, 3] and batch.crop_index.tolist() == [0]
        for row, key in enumerate(batch.key):
            n = frames_of[key]
            starts = np.linspace(0, max(n - 32, 0), 4).astype(int)
            video, audio = batch.video_clips[row].cpu(), batch.audio_clips[row].cpu()
            assert video.shape == (4, 1, 3, 32, 112, 112) and audio.shape == (4, 1, 80, 448)
            waveform = torch.from_numpy(flac_of(eval_shards, key))
            for clip, start in enumerate(starts):
                expected = np.minimum(np.arange(start, start + 32), n - 1)  # short videos repeat the last frame
                assert (frame_index(video[clip, 0]) == expected).all()
                window = torch.zeros(64000)
                piece = waveform[start * 2000:start * 2000 + 64000]
                window[:len(piece)] = piece
                # the tone changes pitch every second, so a window off by a video frame (2000
                # samples) moves values by ~1; 1e-3 covers the decoders' float round-off
                diff = (audio[clip, 0] - log_mel(window)).abs().max()
                assert diff < 1e-3, (key, clip, float(diff))


def test_three_crops_cover_the_long_side(eval_shards):
    batch = next(iter(eval_loader(str(eval_shards), cfg(eval_crops=3, eval_clips=2))))
    video = batch.video_clips
    assert video.shape[:3] == (2, 2, 3) and batch.crop_index.tolist() == [0, 1, 2]
    # every crop shows the same frames, from different places of the 192x128 frame
    expected = frame_index(video[0, 0, 1], scale=112 / 128, crop_top=0)
    assert (expected == np.arange(32)).all()  # first clip of the first video starts at frame 0
    for crop in range(3):
        assert (frame_index(video[0, 0, crop], scale=112 / 128, crop_top=0) == expected).all()
    assert not torch.equal(video[0, 0, 0], video[0, 0, 2])  # left and right differ (the frame edges ring)


def test_eval_is_deterministic(eval_shards):
    one = [b.video_clips for b in eval_loader(str(eval_shards), cfg())]
    two = [b.video_clips for b in eval_loader(str(eval_shards), cfg())]
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_video_only_modality_skips_audio(eval_shards):
    batch = next(iter(eval_loader(str(eval_shards), cfg(), modality="video")))
    assert batch.audio_clips is None and batch.video_clips.shape[1:3] == (4, 1)


def test_audio_only_shards(tmp_path):
    from xkd.commands import main

    source = tmp_path / "sounds" / "bird"
    source.mkdir(parents=True)
    t = np.arange(16000 * 6) / 16000
    soundfile.write(source / "chirp.wav", (0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), 16000)
    assert main(["shards", "create", str(tmp_path / "sounds"), str(tmp_path / "out"), "--quiet", "--audio-only"]) == 0
    batch = next(iter(eval_loader(str(tmp_path / "out"), cfg(eval_clips=3))))
    assert batch.video_clips is None and batch.audio_clips.shape == (1, 3, 1, 80, 448)
    waveform = torch.from_numpy(flac_of(tmp_path / "out", "bird__chirp"))
    log_mel = LogMel(DataConfig().mel)
    for clip, start in enumerate(np.linspace(0, 96000 - 64000, 3).astype(int)):
        assert torch.allclose(batch.audio_clips[0, clip, 0], log_mel(waveform[start:start + 64000]), atol=1e-3)
    with pytest.raises(ValueError, match="no video"):
        eval_loader(str(tmp_path / "out"), cfg(), modality="video")
