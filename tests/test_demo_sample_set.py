"""The demo's labelled clips: each class moves and sounds its own way, measured on the decoded file
(the shape's track in the picture, the pitch track of the sound), while colours and pitch vary
within a class; the sample set has both splits and every class, and shards the way the demo does."""
import csv
import json

import av
import numpy as np
import pytest

from shards.synthetic import CLIP_CLASSES, class_clip_params, write_class_clip
from xkd.demo import make_sample_set


def decode(path):
    """(frames (T, H, W, 3) uint8, mono waveform float32, sample rate)."""
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].rate
        sound = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return frames, sound, rate


def shape_track(frames, colour):
    """Centroid x, y (fractions of the width) and area (pixels) of the pixels of the shape's colour."""
    blurred = sum(np.roll(np.roll(frames.astype(np.float32), dy, 1), dx, 2)
                  for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9  # the grain averaged down
    inside = np.abs(blurred - colour).max(axis=-1) < 40
    size = frames.shape[2]
    ys, xs = np.mgrid[0:frames.shape[1], 0:size] / size
    area = inside.sum(axis=(1, 2))
    assert area.min() > 10, "the shape should be visible in every frame"
    return (xs * inside).sum(axis=(1, 2)) / area, (ys * inside).sum(axis=(1, 2)) / area, area


def pitch_track(sound, rate):
    """log2 of the fundamental in 64 ms windows where the sound is on, and the fraction on. The
    fundamental: the lowest frequency at half the window's strongest (harmonics are weaker)."""
    window, hop = 1024, 256
    spectra = np.abs(np.stack([np.fft.rfft(sound[i:i + window] * np.hanning(window))
                               for i in range(0, len(sound) - window, hop)]))
    energy = spectra.max(axis=1)
    on = energy > 0.3 * energy.max()
    lowest = (spectra[on] > 0.5 * energy[on, None]).argmax(axis=1)
    return np.log2(lowest * rate / window), on.mean()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three clips of every class, other seeds each: {label: [(frames, sound, rate, params)]}."""
    folder = tmp_path_factory.mktemp("classes")
    out = {}
    for label in CLIP_CLASSES:
        out[label] = []
        for seed in range(3):
            path = write_class_clip(folder / f"{label}{seed}.mp4", label, seed)
            out[label].append((*decode(path), class_clip_params(label, seed)))
    return out


def test_the_clips_are_real_video_files_at_the_shards_rate(clips):
    frames, sound, rate, _ = clips["swing"][0]
    assert frames.shape == (24, 128, 128, 3)  # 3 s at 8 fps
    assert rate == 16000 and abs(len(sound) - 3 * rate) < 2048


def test_each_class_moves_its_own_way(clips):
    for label, examples in clips.items():
        for frames, _, _, params in examples:
            x, y, area = shape_track(frames, params["colour"])
            moves_x, moves_y, grows = x.std() > 0.03, y.std() > 0.03, area.max() > 3 * area.min()
            expected = {"swing": (True, False, False), "bounce": (False, True, False),
                        "orbit": (True, True, False), "pulse": (False, False, True)}[label]
            assert (moves_x, moves_y, grows) == expected, (label, x.std(), y.std(), area.min(), area.max())


def test_each_class_has_its_own_pitch_contour(clips):
    for label, examples in clips.items():
        for _, sound, rate, _ in examples:
            octaves, on = pitch_track(sound, rate)
            span = np.percentile(octaves, 95) - np.percentile(octaves, 5)
            steps = np.diff(octaves)
            moves = steps[(steps != 0) & (np.abs(steps) < 0.3)]  # within a glide, not across its restart
            upward = np.mean(moves > 0)
            if label == "swing":  # rising glides of an octave
                assert span > 0.7 and upward > 0.9 and on > 0.85, (label, span, upward, on)
            elif label == "bounce":  # falling glides of an octave
                assert span > 0.7 and upward < 0.1 and on > 0.85, (label, span, upward, on)
            elif label == "orbit":  # two notes a fifth (7/12 octave) apart
                high = octaves > np.percentile(octaves, 5) + 0.3
                assert 0.45 < span < 0.7 and 0.3 < high.mean() < 0.7 and on > 0.85, (label, span, high.mean(), on)
            else:  # beats: one note, on half the time
                assert span < 0.15 and 0.3 < on < 0.7, (label, span, on)


def test_colour_and_pitch_vary_within_a_class(clips):
    for label, examples in clips.items():
        backgrounds = [np.median(frames[0].reshape(-1, 3), axis=0) for frames, _, _, _ in examples]
        pitches = [2 ** np.percentile(pitch_track(sound, rate)[0], 5) for _, sound, rate, _ in examples]
        assert max(np.abs(a - b).max() for a in backgrounds for b in backgrounds) > 40, (label, backgrounds)
        assert max(pitches) / min(pitches) > 1.2, (label, pitches)


def test_an_unknown_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown class 'waltz'; classes: swing, bounce, orbit, pulse"):
        write_class_clip(tmp_path / "x.mp4", "waltz", 0)


def test_sample_set_has_both_splits_every_class_and_the_broken_inputs(tmp_path, run_cli):
    manifest = make_sample_set(str(tmp_path), train_per_class=2, test_per_class=1, workers=2, progress=False)
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_split = {split: sorted(r["label"] for r in rows if r["split"] == split and "broken" not in r["path"])
                for split in ("train", "test")}
    assert by_split == {"train": sorted(list(CLIP_CLASSES) * 2), "test": sorted(CLIP_CLASSES)}
    clips = [tmp_path / "videos" / r["path"] for r in rows if "broken" not in r["path"]]
    assert len({p.read_bytes() for p in clips}) == len(clips)  # no clip repeats another, across splits too
    assert not list(tmp_path.rglob("*.tmp"))
    for split, samples, rejected in (("train", 8, {"corrupt": 1, "empty": 1, "no_audio": 1, "too_short": 1}),
                                     ("test", 4, {})):
        out = tmp_path / "shards" / split
        assert run_cli("shards", "create", manifest, out, "--split", split, "--workers", "2", "--quiet") == 0
        made = json.loads((out / "manifest.json").read_text())
        assert made["classes"] == {name: i for i, name in enumerate(sorted(CLIP_CLASSES))}  # the same in both
        assert sum(s["samples"] for s in made["shards"]) == samples and made["rejected_counts"] == rejected
