"""The reference loader: the same TrainingBatch as the DALI pipeline, built the way the authors' code
loads data (the `webdataset` library, PyAV decoding, torchvision transforms, torchaudio log-mel,
a torch DataLoader with workers). It is the CPU fallback for shards DALI cannot decode on a CPU
(H.264/HEVC) and the baseline of `benchmarks/bench_pipeline.py`.

Ranks and DataLoader workers split the shards round-robin (DALI splits by sample count)."""
from __future__ import annotations

import io
import json
import signal

import av
import numpy as np
import soundfile
import torch
import torch.nn.functional as F
import torchaudio
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from dali_pipelines.batch import SampleDecodeError, TrainingBatch, sample_labels
from dali_pipelines.config import AudioViewConfig, DataConfig, MelConfig, VideoViewConfig
from dali_pipelines.shardset import ShardSet
from shards.format import VIDEO_EXTENSIONS


def decode_frames(data: bytes, start: int, count: int, member: tuple[str, str, str]) -> torch.Tensor:
    """Frames [start, start + count) of an encoded video as (count, 3, H, W) uint8; past the end
    the last frame repeats. member: (tar, key, extension), to name it when it does not decode."""
    frames = []
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index >= start:
                    frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                if len(frames) == count:
                    break
    except av.error.FFmpegError as exc:
        raise SampleDecodeError(*member, str(exc)) from None
    if not frames:
        raise SampleDecodeError(*member, f"no video frame at or after frame {start}")
    frames += [frames[-1]] * (count - len(frames))
    return torch.stack(frames).permute(0, 3, 1, 2)


class LogMel(torch.nn.Module):
    """torchaudio's mel spectrogram as in docs/method.md §Log-mel: natural log, dataset normalisation."""

    def __init__(self, mel: MelConfig):
        super().__init__()
        self.mel = mel
        self.transform = torchaudio.transforms.MelSpectrogram(
            sample_rate=mel.sample_rate, n_fft=mel.n_fft, hop_length=mel.hop, n_mels=mel.mel_bins,
            f_min=mel.f_min, f_max=mel.f_max, norm="slaney", mel_scale="slaney", center=True,
            pad_mode="reflect", power=2.0)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = torch.log(self.transform(waveform) + self.mel.log_offset)
        return (spec - self.mel.mean) / self.mel.std


def byol_resize_crop(spec: torch.Tensor, view: AudioViewConfig, rng: np.random.Generator) -> torch.Tensor:
    """(bins, frames) -> same size: random crop of a wider zero canvas, bicubic resize back
    (align_corners=True, as the authors')."""
    bins, frames = spec.shape
    width = int(frames * view.canvas_time_factor)
    canvas = spec.new_zeros(bins, width)
    offset = (width - frames) // 2
    canvas[:, offset:offset + frames] = spec
    low, high = view.crop_scale
    h = int(np.clip(int(rng.uniform(low, high) * bins), 1, bins))
    w = int(np.clip(int(rng.uniform(low, high) * frames), 1, width))
    top, left = int(rng.integers(0, bins - h + 1)), int(rng.integers(0, width - w + 1))
    crop = canvas[top:top + h, left:left + w][None, None]
    return F.interpolate(crop, size=(bins, frames), mode="bicubic", align_corners=True)[0, 0]


