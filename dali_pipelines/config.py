"""The data section of the experiment config: every knob of the pretraining and evaluation views.
Defaults are the paper's XKD preset (docs/method.md §Views); `xkd.config` nests this as
`data:` so presets and `--set data.x=y` overrides reach it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

VIDEO_CHANNELS = 3  # RGB
AUDIO_CHANNELS = 1  # one log-mel image


@dataclass
class VideoViewConfig:
    size: int = 112  # output height and width
    frames: int = 32  # frames per view (contiguous, at the clip's fps)
    crop_area: list[float] = field(default_factory=lambda: [0.2, 1.0])  # random resized crop, area fraction
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    flip_prob: float = 0.5
    # ColorJitter(0.4, 0.4, 0.4, 0.2) applied with probability 1, as in the authors' code
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.2  # fraction of a full turn: +-0.2 -> +-72 degrees
    grayscale_prob: float = 0.0
    blur_prob: float = 0.0
    # Authors (docs/method.md B6): a fixed anisotropic blur, sigma_x 0.1 and sigma_y 2.0. 'random' draws one
    # isotropic sigma in [0.1, 2.0] per view (what the code meant, as in BYOL/DINO).
    blur_sigma_mode: Literal["authors", "random"] = "authors"
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    blur_window: int = 9  # 96 // 20 * 2 + 1 in the authors' code


def _local_video_view() -> VideoViewConfig:
    return VideoViewConfig(size=96, frames=8, crop_area=[0.08, 0.4], grayscale_prob=0.2, blur_prob=0.5)


@dataclass
class AudioViewConfig:
    seconds: float = 4.0
    volume_jitter: float = 0.1  # waveform x U(1 - j, 1 + j)
    # BYOL-A random resize crop on the log-mel (local views): canvas of (freq x 1.0, time x 1.5),
    # crop scales drawn in [0.6, 1.5], resized back (bicubic). Off for the global view.
    resize_crop: bool = False
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.5])
    canvas_time_factor: float = 1.5


def _local_audio_view() -> AudioViewConfig:
    return AudioViewConfig(seconds=1.0, volume_jitter=0.2, resize_crop=True)


@dataclass
class MelConfig:
    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 143  # 4 s -> 448 frames = 28 x 16 time patches
    mel_bins: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0
    log_offset: float = 1.1920929e-07  # float32 eps, added before the natural log
    # Kinetics-400 statistics of the normalised log-mel (docs/method.md §Log-mel, B17), used for every dataset
    mean: float = -5.3688107
    std: float = 4.410007

    def samples(self, seconds: float) -> int:
        """Waveform samples in `seconds` of audio."""
        return round(seconds * self.sample_rate)

    def frames(self, samples: int) -> int:
        """Log-mel frames of a waveform of `samples`: the STFT is centred, so one per hop plus one."""
        return 1 + samples // self.hop


@dataclass
class DataConfig:
    fps: int = 8  # shards are made at this rate (`xkd shards create --fps 8`)
    clip_seconds: float = 4.0  # one clip per sample per epoch; audio and video share its start
    global_video: VideoViewConfig = field(default_factory=VideoViewConfig)
    local_video: VideoViewConfig = field(default_factory=_local_video_view)
    local_video_views: int = 1  # XKD 1; XKD-MAS / XKD-MATS 3
    global_audio: AudioViewConfig = field(default_factory=AudioViewConfig)
    local_audio: AudioViewConfig = field(default_factory=_local_audio_view)
    local_audio_views: int = 1
    mel: MelConfig = field(default_factory=MelConfig)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # ImageNet, RGB in [0, 1]
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    shuffle_buffer: int = 1024  # samples DALI shuffles among (shards are pre-shuffled across)
    batch_size: int = 32  # per GPU / per process
    # DALI CPU threads per process, split between its pipelines (the views' dtype is the loader's argument)
    num_threads: int = 4
    # Training pipelines per process (pretraining and fine-tuning), each making batch_size / this of
    # every batch from its own part of the samples: several keep more of a GPU's video decoders
    # (NVDEC) busy at once
    pipelines_per_device: int = 1
    # evaluation
    eval_clips: int = 10  # clips spread uniformly over each video (and its audio)
    eval_crops: int = 1  # 1 (centre) or 3 (left/centre/right along the long side)
    eval_size: int = 112

    # The clip geometry derived from the fields above: the one place the pipelines, the reference
    # loader and the synthetic batches compute it (`xkd.config.load_config` checks the model against it).

    def pipeline_parts(self, drop_last: bool = True) -> int:
        """pipelines_per_device, once it is known to split every batch into whole, equal parts
        (ValueError otherwise)."""
        parts = self.pipelines_per_device
        if parts < 1 or self.batch_size % parts:
            raise ValueError(f"data.pipelines_per_device={parts} must be at least 1 and divide "
                             f"data.batch_size={self.batch_size}")
        if parts > 1 and not drop_last:
            raise ValueError(f"data.pipelines_per_device={parts} needs whole batches (drop_last): the pipelines' "
                             "last, partial batches would not line up")
        return parts

    @property
    def clip_frames(self) -> int:
        return round(self.fps * self.clip_seconds)

    @property
    def clip_samples(self) -> int:
        return self.mel.samples(self.clip_seconds)

    @property
    def samples_per_frame(self) -> int:
        """Video frame k of a clip starts at audio sample k x this."""
        return self.mel.sample_rate // self.fps

    @property
    def local_audio_samples(self) -> int:
        return self.mel.samples(self.local_audio.seconds)

    @property
    def global_video_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W): the global video view is the whole clip."""
        return VIDEO_CHANNELS, self.clip_frames, self.global_video.size, self.global_video.size

    @property
    def local_video_shape(self) -> tuple[int, int, int, int]:
        return VIDEO_CHANNELS, self.local_video.frames, self.local_video.size, self.local_video.size

    @property
    def global_audio_shape(self) -> tuple[int, int, int]:
        """(C, mel bins, frames): the global audio view is the log-mel of the whole clip."""
        return AUDIO_CHANNELS, self.mel.mel_bins, self.mel.frames(self.clip_samples)

    @property
    def local_audio_shape(self) -> tuple[int, int, int]:
        return AUDIO_CHANNELS, self.mel.mel_bins, self.mel.frames(self.local_audio_samples)
