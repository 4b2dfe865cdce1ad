"""The options that define a shard set. Two runs with equal options over the same inputs write the
same shards, so these options (and nothing else) are recorded in the plan and the manifest."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from fractions import Fraction

CODECS = ("vp9", "h264", "hevc", "copy")
MISSING_AUDIO_POLICIES = ("skip", "silence")
AUDIO_RATE = 16000  # Hz, mono: what XKD's audio branch reads
# The smallest frame side NVDEC (the GPU decoder behind DALI's "mixed" video decoding) accepts, per
# codec, from the decoder capabilities of NVIDIA's Video Codec SDK. DALI decodes VP9 on the CPU as
# well, H.264 and HEVC on the GPU only.
NVDEC_MIN_SIDE = {"vp9": 128, "hevc": 144, "h264": 48}
CRF_RANGE = {"vp9": (0, 63), "h264": (0, 51), "hevc": (0, 51)}  # libvpx-vp9, libx264, libx265 at 8 bits


@dataclass(frozen=True)
class ShardOptions:
    fps: str = "8"  # a number, a fraction like 30000/1001, or "keep" (the source's average rate)
    short_side: int = 128
    codec: str = "vp9"
    crf: int | None = None  # None: the codec's default below
    gop_seconds: float = 1.0
    min_duration: float = 1.1  # seconds, like the authors' data filter
    missing_audio: str = "skip"  # skip | silence (store a silent track, has_audio false)
    samples_per_shard: int = 1000
    shard_size: int | None = None  # bytes, a hard cap on each tar
    seed: int = 0
    shuffle: bool = True
    name: str = "shard"
    fast_decode: bool = False  # skip the H.264/HEVC deblocking filter while decoding (see README)
    audio_only: bool = False  # sound datasets (ESC-50, ...): audio files in, FLAC + JSON out, no video

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ValueError(f"--codec {self.codec}: choose one of {', '.join(CODECS)}")
        if self.codec == "copy":  # an untouched stream keeps its own rate
            object.__setattr__(self, "fps", "keep")
        if self.missing_audio not in MISSING_AUDIO_POLICIES:
            raise ValueError(f"--missing-audio {self.missing_audio}: choose skip or silence")
        if self.fps != "keep":
            rate = parse_fps(self.fps)
            if not 0 < rate <= 240:
                raise ValueError(f"--fps {self.fps}: must be in (0, 240] or 'keep'")
        low, high = CRF_RANGE.get(self.codec, (None, None))
        if self.crf is not None and low is not None and not low <= self.crf <= high:
            raise ValueError(f"--crf {self.crf}: {self.codec} takes {low} (best) to {high}")
        if self.short_side < 16 or self.short_side % 2:
            raise ValueError(f"--short-side {self.short_side}: must be an even number >= 16")
        if self.samples_per_shard < 1:
            raise ValueError("--samples-per-shard must be at least 1")
        if self.shard_size is not None and self.shard_size < 64 * 1024:
            raise ValueError("--shard-size must be at least 64KB")
        if self.min_duration < 0:
            raise ValueError("--min-duration must be >= 0")
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name):
            raise ValueError(f"--name {self.name!r}: letters, digits, '_' and '-' only")

    def decode_warnings(self) -> list[str]:
        """What these options mean for decoding the shards with DALI, where it is a limitation."""
        smallest = NVDEC_MIN_SIDE.get(self.codec)
        if self.audio_only or smallest is None or self.short_side >= smallest:
            return []
        where = "on the CPU only" if self.codec == "vp9" else "neither on the GPU nor on DALI's CPU decoder"
        return [f"--codec {self.codec} --short-side {self.short_side}: NVDEC decodes {self.codec} frames of at "
                f"least {smallest}x{smallest}, so these shards will decode {where}; use --short-side {smallest} "
                f"or more"]

    @property
    def members(self) -> list[str]:
        """Members of every sample, in tar order (plus `cls` when labelled)."""
        # the video container: MP4 for what we encode, Matroska (any codec) for --codec copy
        video = [] if self.audio_only else ["mkv" if self.codec == "copy" else "mp4"]
        return video + ["flac", "json", "lengths"]

    @property
    def target_fps(self) -> Fraction | None:
        """None means keep the source rate."""
        return None if self.fps == "keep" else parse_fps(self.fps)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_fps(text: str) -> Fraction:
    try:
        return Fraction(text).limit_denominator(100000)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--fps {text}: not a number, a fraction or 'keep'") from None


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_size(text: str) -> int:
    """'500MB', '1GiB', '2e9' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{text!r}: not a size (examples: 500MB, 1GiB, 2e9)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
