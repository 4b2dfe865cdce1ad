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


# --------------------------------------------------------------------------------------------
# Labelled clips for `xkd demo`: the class is carried by both modalities, in a way a model must
# learn (a motion pattern and a pitch contour), while everything else varies freely and
# independently in each modality (colours, shape, size, place, background, speed; base pitch,
# timbre, tempo, loudness, noise). What sound and picture share is therefore the class alone.
# --------------------------------------------------------------------------------------------

# class name -> (motion of the shape, contour of the sound)
CLIP_CLASSES = {
    "swing": ("horizontal", "rising"),    # left-right oscillation; glides up, repeated
    "bounce": ("vertical", "falling"),    # up-down oscillation; glides down, repeated
    "orbit": ("circle", "trill"),         # a circle round a centre; two notes a fifth apart, alternating
    "pulse": ("breathe", "beats"),        # grows and shrinks in place; one note, on and off
}
CLASS_AUDIO_RATE = 16000  # the rate the shards keep, so nothing is resampled


def class_clip_params(label: str, seed: int) -> dict:
    """The nuisance draws of one clip (everything but the class), reproducible from the seed."""
    if label not in CLIP_CLASSES:
        raise ValueError(f"unknown class {label!r}; classes: {', '.join(CLIP_CLASSES)}")
    rng = np.random.default_rng([seed, list(CLIP_CLASSES).index(label)])
    background = rng.uniform(0, 255, 3)
    return {
        # picture
        "background": background, "background_tilt": rng.uniform(-60, 60, 2),
        # each channel of the shape 100 to 156 levels from the background's (round the colour wheel),
        # so the shape is never lost against it
        "colour": (background + rng.uniform(100, 156, 3)) % 256, "square": bool(rng.random() < 0.5),
        "radius": rng.uniform(0.07, 0.13), "centre": rng.uniform(0.35, 0.65, 2),
        "amplitude": rng.uniform(0.12, 0.22), "motion_hz": rng.uniform(0.4, 0.9),
        "phase": rng.uniform(0, 2 * np.pi), "grain": rng.uniform(0, 25),
        # sound
        "pitch_hz": float(np.exp(rng.uniform(np.log(200), np.log(800)))),
        "harmonics": rng.uniform(0, 1, 4) * np.array([1.0, 0.8, 0.6, 0.4]),
        "tempo_hz": rng.uniform(1.5, 3.0), "loudness": rng.uniform(0.15, 0.35), "noise": rng.uniform(0.0, 0.03),
    }


def _shape_position(motion: str, p: dict, t: float) -> tuple[float, float, float]:
    """(x, y, radius) as fractions of the frame size at time t."""
    angle = 2 * np.pi * p["motion_hz"] * t + p["phase"]
    (cx, cy), amp, r = p["centre"], p["amplitude"], p["radius"]
    if motion == "horizontal":
        return cx + amp * np.sin(angle), cy, r
    if motion == "vertical":
        return cx, cy + amp * np.sin(angle), r
    if motion == "circle":
        return cx + amp * np.cos(angle), cy + amp * np.sin(angle), r
    return cx, cy, r * (1 + 0.6 * np.sin(angle))  # breathe


def _class_frames(motion: str, p: dict, times: np.ndarray, size: int, rng: np.random.Generator):
    """The clip's RGB frames (uint8), one per time."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    tilt = p["background_tilt"]
    background = (p["background"] + (tilt[0] * (x - 0.5) + tilt[1] * (y - 0.5))[..., None]).astype(np.float32)
    for t in times:
        cx, cy, r = _shape_position(motion, p, t)
        inside = (np.maximum(abs(x - cx), abs(y - cy)) < r) if p["square"] else ((x - cx) ** 2 + (y - cy) ** 2 < r * r)
        frame = background.copy()
        frame[inside] = p["colour"]
        frame += p["grain"] * rng.standard_normal(frame.shape, dtype=np.float32)  # sensor-like grain, new every frame
        yield np.clip(frame, 0, 255).astype(np.uint8)


def _class_sound(contour: str, p: dict, seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Mono waveform: a harmonic tone whose pitch follows the class's contour, plus noise."""
    t = np.arange(int(seconds * rate)) / rate
    cycle = (t * p["tempo_hz"]) % 1.0  # position within each repetition, 0..1
    if contour == "rising":
        semitones = 12 * cycle
    elif contour == "falling":
        semitones = 12 * (1 - cycle)
    elif contour == "trill":
        semitones = np.where(cycle < 0.5, 0.0, 7.0)
    else:  # beats
        semitones = np.zeros_like(t)
    frequency = p["pitch_hz"] * 2 ** (semitones / 12)
    phase = 2 * np.pi * np.cumsum(frequency) / rate
    weights = np.concatenate([[1.0], p["harmonics"]])
    tone = sum(w * np.sin((k + 1) * phase) for k, w in enumerate(weights)) / weights.sum()
    envelope = np.minimum(1.0, np.minimum(cycle, 1 - cycle) * 40)  # 12 ms fades: no click per repetition
    if contour == "beats":
        envelope = np.where(cycle < 0.5, envelope, 0.0)
    return p["loudness"] * envelope * tone + p["noise"] * rng.standard_normal(len(t))


def write_class_clip(path, label: str, seed: int, *, seconds: float = 3.0, fps: float = 8, size: int = 128,
                     audio_rate: int = CLASS_AUDIO_RATE, container: str | None = None) -> str:
    """A clip of class `label` (a key of CLIP_CLASSES): H.264 video of a shape moving as the class
    says, AAC sound whose pitch contour the class sets; every other property drawn from `seed`.
    8 fps and 128 px by default: the shards' rate and short side, so sharding keeps every frame."""
    p = class_clip_params(label, seed)
    motion, contour = CLIP_CLASSES[label]
    rng = np.random.default_rng([seed, 7])
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001), options={"preset": "ultrafast"})
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=audio_rate, layout="mono")
        for index, image in enumerate(_class_frames(motion, p, np.arange(round(seconds * fps)) / fps, size, rng)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        wave = _class_sound(contour, p, seconds, audio_rate, rng).astype(np.float32)[None]
        for start in range(0, wave.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, start:start + 1024]), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = audio_rate, start
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    return str(path)
