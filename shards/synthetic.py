"""Small synthetic videos made with PyAV, for the demo, the tests and the benchmarks: a moving
colour pattern with a tone (both can be given a class's tint and pitch), optionally a white flash with a click at a chosen time (to check
audio/video alignment), variable frame rate, no audio, or a silent track; a display rotation (as
phones write) or non-square pixels (anamorphic video) on request."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np


FLASH_SECONDS = 0.125  # one frame at 8 fps, so a resampled copy keeps it


def _pattern(index: int, width: int, height: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    phase = index * 0.15 + seed
    frame = np.stack([
        127 + 120 * np.sin(x / (9 + seed % 5) + phase),
        127 + 120 * np.sin(y / 7 - phase),
        127 + 120 * np.sin((x + y) / 13 + 2 * phase),
    ], axis=-1)
    return frame.astype(np.uint8)


def write_clip(path, *, seconds: float = 2.0, fps: float = 25, width: int = 160, height: int = 120,
               codec: str = "libx264", container: str | None = None, audio: str = "tone",
               audio_rate: int = 44100, flash_at: float | None = None, vfr: bool = False,
               seed: int = 0, rotation: float | None = None, sample_aspect_ratio: Fraction | None = None,
               tint: tuple[float, float, float] | None = None, tone_hz: float | None = None) -> str:
    """audio: 'tone', 'none' (no audio stream) or 'silent' (an all-zero track).
    tint: factors for the pattern's red, green and blue; tone_hz: the tone's pitch (default 220 + 40 x seed).
    flash_at: white frames for FLASH_SECONDS and a 10 ms click, both starting at that time. vfr: irregular frame spacing.
    rotation: display-matrix angle, degrees counter-clockwise. sample_aspect_ratio: pixel width / height."""
    rng = np.random.default_rng(seed)
    options = {"preset": "ultrafast"} if codec == "libx264" else {}
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options)
        video.width, video.height = width, height
        odd = width % 2 or height % 2  # 4:2:0 needs even sizes; 4:4:4 takes any
        video.pix_fmt = "yuvj420p" if codec == "mjpeg" else ("yuv444p" if odd else "yuv420p")
        video.codec_context.time_base = Fraction(1, 1000)
        if sample_aspect_ratio is not None:
            video.codec_context.sample_aspect_ratio = sample_aspect_ratio
        if rotation is not None:
            video.set_display_rotation(rotation)
        sound = None
        if audio != "none":
            sound = out.add_stream("aac", rate=audio_rate, layout="stereo")
        # frame times: regular, or jittered for variable frame rate
        times, t = [], 0.0
        while t < seconds - 1e-9:
            times.append(t)
            t += (1 / fps) * (rng.uniform(0.5, 1.5) if vfr else 1.0)
        for index, time in enumerate(times):
            image = _pattern(index, width, height, seed)
            if tint is not None:
                image = (image * np.asarray(tint)).clip(0, 255).astype(np.uint8)
            if flash_at is not None and time < flash_at + FLASH_SECONDS - 1e-9 and time + 1 / fps > flash_at + 1e-9:
                image[:] = 255  # every frame shown during the flash
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(time * 1000), Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            total = int(seconds * audio_rate)
            pitch = 220 + 40 * seed if tone_hz is None else tone_hz
            tone = 0.2 * np.sin(2 * np.pi * pitch * np.arange(total) / audio_rate)
            if audio == "silent":
                tone[:] = 0
            if flash_at is not None:
                start = int(flash_at * audio_rate)
                tone[:] *= 0.05
                tone[start:start + audio_rate // 100] = 0.9
            samples = np.stack([tone, tone]).astype(np.float32)
            for start in range(0, total, 1024):
                chunk = np.ascontiguousarray(samples[:, start:start + 1024])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = audio_rate, start
                frame.time_base = Fraction(1, audio_rate)
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return str(path)
