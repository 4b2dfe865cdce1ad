"""One input -> one shard sample (video + FLAC audio + JSON + lengths + class; audio only with
--audio-only), or a rejection with its reason. Runs inside the worker processes; never raises for
a bad input."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from shards.audio import MonoResampler, encode_flac, fit_to_span
from shards.inputs import InputItem, Rejection
from shards.options import AUDIO_RATE, ShardOptions
from shards.video import (ConstantRateSampler, StreamCopier, VideoEncoder, output_size, quarter_turns, turn_frame,
                          upright_size)

# A file is truncated when its decoded stream covers less than 90% of its declared duration, less
# 0.5 s: containers declare a little more than their last frame shows (the last frame's own length,
# an audio tail, an edit list), which the allowance absorbs for short files.
TRUNCATION_TOLERANCE = 0.9
TRUNCATION_ALLOWANCE_S = 0.5


@dataclass
class Sample:
    key: str
    members: list[tuple[str, bytes]]  # (extension, data) in tar order
    meta: dict

    @property
    def duration(self) -> float:
        return self.meta["duration"]


def lengths_member(frames: int, audio_samples: int) -> bytes:
    """The `.lengths` member: little-endian int32 [video frames, audio samples]."""
    return np.array([frames, audio_samples], dtype="<i4").tobytes()


class Rejected(Exception):
    def __init__(self, category: str, reason: str):
        super().__init__(reason)
        self.category, self.reason = category, reason


def make_sample(item: InputItem, opts: ShardOptions, classes: dict[str, int]) -> Sample | Rejection:
    try:
        return (_make_audio_sample if opts.audio_only else _make_sample)(item, opts, classes)
    except Rejected as rejected:
        return Rejection(item.path, rejected.reason, rejected.category)
    except av.error.FFmpegError as exc:
        return Rejection(item.path, f"not a readable video: {exc.strerror or exc}", "corrupt")
    except Exception as exc:  # a bug or an exotic file must not end the run; it is recorded instead
        return Rejection(item.path, f"unexpected error: {type(exc).__name__}: {exc}", "error")


def _check_readable(path: str) -> None:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise Rejected("unreadable", f"cannot read: {exc.strerror or exc}") from None
    if os.path.isdir(path):
        raise Rejected("unreadable", "cannot read: is a directory")
    if size == 0:
        raise Rejected("empty", "empty file (0 bytes)")


def _declared_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _open(item: InputItem):
    _check_readable(item.path)
    try:
        return av.open(item.path, metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise Rejected("corrupt", f"cannot open as media (corrupt, truncated or not a media file): "
                                  f"{exc.strerror or exc}") from None


def _check_span(span: float, declared: float | None, decoded: float, opts: ShardOptions) -> None:
    if span < opts.min_duration:
        raise Rejected("too_short", f"too short: {span:.2f} s decoded < --min-duration {opts.min_duration} s")
    if declared is not None and decoded < TRUNCATION_TOLERANCE * declared - TRUNCATION_ALLOWANCE_S:
        raise Rejected("truncated", f"truncated: decoded {decoded:.2f} s of {declared:.2f} s declared")


def _check_declared(declared: float | None, opts: ShardOptions) -> None:
    if declared is not None and declared < opts.min_duration:
        raise Rejected("too_short", f"too short: {declared:.2f} s < --min-duration {opts.min_duration} s")


def _label_fields(item: InputItem, classes: dict[str, int]) -> tuple[dict, list[tuple[str, bytes]]]:
    """The JSON's label fields and the label member: `.cls` (the class id) for a single-label input;
    for a multi-label one, `labels`/`label_ids` in the JSON (ids ascending) and `.labels` (the ids,
    comma-separated: `.cls` would not do, the webdataset library decodes it as one int)."""
    label_id = classes.get(item.label) if item.label is not None else None
    fields = {"key": item.key, "source": item.rel, "source_path": item.path, "label": item.label,
              "label_id": label_id}
    if item.labels is None:
        return fields, ([] if label_id is None else [("cls", str(label_id).encode())])
    names = sorted(item.labels, key=lambda name: classes[name])
    ids = [classes[name] for name in names]
    fields.update(labels=names, label_ids=ids)
    return fields, [("labels", ",".join(map(str, ids)).encode())]


def _make_audio_sample(item: InputItem, opts: ShardOptions, classes: dict[str, int]) -> Sample:
    """--audio-only: the whole soundtrack, 16 kHz mono FLAC; no video member."""
    with _open(item) as container:
        stream = container.streams.best("audio")
        if stream is None:
            raise Rejected("no_audio", "no audio stream")
        declared = _declared_duration(container, stream)
        _check_declared(declared, opts)
        stream.codec_context.thread_count = 1
        resampler = MonoResampler()
        try:
            for frame in container.decode(stream):
                resampler.push(frame)
        except av.error.FFmpegError as exc:
            raise Rejected("corrupt", f"audio decode failed: {exc.strerror or exc}") from None
        audio = resampler.finish()
    span = len(audio) / AUDIO_RATE
    _check_span(span, declared, span, opts)
    peak = float(np.abs(audio).max())
    if peak == 0.0:
        raise Rejected("silent_audio", "audio track is silent (every sample is zero)")
    fields, label_member = _label_fields(item, classes)
    meta = {**fields, "duration": round(span, 6), "frames": 0, "has_audio": True, "audio_rate": AUDIO_RATE,
            "audio_samples": len(audio), "audio_peak": round(peak, 6),
            "source_info": {"container": container.format.name, "audio_codec": stream.codec_context.name,
                            "audio_rate": stream.codec_context.sample_rate,
                            "audio_channels": stream.codec_context.channels,
                            "duration": None if declared is None else round(declared, 6)}}
    members = [("flac", encode_flac(audio)), ("json", json.dumps(meta, sort_keys=True).encode()),
               ("lengths", lengths_member(0, len(audio)))] + label_member
    return Sample(key=item.key, members=members, meta=meta)


def _make_sample(item: InputItem, opts: ShardOptions, classes: dict[str, int]) -> Sample:
    with _open(item) as container:
        video_stream = container.streams.best("video")
        if video_stream is None:
            raise Rejected("no_video", "no video stream")
        audio_stream = container.streams.best("audio")
        if audio_stream is None and opts.missing_audio == "skip":
            raise Rejected("no_audio", "no audio stream (use --missing-audio silence to keep it)")
        declared = _declared_duration(container, video_stream)
        _check_declared(declared, opts)
        fps = opts.target_fps or video_stream.average_rate or video_stream.guessed_rate
        if not fps:
            raise Rejected("corrupt", "cannot determine the source frame rate")
        fps = Fraction(fps)
        pass_ = _DecodePass(video_stream, audio_stream, opts, fps)
        pass_.run(container)

    span = pass_.frames / fps
    if pass_.frames == 0:
        raise Rejected("corrupt", "no decodable video frame")
    _check_span(float(span), declared, pass_.source_span, opts)

    num_samples = round(span * AUDIO_RATE)
    has_audio = audio_stream is not None and pass_.audio_start is not None
    if has_audio:
        audio, pad_start, pad_end = fit_to_span(pass_.audio, pass_.audio_start - pass_.video_start, num_samples)
        peak = float(np.abs(audio).max()) if len(audio) else 0.0
        if peak == 0.0:
            if opts.missing_audio == "skip":
                raise Rejected("silent_audio", "audio track is silent (every sample is zero)")
            has_audio = False
    if not has_audio:
        if opts.missing_audio == "skip":
            raise Rejected("no_audio", "audio stream has no decodable audio")
        audio, pad_start, pad_end, peak = np.zeros(num_samples, np.float32), 0.0, 0.0, 0.0

    fields, label_member = _label_fields(item, classes)
    meta = {
        **fields,
        "duration": round(float(span), 6),
        "fps": round(float(fps), 6),
        "fps_fraction": f"{fps.numerator}/{fps.denominator}",
        "frames": pass_.frames,
        "width": pass_.width,
        "height": pass_.height,
        "codec": opts.codec,
        "has_audio": has_audio,
        "audio_rate": AUDIO_RATE,
        "audio_samples": num_samples,
        "audio_peak": round(peak, 6),
        "audio_padded_start_s": round(pad_start, 6),
        "audio_padded_end_s": round(pad_end, 6),
        "source_info": pass_.source_info(container, declared),
    }
    members = [
        (pass_.video_extension, pass_.video_bytes),
        ("flac", encode_flac(audio)),
        ("json", json.dumps(meta, sort_keys=True).encode()),
        # what DALI needs before decoding (to pick a clip), and cannot read out of the JSON
        ("lengths", lengths_member(pass_.frames, num_samples)),
    ] + label_member
    return Sample(key=item.key, members=members, meta=meta)


class _DecodePass:
    """Reads the file once, demuxing video and audio together: video frames go through the
    constant-rate sampler into the encoder (or packets into the stream copier), audio frames
    into the resampler."""

    def __init__(self, video_stream, audio_stream, opts: ShardOptions, fps: Fraction):
        self.video_stream, self.audio_stream, self.opts, self.fps = video_stream, audio_stream, opts, fps
        self.copy = opts.codec == "copy"
        ctx = video_stream.codec_context
        ctx.thread_type, ctx.thread_count = "SLICE", 1  # one core per worker; workers scale out
        if opts.fast_decode and ctx.name in ("h264", "hevc"):
            ctx.options = {"skip_loop_filter": "all"}
        if audio_stream is not None:
            audio_stream.codec_context.thread_count = 1
        self.width, self.height = ctx.width, ctx.height  # the output's; set from the first frame when encoding
        self.turns = 0  # quarter turns that stand the frames upright (display matrix)
        self.sample_aspect_ratio = video_stream.sample_aspect_ratio or ctx.sample_aspect_ratio
        self.sampler = ConstantRateSampler(fps)
        self.resampler = MonoResampler() if audio_stream is not None else None
        self._encoder = None
        self._copier = StreamCopier(video_stream) if self.copy else None
        self._reformatted = (None, None)  # (source frame, resized frame): repeated frames resize once
        self.frames = 0
        self.video_start = None
        self.video_end = None
        self.video_bytes = b""
        self.video_extension = opts.members[0]
        self.audio = np.zeros(0, np.float32)
        self.audio_start = None
        self._last_time = 0.0

    @property
    def source_span(self) -> float:
        return 0.0 if self.video_start is None else self.video_end - self.video_start

    def run(self, container) -> None:
        streams = [s for s in (self.video_stream, self.audio_stream) if s is not None]
        try:
            for packet in container.demux(streams):
                if packet.stream is self.video_stream:
                    self._video_packet(packet)
                else:
                    for frame in packet.decode():
                        self.resampler.push(frame)
        except av.error.FFmpegError as exc:
            raise Rejected("corrupt", f"decode failed near {self._last_time:.2f} s: {exc.strerror or exc}") from None
        if self.copy:
            self.frames = self._copier.frames
            self.video_bytes = self._copier.close() if self.frames else b""
        else:
            for frame in self.sampler.finish(self.video_end if self.video_end is not None else 0.0):
                self._encode(frame)
            self.frames = self.sampler.emitted
            self.video_bytes = self._encoder.close() if self._encoder else b""
        if self.resampler is not None:
            self.audio = self.resampler.finish()
            self.audio_start = self.resampler.start_time

    def _frame_duration(self, duration, time_base) -> float:
        if duration and time_base:
            return float(duration * time_base)
        rate = self.video_stream.average_rate or self.video_stream.guessed_rate or self.fps
        return float(1 / rate)

    def _video_packet(self, packet) -> None:
        if self.copy:
            if packet.size == 0:
                return
            if packet.pts is not None:
                start = float(packet.pts * packet.time_base)
                self._track(start, start + self._frame_duration(packet.duration, packet.time_base))
            self._copier.add(packet)
            return
        self._skip_unneeded(packet)
        for frame in packet.decode():
            time = frame.time if frame.time is not None else self._last_time + self._frame_duration(None, None)
            self._track(time, time + self._frame_duration(frame.duration, frame.time_base))
            for due in self.sampler.push(frame, time):
                self._encode(due)

    def _skip_unneeded(self, packet) -> None:
        """Let the decoder drop a non-reference frame (a typical B-frame) that no output time
        falls on: exact output, ~25% less decoding on B-frame sources at 8 fps. Only where the
        packet's own duration says when the next frame starts."""
        if packet.pts is None or not packet.duration or packet.size == 0:
            needed = True
        else:
            start = float(packet.pts * packet.time_base)
            needed = self.sampler.needs(start, start + float(packet.duration * packet.time_base))
        self.video_stream.codec_context.skip_frame = "DEFAULT" if needed else "NONREF"

    def _track(self, start: float, end: float) -> None:
        self.video_start = start if self.video_start is None else min(self.video_start, start)
        self.video_end = end if self.video_end is None else max(self.video_end, end)
        self._last_time = start

    def _encode(self, frame) -> None:
        if self._encoder is None:
            self._set_output_geometry(frame)
        if self._reformatted[0] is not frame:
            # resize to the turned size first: the turn then moves only the small frame's pixels
            width, height = (self.height, self.width) if self.turns % 2 else (self.width, self.height)
            shrinking = width * height <= frame.width * frame.height
            resized = frame.reformat(width=width, height=height, format="yuv420p",
                                     interpolation="AREA" if shrinking else "BICUBIC")
            self._reformatted = (frame, turn_frame(resized, self.turns))
        self._encoder.encode(self._reformatted[1])

    def _set_output_geometry(self, frame) -> None:
        """Output frames show the video as a player does: upright (display matrix) and with square
        pixels (sample aspect ratio), short side `--short-side`."""
        self.turns = quarter_turns(frame.rotation)
        upright = upright_size(frame.width, frame.height, self.sample_aspect_ratio, self.turns)
        self.width, self.height = output_size(*upright, self.opts.short_side)
        self._encoder = VideoEncoder(self.opts.codec, self.fps, self.width, self.height,
                                     self.opts.crf, self.opts.gop_seconds)

    def source_info(self, container, declared: float | None) -> dict:
        video = self.video_stream.codec_context
        info = {
            "container": container.format.name,
            "video_codec": video.name,
            "width": video.width,
            "height": video.height,
            "fps": round(float(self.video_stream.average_rate or 0), 6),
            "duration": None if declared is None else round(declared, 6),
            "start_time": round(self.video_start or 0.0, 6),
            "sample_aspect_ratio": str(self.sample_aspect_ratio or 1),
            "rotation": None if self.copy else 90 * self.turns,  # copy: stored as is, turn unknown
        }
        if self.audio_stream is not None:
            audio = self.audio_stream.codec_context
            info.update(audio_codec=audio.name, audio_rate=audio.sample_rate, audio_channels=audio.channels)
        return info
