"""Video half of a sample: constant-rate frame selection, resizing and encoding with PyAV."""
from __future__ import annotations

import io
import math
from collections import deque
from fractions import Fraction

import av
import numpy as np

# Encoder settings per codec: closed GOP of `gop` frames, no B-frames / hidden alt-ref frames, one
# thread (a shard worker is one core), constant quality. `crf` is filled in by the caller.
_ENCODERS = {
    "vp9": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                           "auto-alt-ref": "0", "b:v": "0", "row-mt": "0", "threads": "1"}),
    "h264": ("libx264", {"preset": "veryfast", "threads": "1"}),
    "hevc": ("libx265", {"preset": "veryfast"}),
}
DEFAULT_CRF = {"vp9": 32, "h264": 23, "hevc": 28}
CONTAINER = "mp4"  # DALI reads VP9/H.264/HEVC in MP4 from memory; `copy` uses Matroska (any codec)
COPY_CONTAINER = "matroska"


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Scale so the short side is `short_side`; both sides even, as 4:2:0 needs."""
    if width <= height:
        return short_side, max(2, round(height * short_side / width / 2) * 2)
    return max(2, round(width * short_side / height / 2) * 2), short_side


def quarter_turns(rotation: float | None) -> int:
    """Counter-clockwise quarter turns that show a frame upright, from the rotation of its display
    matrix (degrees counter-clockwise, as FFmpeg and PyAV's `frame.rotation` give it; a phone's
    portrait video says 90 or -90). Other angles snap to the nearest quarter turn."""
    return round((rotation or 0) / 90) % 4


def upright_size(width: int, height: int, sample_aspect_ratio, turns: int) -> tuple[float, float]:
    """The displayed (width, height): non-square pixels stretched (anamorphic video), then turned."""
    ratio = float(sample_aspect_ratio) if sample_aspect_ratio else 1.0
    display_width = width * ratio if 0.1 <= ratio <= 10 else width  # an absurd ratio is a broken header
    return (height, display_width) if turns % 2 else (display_width, height)


def turn_frame(frame, turns: int):
    """A yuv420p frame turned counter-clockwise by `turns` quarter turns, plane by plane (exact)."""
    if turns == 0:
        return frame
    width, height = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
    turned = av.VideoFrame(width, height, "yuv420p")
    for source, target in zip(frame.planes, turned.planes):
        pixels = np.frombuffer(source, np.uint8).reshape(source.height, source.line_size)[:, :source.width]
        rows = np.zeros((target.height, target.line_size), np.uint8)  # lines are padded to line_size
        rows[:, :target.width] = np.rot90(pixels, turns)
        target.update(rows)
    return turned


class ConstantRateSampler:
    """Turns frames with arbitrary (possibly variable-rate) timestamps into a constant-rate sequence.
    Output frame k shows the last source frame whose time is <= t0 + k/fps, t0 being the first
    frame's time. Only whole output periods are kept (k/fps + 1/fps <= source span), so the
    output never outlasts the source and the audio cut to it needs no padding."""

    def __init__(self, fps: Fraction):
        self.fps = fps
        self.t0: float | None = None
        self.emitted = 0
        self._chosen = 0  # targets with a frame picked (some still held back)
        self._held: deque = deque()  # (target index, frame) not yet known to fit in the span
        self._last = None
        self._last_time = None

    def _target(self, k: int) -> float:
        return self.t0 + float(k / self.fps)

    def _release(self, end: float) -> list:
        """Frames whose whole output period ends by `end`."""
        due = []
        while self._held and self._target(self._held[0][0] + 1) <= end + 1e-6:
            due.append(self._held.popleft()[1])
        self.emitted += len(due)
        return due

    def push(self, frame, time: float) -> list:
        """Feed the next source frame (in presentation order); returns the frames due for output."""
        if self.t0 is None:
            self.t0 = time
        elif time <= self._last_time:  # duplicate or backwards timestamp: keep the earlier frame
            return []
        while self._last is not None and self._target(self._chosen) < time - 1e-6:
            self._held.append((self._chosen, self._last))
            self._chosen += 1
        self._last, self._last_time = frame, time
        return self._release(time)

    def needs(self, start: float, end: float) -> bool:
        """Would a frame shown from `start` until `end` be picked for output? True while unsure."""
        if self.t0 is None or end <= start:
            return True
        first_due = math.ceil((start - self.t0 - 1e-6) * self.fps)
        return self._target(max(first_due, self._chosen)) < end - 1e-6

    def finish(self, end_time: float) -> list:
        """Emit the frames due up to the source's end time (last frame time + its duration)."""
        if self._last is None:
            return []
        while self._target(self._chosen) < end_time - 1e-6:
            self._held.append((self._chosen, self._last))
            self._chosen += 1
        due = self._release(end_time)
        self._held.clear()
        return due


class VideoEncoder:
    """Encodes same-sized yuv420p frames at a constant rate into an in-memory MP4."""

    def __init__(self, codec: str, fps: Fraction, width: int, height: int, crf: int | None, gop_seconds: float):
        name, options = _ENCODERS[codec]
        gop = max(1, round(float(fps) * gop_seconds))
        options = dict(options, crf=str(DEFAULT_CRF[codec] if crf is None else crf), g=str(gop))
        if codec == "h264":
            options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:open-gop=0"
        elif codec == "hevc":
            options["x265-params"] = (f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:open-gop=0:"
                                      "pools=1:frame-threads=1:log-level=error")
        self._buffer = io.BytesIO()
        # bitexact: no library version strings in the file, so equal input gives equal bytes
        self._container = av.open(self._buffer, "w", format=CONTAINER, options={"fflags": "+bitexact"})
        self._stream = self._container.add_stream(name, rate=fps, options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._time_base = Fraction(1) / fps
        self.frames = 0

    def encode(self, frame) -> None:
        frame.pts, frame.time_base = self.frames, self._time_base
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._buffer.getvalue()


class StreamCopier:
    """`--codec copy`: the source video packets, untouched, in a Matroska file."""

    def __init__(self, source_stream):
        self._buffer = io.BytesIO()
        self._container = av.open(self._buffer, "w", format=COPY_CONTAINER, options={"fflags": "+bitexact"})
        self._stream = self._container.add_stream_from_template(source_stream)
        self.frames = 0

    def add(self, packet) -> None:
        packet.stream = self._stream
        self._container.mux(packet)
        self.frames += 1

    def close(self) -> bytes:
        self._container.close()
        return self._buffer.getvalue()