class ClipTransform:
    """One sample -> the XKD views, with the same random choices as the DALI pipeline."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.log_mel = LogMel(cfg.mel)
        self.video_views = {id(v): self._video_chain(v) for v in (cfg.global_video, cfg.local_video)}

    @staticmethod
    def _video_chain(view: VideoViewConfig):
        return v2.Compose([
            v2.RandomResizedCrop(view.size, scale=tuple(view.crop_area), ratio=tuple(view.crop_ratio), antialias=True),
            v2.RandomHorizontalFlip(view.flip_prob),
            v2.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue),
            v2.RandomGrayscale(view.grayscale_prob),
        ])

    def _video_view(self, frames: torch.Tensor, view: VideoViewConfig, rng) -> torch.Tensor:
        frames = self.video_views[id(view)](frames)
        if view.blur_prob > 0 and rng.random() < view.blur_prob:
            low, high = view.blur_sigma
            sigma = [low, high] if view.blur_sigma_mode == "authors" else [float(rng.uniform(low, high))] * 2
            frames = TF.gaussian_blur(frames, kernel_size=[view.blur_window] * 2, sigma=sigma)
        frames = TF.normalize(frames.float() / 255.0, self.cfg.mean, self.cfg.std)
        return frames.permute(1, 0, 2, 3)  # (C, T, H, W)

    def _audio_view(self, waveform: torch.Tensor, view: AudioViewConfig, rng) -> torch.Tensor:
        if view.volume_jitter > 0:
            waveform = waveform * float(rng.uniform(1 - view.volume_jitter, 1 + view.volume_jitter))
        spec = self.log_mel(waveform)
        if view.resize_crop:
            spec = byol_resize_crop(spec, view, rng)
        return spec[None]

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        tar, key = sample.get("__url__", "?"), sample["__key__"]
        meta = json.loads(sample["json"])
        frames_total, _ = np.frombuffer(sample["lengths"], "<i4")
        clip_frames, clip_samples = cfg.clip_frames, cfg.clip_samples
        start = int(rng.integers(0, max(frames_total - clip_frames + 1, 1)))
        video_ext = next(ext for ext in VIDEO_EXTENSIONS if ext in sample)
        frames = decode_frames(sample[video_ext], start, clip_frames, (tar, key, video_ext))

        try:
            audio, _ = soundfile.read(io.BytesIO(sample["flac"]), dtype="float32")
        except (RuntimeError, soundfile.LibsndfileError) as exc:
            raise SampleDecodeError(tar, key, "flac", str(exc)) from None
        first = start * cfg.samples_per_frame
        clip_audio = torch.zeros(clip_samples)
        piece = torch.from_numpy(audio[first:first + clip_samples])
        clip_audio[:len(piece)] = piece

        videos = [self._video_view(frames, cfg.global_video, rng)]
        for _ in range(cfg.local_video_views):
            local_start = int(rng.integers(0, clip_frames - cfg.local_video.frames + 1))
            videos.append(self._video_view(frames[local_start:local_start + cfg.local_video.frames],
                                           cfg.local_video, rng))
        audios = [self._audio_view(clip_audio, cfg.global_audio, rng)]
        local_samples = cfg.local_audio_samples
        for _ in range(cfg.local_audio_views):
            local_start = int(rng.integers(0, (clip_samples - local_samples) // 100 + 1)) * 100
            audios.append(self._audio_view(clip_audio[local_start:local_start + local_samples], cfg.local_audio, rng))
        label, _ = sample_labels(meta)  # -1 for a multi-label sample: pretraining reads one id at most
        return {"video": videos, "audio": audios, "label": label, "key": meta["key"]}


class ReferenceDataset(IterableDataset):
    def __init__(self, shards: ShardSet, cfg: DataConfig, rank: int, world_size: int, seed: int,
                 skip_bad: bool = False):
        self.shards, self.cfg, self.rank, self.world_size, self.seed = shards, cfg, rank, world_size, seed
        self.skip_bad = skip_bad
        self.transform = ClipTransform(cfg)
        self.epoch = 0

    def __iter__(self):
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        stride = self.world_size * workers
        mine = list(self.shards.tars[self.rank * workers + worker_id::stride])
        if not mine:  # more ranks x workers than shards: this one idles
            return
        rng = np.random.default_rng([self.seed, self.rank, worker_id, self.epoch])
        torch.manual_seed(int(rng.integers(2**31)))  # torchvision's transforms draw from torch
        order = rng.permutation(len(mine))
        dataset = wds.WebDataset([mine[i] for i in order], shardshuffle=False, empty_check=False,
                                 nodesplitter=None, workersplitter=None).shuffle(self.cfg.shuffle_buffer, seed=int(rng.integers(2**31)))
        for sample in dataset:
            try:
                yield self.transform(sample, rng)
            except SampleDecodeError as error:
                if not self.skip_bad:
                    raise
                yield {"skipped": str(error)}  # counted by `collate`
        self.epoch += 1


def collate(samples: list[dict]) -> TrainingBatch:
    skipped = [s["skipped"] for s in samples if "skipped" in s]
    samples = [s for s in samples if "skipped" not in s]
    return TrainingBatch(video=[torch.stack(views) for views in zip(*(s["video"] for s in samples))],
                         audio=[torch.stack(views) for views in zip(*(s["audio"] for s in samples))],
                         label=torch.tensor([s["label"] for s in samples], dtype=torch.int64),
                         key=[s["key"] for s in samples], skipped=skipped)


def _ignore_sigterm(_worker_id: int) -> None:
    """Workers leave SIGTERM to the training process: a cluster signals the whole process group on
    preemption, and a worker that died of it would crash the run before its checkpoint is saved.
    (Workers still exit when the main process stops or dies.)"""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def reference_loader(shards: str | ShardSet, cfg: DataConfig, *, rank: int = 0, world_size: int = 1,
                     seed: int = 0, num_workers: int = 2, drop_last: bool = True,
                     skip_bad: bool = False, persistent_workers: bool = True) -> DataLoader:
    """skip_bad: a member that does not decode is left out of its batch and named in the batch's
    `skipped` (a batch may then be smaller), instead of stopping with a SampleDecodeError.
    persistent_workers=False restarts the workers every epoch, so `loader.dataset.epoch` set before
    iter() reaches them (resuming at a chosen epoch)."""
    shards = shards if isinstance(shards, ShardSet) else ShardSet.from_path(shards)
    dataset = ReferenceDataset(shards, cfg, rank, world_size, seed, skip_bad)
    return DataLoader(dataset, batch_size=cfg.batch_size, num_workers=num_workers, collate_fn=collate,
                      drop_last=drop_last, persistent_workers=persistent_workers and num_workers > 0,
                      worker_init_fn=_ignore_sigterm)
