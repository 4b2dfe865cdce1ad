"""One video -> one sample: frame rate, size, GOP, audio, alignment, and every bad input."""
import io
import json

import av
import numpy as np
import pytest
import soundfile

from conftest import make_bad_inputs
from shards.inputs import InputItem
from shards.options import ShardOptions
from shards.sample import Sample, make_sample
from shards.synthetic import write_clip


def sample_of(path, **options) -> Sample:
    result = make_sample(InputItem(str(path), path.name, "k", "lbl"), ShardOptions(**options), {"lbl": 4})
    assert isinstance(result, Sample), result
    return result


def decode_video(sample: Sample):
    data = dict(sample.members)[sample.members[0][0]]
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [(f.to_ndarray(format="rgb24"), f.key_frame, f.pict_type, f.pts) for f in container.decode(stream)]
        return frames, stream


def decode_audio(sample: Sample) -> np.ndarray:
    audio, rate = soundfile.read(io.BytesIO(dict(sample.members)["flac"]), dtype="float32")
    assert rate == 16000 and audio.ndim == 1
    return audio


def test_real_720p_h264_with_aac(bbb):
    sample = sample_of(bbb)
    meta = sample.meta
    # 5.28 s at 25 fps -> 8 fps over the same span: 42 frames, 5.25 s
    assert (meta["frames"], meta["fps"], meta["width"], meta["height"]) == (42, 8.0, 228, 128)
    assert meta["duration"] == 5.25 and meta["audio_samples"] == 84000 and meta["has_audio"]
    assert meta["source_info"] == {**meta["source_info"], "video_codec": "h264", "audio_codec": "aac",
                                   "width": 1280, "height": 720, "audio_rate": 48000}
    assert [ext for ext, _ in sample.members] == ["mp4", "flac", "json", "lengths", "cls"]
    assert np.frombuffer(dict(sample.members)["lengths"], "<i4").tolist() == [42, 84000]
    assert dict(sample.members)["cls"] == b"4" and json.loads(dict(sample.members)["json"]) == meta
    frames, stream = decode_video(sample)
    assert len(frames) == 42 and frames[0][0].shape == (128, 228, 3)
    assert stream.codec_context.name == "vp9" and stream.average_rate == 8
    # closed 1 s GOP: a key frame every 8 frames
    assert [i for i, f in enumerate(frames) if f[1]] == list(range(0, 42, 8))
    audio = decode_audio(sample)
    assert len(audio) == 84000 and np.abs(audio).max() > 0.01


def test_audio_matches_the_source_soundtrack(bbb):
    """Our 16 kHz mono track is the source's 5.1 soundtrack downmixed and resampled the way the
    authors' loader does it (PyAV: mono, s16, 16 kHz), sample for sample, at the same times."""
    with av.open(str(bbb)) as container:
        assert container.streams.audio[0].codec_context.channels == 6
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        chunks = [f.to_ndarray()[0] for frame in container.decode(audio=0) for f in resampler.resample(frame)]
    reference = np.concatenate(chunks)[:84000] / 32768.0
    ours = decode_audio(sample_of(bbb))[: len(reference)]
    assert np.abs(ours - reference).max() < 1e-6  # the same 16-bit samples


def test_stereo_downmix_is_the_mean_of_the_channels(tmp_path):
    path = tmp_path / "stereo.mkv"
    with av.open(str(path), "w") as out:
        video = out.add_stream("mjpeg", rate=8)
        video.width, video.height, video.pix_fmt = 32, 32, "yuvj420p"
        sound = out.add_stream("flac", rate=16000, layout="stereo")
        for index in range(16):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = index
            out.mux(video.encode(frame))
        left, right = 0.5 * np.sin(np.arange(32000) / 5), 0.25 * np.cos(np.arange(32000) / 7)
        samples = np.stack([left, right]).astype(np.float32)
        for start in range(0, 32000, 1000):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1000]), format="fltp",
                                               layout="stereo")
            chunk.sample_rate, chunk.pts = 16000, start
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
        out.mux(video.encode(None))
    audio = decode_audio(sample_of(path))
    assert np.abs(audio - (left + right)[: len(audio)] / 2).max() < 2e-3


