"""Audio half of a sample: decode, downmix to mono and resample to 16 kHz, cut to the video's time
span, and store as 16-bit FLAC."""
from __future__ import annotations

import io

import av
import numpy as np
import soundfile

from shards.options import AUDIO_RATE


class MonoResampler:
    """Collects decoded audio as 16 kHz mono, remembering when the first frame starts. The downmix
    is FFmpeg's (swresample's standard matrix: for stereo the mean of the channels, for 5.1 the
    centre and surrounds weighted, LFE dropped), as in the authors' loader (PyAV, mono, s16)."""

    def __init__(self):
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        self._chunks: list[np.ndarray] = []
        self.start_time: float | None = None

    def push(self, frame) -> None:
        if self.start_time is None and frame.time is not None:
            self.start_time = float(frame.time)
        self._take(self._resampler.resample(frame))

    def _take(self, frames) -> None:
        self._chunks += [out.to_ndarray()[0] for out in frames]

    def finish(self) -> np.ndarray:
        """The waveform as float32 in [-1, 1)."""
        self._take(self._resampler.resample(None))
        if not self._chunks:
            return np.zeros(0, np.float32)
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


def fit_to_span(samples: np.ndarray, offset_s: float, num_samples: int) -> tuple[np.ndarray, float, float]:
    """Place audio that starts `offset_s` after the video's first frame onto the video's span of
    `num_samples` samples: drop what lies before it, pad silence where audio is missing.
    Returns (audio, seconds padded at the start, seconds padded at the end)."""
    shift = round(offset_s * AUDIO_RATE)
    if shift >= 0:
        pad_start = min(shift, num_samples)
        body = samples[: num_samples - pad_start]
    else:
        pad_start = 0
        body = samples[-shift: -shift + num_samples]
    pad_end = num_samples - pad_start - len(body)
    audio = np.concatenate([np.zeros(pad_start, np.float32), body, np.zeros(pad_end, np.float32)])
    return audio, pad_start / AUDIO_RATE, pad_end / AUDIO_RATE


def encode_flac(audio: np.ndarray) -> bytes:
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, AUDIO_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
