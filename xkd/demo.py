"""The built-in sample set of `xkd demo`: a few synthetic videos in two classes, plus inputs that
`xkd shards create` must reject."""
from __future__ import annotations

import os


def make_sample_set(folder: str) -> str:
    """Two class folders of short clips in the containers users bring, and a few broken inputs."""
    from shards.synthetic import write_clip

    videos = os.path.join(folder, "videos")
    for label in ("waves", "ripples"):
        os.makedirs(os.path.join(videos, label), exist_ok=True)
    clips = [
        ("waves/clip0.mp4", {}),
        ("waves/clip1.mkv", {"vfr": True, "width": 176, "height": 144}),
        ("waves/clip2.mp4", {"fps": 30000 / 1001, "seconds": 3.0}),
        ("ripples/clip3.mp4", {"flash_at": 1.0, "audio_rate": 48000}),
        ("ripples/clip4.avi", {"codec": "mjpeg", "audio": "none"}),  # no audio: rejected by default
        ("ripples/clip5.mp4", {"seconds": 0.6}),  # shorter than --min-duration
    ]
    for index, (name, options) in enumerate(clips):
        write_clip(os.path.join(videos, name), seed=index, **options)
    open(os.path.join(videos, "ripples", "empty.mp4"), "wb").close()
    with open(os.path.join(videos, "ripples", "notes.mp4"), "w") as handle:
        handle.write("not a video\n" * 50)
    return videos