@pytest.mark.parametrize("codec,name", [("h264", "h264"), ("hevc", "hevc")])
def test_h264_and_hevc_have_short_closed_gops_without_b_frames(tmp_path, codec, name):
    clip = write_clip(tmp_path / "c.mp4", seconds=3.0, fps=30)
    sample = sample_of(tmp_path / "c.mp4", codec=codec)
    frames, stream = decode_video(sample)
    assert stream.codec_context.name == name and len(frames) == 24 == sample.meta["frames"]
    assert [i for i, f in enumerate(frames) if f[1]] == [0, 8, 16]
    assert all(f[2] != av.video.frame.PictureType.B for f in frames)
    assert [f[3] for f in frames] == sorted(f[3] for f in frames)  # presentation order == decode order
    assert clip


def test_keep_fps_and_short_side(bbb):
    sample = sample_of(bbb, fps="keep", short_side=256)
    assert (sample.meta["frames"], sample.meta["fps"], sample.meta["width"], sample.meta["height"]) == (132, 25.0, 456, 256)


def test_copy_keeps_the_source_stream_untouched(bbb):
    sample = sample_of(bbb, codec="copy")
    assert sample.members[0][0] == "mkv" and sample.meta["frames"] == 132 and sample.meta["width"] == 1280
    with av.open(str(bbb)) as src:
        source_packets = [bytes(p) for p in src.demux(video=0) if p.size]
    with av.open(io.BytesIO(sample.members[0][1])) as copied:
        copied_packets = [bytes(p) for p in copied.demux(video=0) if p.size]
    assert copied_packets == source_packets
    assert len(decode_audio(sample)) == round(132 / 25 * 16000)


def test_odd_size_and_variable_frame_rate(tmp_path):
    write_clip(tmp_path / "vfr.mkv", seconds=3.0, fps=25, vfr=True, width=175, height=143)
    sample = sample_of(tmp_path / "vfr.mkv")
    with av.open(str(tmp_path / "vfr.mkv")) as src:
        times = [float(f.time) for f in src.decode(video=0)]
    assert np.std(np.diff(times)) > 0.005  # the input really is variable-rate
    span = times[-1] + 0.04 - times[0]  # the last frame lasts one nominal frame
    assert sample.meta["frames"] == int(span * 8)
    assert (sample.meta["width"], sample.meta["height"]) == (156, 128)  # even sides, short side 128
    frames, stream = decode_video(sample)
    assert len(frames) == sample.meta["frames"] and np.ptp(np.diff([f[3] for f in frames])) == 0  # constant rate


def test_flash_and_click_land_at_the_same_time(tmp_path):
    write_clip(tmp_path / "av.mp4", seconds=3.0, fps=25, flash_at=1.5, audio_rate=48000)
    sample = sample_of(tmp_path / "av.mp4")
    frames, _ = decode_video(sample)
    brightness = np.array([f[0].mean() for f in frames])
    flash_time = int(np.argmax(brightness > (brightness.min() + brightness.max()) / 2)) / 8  # onset
    audio = decode_audio(sample)
    click_time = int(np.argmax(np.abs(audio))) / 16000
    assert flash_time == 1.5
    assert abs(click_time - 1.5) < 0.01


def test_stereo_44k_tone_becomes_16k_mono_at_the_same_pitch(tmp_path):
    write_clip(tmp_path / "tone.mp4", seconds=2.0, audio_rate=44100, seed=0)  # 220 Hz
    audio = decode_audio(sample_of(tmp_path / "tone.mp4"))
    spectrum = np.abs(np.fft.rfft(audio[4000:20000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 220) <= 1


def test_missing_audio_can_be_kept_as_silence(tmp_path):
    write_clip(tmp_path / "mute.avi", seconds=2.0, codec="mjpeg", audio="none")
    sample = sample_of(tmp_path / "mute.avi", missing_audio="silence")
    assert not sample.meta["has_audio"] and sample.meta["frames"] == 16
    audio = decode_audio(sample)
    assert len(audio) == 32000 and not audio.any()


def test_every_bad_input_is_rejected_with_its_reason(tmp_path):
    expected = make_bad_inputs(tmp_path)
    for name, category in expected.items():
        result = make_sample(InputItem(str(tmp_path / name), name, "k"), ShardOptions(), {})
        assert not isinstance(result, Sample), name
        assert (result.category, result.path) == (category, str(tmp_path / name)), result
        assert result.reason
    assert isinstance(make_sample(InputItem(str(tmp_path / "good.mp4"), "good.mp4", "k"), ShardOptions(), {}), Sample)
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    assert make_sample(InputItem(str(folder), "folder.mp4", "k"), ShardOptions(), {}).category == "unreadable"


def test_min_duration_is_an_option(tmp_path):
    write_clip(tmp_path / "s.mp4", seconds=0.7)
    assert sample_of(tmp_path / "s.mp4", min_duration=0.5).meta["frames"] == 5


def test_constant_rate_sampler_picks_the_last_frame_at_or_before_each_time():
    from fractions import Fraction

    from shards.video import ConstantRateSampler

    sampler = ConstantRateSampler(Fraction(4))  # outputs at 0, .25, .5, .75, ...
    times = [0.0, 0.1, 0.3, 0.31, 0.74, 0.9]  # irregular: variable frame rate
    out = []
    for name, time in zip("abcdef", times):
        out += sampler.push(name, time)
    out += sampler.finish(1.05)
    # t=0 -> a, .25 -> b, .5 -> d, .75 -> e, 1.0 would end at 1.25 > 1.05: not a whole period
    assert out == ["a", "b", "d", "e"]
    fresh = ConstantRateSampler(Fraction(4))
    assert fresh.needs(0.31, 0.4)  # before the first frame: unsure, so decode
    fresh.push("a", 0.0)
    assert not fresh.needs(0.31, 0.4) and fresh.needs(0.45, 0.6)


def source_frame(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def best_turn(shard_frame: np.ndarray, stored: np.ndarray) -> tuple[int, float]:
    """Which counter-clockwise quarter turn of the stored frame the shard frame shows, and how well."""
    height, width = shard_frame.shape[:2]
    scores = {}
    for turns in range(4):
        turned = np.ascontiguousarray(np.rot90(stored, turns))
        if (turned.shape[0] > turned.shape[1]) != (height > width):
            continue
        expected = av.VideoFrame.from_ndarray(turned, format="rgb24").reformat(width=width, height=height)
        scores[turns] = np.corrcoef(expected.to_ndarray(format="rgb24").ravel(), shard_frame.ravel())[0, 1]
    turns = max(scores, key=scores.get)
    return turns, scores[turns]


@pytest.mark.parametrize("rotation, turns, size", [(90, 1, (128, 170)), (-90, 3, (128, 170)), (180, 2, (170, 128))])
def test_rotated_video_is_stored_upright(tmp_path, rotation, turns, size):
    """A phone's portrait video (stored landscape with a display rotation) comes out as a player
    shows it: turned, with the short side on the right axis."""
    path = write_clip(tmp_path / "phone.mp4", seconds=1.5, fps=8, width=160, height=120, rotation=rotation)
    sample = sample_of(tmp_path / "phone.mp4")
    assert (sample.meta["width"], sample.meta["height"]) == size
    assert sample.meta["source_info"]["rotation"] == 90 * turns
    frames, _ = decode_video(sample)
    found, score = best_turn(frames[0][0], source_frame(path))
    assert found == turns and score > 0.9, (found, score)


def test_anamorphic_video_gets_square_pixels(tmp_path):
    """160x120 stored with pixels twice as wide as high shows as 320x120: 342x128 in the shard."""
    from fractions import Fraction

    path = write_clip(tmp_path / "wide.mp4", seconds=1.5, fps=8, width=160, height=120,
                      sample_aspect_ratio=Fraction(2, 1))
    sample = sample_of(tmp_path / "wide.mp4")
    assert (sample.meta["width"], sample.meta["height"]) == (342, 128)
    assert sample.meta["source_info"]["sample_aspect_ratio"] == "2"
    frames, stream = decode_video(sample)
    assert stream.sample_aspect_ratio in (None, 1)
    found, score = best_turn(frames[0][0], source_frame(path))
    assert found == 0 and score > 0.9, (found, score)


@pytest.mark.parametrize("declared, decoded, truncated", [
    (10.0, 8.49, True), (10.0, 8.51, False),  # the rule: below 90% of the declared duration minus 0.5 s
    (3.0, 2.19, True), (3.0, 2.21, False),    # a short file gets the 0.5 s allowance too
    (None, 0.5, False),                       # nothing declared: nothing to compare with
])
def test_truncation_rule_at_its_boundary(declared, decoded, truncated):
    from shards.sample import Rejected, _check_span

    opts = ShardOptions(min_duration=0.1)
    if truncated:
        with pytest.raises(Rejected) as rejected:
            _check_span(decoded, declared, decoded, opts)
        assert rejected.value.category == "truncated" and f"decoded {decoded:.2f} s of {declared:.2f} s" in str(rejected.value)
    else:
        _check_span(decoded, declared, decoded, opts)
