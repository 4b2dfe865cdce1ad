"""The classifiers of `xkd eval` (SVM, linear probe, kNN), their result files and report, on small
synthetic feature files written with `save_features`; expected values are computed by hand."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from xkd.eval.feature_file import FeatureFileError, FeatureSet, save_features
from xkd.eval.inputs import load_pair
from xkd.eval.knn import knn_top1, knn_votes, video_features
from xkd.eval.linear_probe import LinearSettings, evaluate_linear
from xkd.eval.modalities import concatenate_modalities
from xkd.eval.results import EvalResult, collate, read_results, write_results
from xkd.eval.scoring import average_per_video, mean_average_precision, topk_accuracy
from xkd.eval.svm import SvmSettings, evaluate_svm

BACKBONE = "run1 teacher"  # features.json's label; its weights are identified per modality by SHA-256
WEIGHTS = {m: {"kind": "file", "modality": m, "sha256": digit * 64} for m, digit in (("video", "a"), ("audio", "b"))}


def feature_set(rows: list[tuple[int, int, int, list[float]]], labels, keys=None) -> FeatureSet:
    """rows: (video, clip, crop, feature)."""
    labels = np.asarray(labels)
    keys = np.array(keys if keys is not None else [f"k{v:03d}" for v in range(len(labels))])
    return FeatureSet(features=np.array([r[3] for r in rows], dtype=np.float32),
                      video_index=np.array([r[0] for r in rows]), clip_index=np.array([r[1] for r in rows]),
                      crop_index=np.array([r[2] for r in rows]), keys=keys, labels=labels)


def write(folder: Path, fs: FeatureSet, modality: str = "video", **meta) -> Path:
    """A feature folder as `xkd eval features` writes it: MODALITY.npz beside features.json."""
    save_features(folder / f"{modality}.npz", fs)
    meta_path = folder / "features.json"
    record = json.loads(meta_path.read_text()) if meta_path.exists() else {
        "format": "xkd-features", "version": 1, "backbone": BACKBONE, "backbones": WEIGHTS,
        "config": {"name": "xkd_tiny"}, "shards": {"location": f"/data/ucf101/fold2/{folder.name}"},
        "multi_label": fs.multi_label}
    record.update(meta)
    meta_path.write_text(json.dumps(record))
    return folder


def blobs(classes: int, videos_per_class: int, clips: int, dim: int, spread: float, seed: int,
          crops: int = 1, key_prefix: str = "k") -> FeatureSet:
    """Gaussian clusters, one per class (the same centres for every seed); one row per clip and crop."""
    centres = np.random.default_rng(1234).normal(size=(classes, dim))
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), videos_per_class)
    rows = [(v, c, k, centres[y] + spread * rng.normal(size=dim))
            for v, y in enumerate(labels) for c in range(clips) for k in range(crops)]
    return feature_set(rows, labels, [f"{key_prefix}{v:03d}" for v in range(len(labels))])


# ---- SVM ---------------------------------------------------------------------------------------------

def test_svm_on_separable_features_scores_100_percent(tmp_path):
    train = write(tmp_path / "train", blobs(6, 8, 3, 16, 0.05, seed=1))
    test = write(tmp_path / "test", blobs(6, 4, 3, 16, 0.05, seed=2, key_prefix="t"))
    outcome = evaluate_svm(load_pair(train, test), SvmSettings(c_grid=(1e-2, 1.0), cv_folds=3))
    assert outcome.cv_top1 == [100.0, 100.0]
    assert outcome.test_top1 == [100.0, 100.0] and outcome.test_top5 == [100.0, 100.0]


def _one_dimensional_pair(tmp_path) -> Path:
    """Two classes on a line, mirror images of each other (class 0 near -1, class 1 near +1), so that
    any linear classifier trained on them puts its boundary at 0. Test video 0 (class 1) has clips at
    -0.01, -0.01 and +10: two of its three clips vote class 0, its mean decision (or mean softmax)
    says class 1. Video 1 (class 0) has 2 clips x 2 crops."""
    rng = np.random.default_rng(0)
    train_rows, train_labels = [], []
    for v in range(0, 20, 2):
        offsets = 1 + 0.1 * rng.normal(size=3)
        train_rows += [(v, c, 0, [-offsets[c]]) for c in range(3)] + [(v + 1, c, 0, [offsets[c]]) for c in range(3)]
        train_labels += [0, 1]
    write(tmp_path / "train", feature_set(train_rows, train_labels))
    test_rows = [(0, 0, 0, [-0.01]), (0, 1, 0, [-0.01]), (0, 2, 0, [10.0]),
                 (1, 0, 0, [-1.0]), (1, 0, 1, [-1.1]), (1, 1, 0, [-0.9]), (1, 1, 1, [-1.0])]
    write(tmp_path / "test", feature_set(test_rows, [1, 0], ["s0", "s1"]))
    return tmp_path


def test_svm_averages_decisions_over_each_videos_clips_and_crops(tmp_path):
    """Per-clip majority would call video 0 class 0; the mean decision calls it class 1, as the authors."""
    folder = _one_dimensional_pair(tmp_path)
    pair = load_pair(folder / "train", folder / "test")
    outcome = evaluate_svm(pair, SvmSettings(c_grid=(1.0,), cv_folds=2))
    assert outcome.test_top1 == [100.0]
    assert outcome.test_top5 == [None]  # 2 classes: top-5 says nothing


def test_average_per_video_by_hand():
    scores = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.0, 0.0, 3.0],  # video 2: 3 clip rows
                       [0.2, 0.8, 0.0], [0.0, 0.5, 0.5]])  # video 0: 2 rows
    videos, per_video = average_per_video(scores, np.array([2, 2, 2, 0, 0]))
    assert videos.tolist() == [0, 2]
    np.testing.assert_allclose(per_video, [[0.1, 0.65, 0.25], [0.5, 1 / 6, 1.0]])
    # video 2's rows vote 0, 0, 2; the mean picks 2. Labels are per video, in `videos` order
    assert topk_accuracy(per_video, np.array([1, 2]), 1) == 100.0
    assert topk_accuracy(per_video, np.array([1, 0]), 1) == 50.0
    assert topk_accuracy(per_video, np.array([1, 0]), 5) is None
    six = np.array([[6.0, 5, 4, 3, 2, 1]])  # the label ranks 6th of 6 columns
    assert topk_accuracy(six, np.array([5]), 5) == 0.0
    assert topk_accuracy(six, np.array([5]), 5, classes=5) is None  # only 5 classes were trained: top-5 is moot


def test_linear_probe_averages_softmax_over_clips(tmp_path):
    folder = _one_dimensional_pair(tmp_path)
    outcome = evaluate_linear(load_pair(folder / "train", folder / "test"),
                              LinearSettings(epochs=60, batch_size=64, device="cpu"))  # full batch: symmetric steps
    assert outcome.top1 == 100.0


def _noisy_pair(tmp_path) -> Path:
    """Overlapping classes, so that test accuracy differs between values of C."""
    write(tmp_path / "train", blobs(5, 12, 2, 8, 1.3, seed=3))
    write(tmp_path / "test", blobs(5, 12, 2, 8, 1.3, seed=4, key_prefix="t"))
    return tmp_path


def test_cross_validation_never_reads_test_labels(tmp_path):
    """Shuffled test labels leave the cross-validated C (and every CV score) unchanged, while they do
    move the authors' pick: the test would notice a choice that looked at the test split."""
    folder = _noisy_pair(tmp_path)
    settings = SvmSettings(c_grid=(1e-4, 1e-3, 1e-2, 0.1, 1.0), cv_folds=3)
    pair = load_pair(folder / "train", folder / "test")
    reference = evaluate_svm(pair, settings)
    authors_picks = {reference.authors_index}
    for seed in range(4):
        pair.test.labels = np.random.default_rng(seed).permutation(pair.test.labels)
        shuffled = evaluate_svm(pair, settings)
        assert shuffled.cv_top1 == reference.cv_top1
        assert shuffled.cv_index == reference.cv_index
        authors_picks.add(shuffled.authors_index)
    assert len(authors_picks) > 1


def test_cross_validation_folds_keep_each_video_whole(tmp_path):
    from xkd.eval.svm import cross_validation_folds

    folder = _noisy_pair(tmp_path)
    pair = load_pair(folder / "train", folder / "test")
    folds = cross_validation_folds(pair, 3, seed=0)
    held_videos = [set(pair.train.video_index[held].tolist()) for _, held in folds]
    for (fit, held), videos in zip(folds, held_videos):
        assert not videos & set(pair.train.video_index[fit].tolist())
    assert sorted(v for videos in held_videos for v in videos) == list(range(60))


# ---- linear probe, multi-label --------------------------------------------------------------------

def test_mean_average_precision_by_hand():
    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.7, 0.5], [0.3, 0.9, 0.5], [0.1, 0.4, 0.5]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.uint8)
    # class 0: ranked v0+, v1-, v2+ -> AP (1/1 + 2/3) / 2; class 1: ranked v2-, v1+ -> AP 1/2; class 2 dropped
    value, counted = mean_average_precision(scores, labels)
    assert counted == 2
    assert value == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1 / 2) / 2)


def _multi_label(videos: int, classes: int, dim: int, seed: int, key_prefix: str, absent=()) -> FeatureSet:
    """Each class adds its own direction to a video's feature; class `absent` is never present."""
    directions = np.random.default_rng(99).normal(size=(classes, dim))
    rng = np.random.default_rng(seed)
    labels = (rng.random((videos, classes)) < 0.4).astype(np.uint8)
    labels[:, list(absent)] = 0
    labels[labels.sum(1) == 0, 0] = 1
    rows = [(v, c, 0, labels[v] @ directions + 0.05 * rng.normal(size=dim)) for v in range(videos) for c in range(2)]
    return feature_set(rows, labels, [f"{key_prefix}{v:03d}" for v in range(videos)])


def test_linear_probe_multi_label_scores_map_over_classes_present(tmp_path):
    train = write(tmp_path / "train", _multi_label(60, 4, 12, seed=1, key_prefix="k"), multi_label=True)
    test = write(tmp_path / "test", _multi_label(30, 4, 12, seed=2, key_prefix="t", absent=(3,)), multi_label=True)
    outcome = evaluate_linear(load_pair(train, test), LinearSettings(epochs=40, batch_size=32, device="cpu"))
    assert outcome.map_classes == 3 and outcome.top1 is None
    assert outcome.map == pytest.approx(100.0)


# ---- kNN ---------------------------------------------------------------------------------------------

def _unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_knn_weights_votes_by_similarity():
    """Neighbours of the test point (at 0 degrees): class 0 at 0, class 1 at 60 and 70, class 2 at 180.
    With k=3, T=0.07 the one close neighbour outweighs the two farther ones; with T=10 it does not."""
    train = np.array([_unit(0), _unit(60), _unit(70), _unit(180)]) * 3.0  # not unit length: normalised inside
    labels = np.array([0, 1, 1, 2])
    test = np.array([_unit(0)])
    votes = knn_votes(train, labels, test, k=3, temperature=0.07, num_classes=3)
    expected = [math.exp(1 / 0.07), math.exp(0.5 / 0.07) + math.exp(math.cos(math.radians(70)) / 0.07), 0.0]
    np.testing.assert_allclose(votes.numpy()[0], expected, rtol=1e-4)
    assert knn_top1(train, labels, test, [0], k=3, temperature=0.07) == 100.0
    assert knn_top1(train, labels, test, [0], k=3, temperature=10.0) == 0.0  # the majority wins
    assert knn_top1(torch.tensor(train), torch.tensor(labels), torch.tensor(test), torch.tensor([1]), k=3,
                    temperature=10.0) == 100.0  # torch tensors too
    assert knn_top1(train, labels, test, [0], k=50, temperature=0.07) == 100.0  # k capped at 4


def test_knn_classifies_videos_by_their_mean_feature(tmp_path):
    """A test video whose two clips sit between the classes, one either side of the middle; its mean
    is near class 1, so its vote is class 1 (each clip voting alone would split 1-1)."""
    fs = feature_set([(0, 0, 0, _unit(0)), (0, 0, 1, _unit(2)), (1, 0, 0, _unit(90)), (1, 1, 0, _unit(88))], [0, 1])
    features, labels = video_features(fs)
    np.testing.assert_allclose(features, [_unit(1), _unit(89)], atol=1e-6)
    test = feature_set([(0, 0, 0, _unit(40)), (0, 1, 0, _unit(120))], [1])
    test_features, test_labels = video_features(test)
    assert knn_top1(features, labels, test_features, test_labels, k=2) == 100.0


# ---- audio + video -------------------------------------------------------------------------------

def test_both_modalities_joined_by_key_and_clip(tmp_path):
    video = feature_set([(0, 0, 0, [3, 0]), (0, 0, 1, [0, 4]), (0, 1, 0, [1, 0]), (0, 1, 1, [1, 0]),
                         (1, 0, 0, [0, 2]), (1, 0, 1, [0, 5]), (1, 1, 0, [2, 0]), (1, 1, 1, [0, 2])],
                        [0, 1], ["a", "b"])
    # the audio file lists the videos the other way round, and its rows out of order
    audio = feature_set([(1, 1, 0, [0, 0, 9]), (0, 0, 0, [0, 2, 0]), (1, 0, 0, [5, 0, 0]), (0, 1, 0, [0, 0, 1])],
                        [1, 0], ["b", "a"])
    write(tmp_path, video, "video")
    write(tmp_path, audio, "audio")
    joined = concatenate_modalities(*(load_pair(tmp_path, tmp_path, m).train for m in ("video", "audio")))
    # video: each crop L2-normalised, then the clip's crops averaged; audio: L2-normalised
    expected = {("a", 0): [0.5, 0.5, 1, 0, 0], ("a", 1): [1, 0, 0, 0, 1],
                ("b", 0): [0, 1, 0, 1, 0], ("b", 1): [0.5, 0.5, 0, 0, 1]}
    got = {(str(joined.keys[v]), int(c)): row
           for v, c, row in zip(joined.video_index, joined.clip_index, joined.features)}
    assert set(got) == set(expected)
    for pair, row in expected.items():
        np.testing.assert_allclose(got[pair], row, atol=1e-6, err_msg=str(pair))
    assert joined.labels.tolist() == [0, 1] and joined.dim == 5
    assert load_pair(tmp_path, tmp_path, "both").train.dim == 5


def test_both_modalities_refuse_rows_or_labels_that_do_not_match(tmp_path):
    video = feature_set([(0, 0, 0, [1, 0]), (0, 1, 0, [1, 0]), (1, 0, 0, [0, 1])], [0, 1], ["a", "b"])
    audio = feature_set([(0, 0, 0, [1]), (1, 0, 0, [1])], [0, 1], ["a", "b"])  # lacks clip 1 of "a"
    video.path, audio.path = "f/video.npz", "f/audio.npz"
    with pytest.raises(FeatureFileError, match=r"key 'a' clip 1 only in .*video\.npz"):
        concatenate_modalities(video, audio)
    relabelled = feature_set([(0, 0, 0, [1]), (0, 1, 0, [1]), (1, 0, 0, [1])], [0, 0], ["a", "b"])
    relabelled.path = "f/audio.npz"
    with pytest.raises(FeatureFileError,
                       match="f/video.npz and f/audio.npz: key 'b' has label 1 in the video file but 0 in the audio"):
        concatenate_modalities(video, relabelled)


# ---- results and report ---------------------------------------------------------------------------

def test_command_writes_result_named_from_features_json(run_cli, tmp_path, capsys):
    train = write(tmp_path / "train", blobs(6, 6, 2, 8, 0.05, seed=1))
    test = write(tmp_path / "test", blobs(6, 3, 2, 8, 0.05, seed=2, key_prefix="t"))
    assert run_cli("eval", "svm", train, test, "--c-grid", "0.01,1", "--cv-folds", "2") == 0
    out = capsys.readouterr().out
    assert "SVM, C by cross-validation on TRAIN" in out and "authors (C picked on test)" in out
    results = read_results(test / "result-svm-video.json")
    assert [r.protocol for r in results] == ["svm-cv", "svm-authors"]
    cv = results[0]
    assert (cv.dataset, cv.fold, cv.backbone, cv.config, cv.modality) == ("ucf101", "2", BACKBONE, "xkd_tiny",
                                                                          "video")
    assert (cv.n_train, cv.n_test, cv.c_grid, cv.top1) == (36, 18, [0.01, 1.0], 100.0)
    assert cv.chosen_c in cv.c_grid and cv.settings["cv_folds"] == 2
    out_path = tmp_path / "knn.json"
    assert run_cli("eval", "knn", train, test / "video.npz", "--dataset", "toy", "--fold", "7", "--out", out_path) == 0
    knn = read_results(out_path)[0]
    assert (knn.protocol, knn.dataset, knn.fold, knn.top1, knn.settings["k"]) == ("knn", "toy", "7", 100.0, 20)


def test_report_collates_folds_into_mean_and_std(run_cli, tmp_path, capsys):
    paths = []
    for fold, top1 in (("1", 70.0), ("2", 80.0), ("3", 90.0)):
        result = EvalResult(dataset="ucf101", fold=fold, protocol="svm-cv", modality="video", top1=top1,
                            backbone="xkd", config="xkd_tiny")
        authors = EvalResult(dataset="ucf101", fold=fold, protocol="svm-authors", modality="video", top1=top1 + 1,
                             backbone="xkd", config="xkd_tiny")
        paths.append(write_results(tmp_path / f"fold{fold}.json", [result, authors]))
    fsd = EvalResult(dataset="fsd50k", fold=None, protocol="linear", modality="audio", map=45.25, backbone="xkd",
                     config="xkd_tiny")
    random_init = EvalResult(dataset="ucf101", fold="1", protocol="svm-cv", modality="video", top1=20.0,
                             backbone="random-init xkd_tiny")
    paths += [write_results(tmp_path / "fsd.json", [fsd]), write_results(tmp_path / "random.json", [random_init])]
    table_path = tmp_path / "table.md"
    assert run_cli("eval", "report", *paths, "--out", table_path) == 0
    table = table_path.read_text()
    assert table in capsys.readouterr().out
    lines = table.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["backbone", "ucf101 video svm-cv (top-1)", "ucf101 video svm-authors (top-1)",
                      "fsd50k audio linear (mAP)"]
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:4])}
    assert rows["xkd (xkd_tiny)"] == ["80.0 ± 10.0 (n=3)", "81.0 ± 10.0 (n=3)", "45.2"]
    assert rows["random-init xkd_tiny"] == ["20.0", "–", "–"]
    # the same fold twice is a clash, named with both files
    duplicate = write_results(tmp_path / "again.json", [EvalResult(dataset="ucf101", fold="2", protocol="svm-cv",
                                                                   modality="video", top1=1.0, backbone="xkd",
                                                                   config="xkd_tiny")])
    assert run_cli("eval", "report", *paths, duplicate) == 2
    err = capsys.readouterr().err
    assert "again.json" in err and "fold2.json" in err


# ---- bad inputs: one message naming the file, exit 2 -------------------------------------------

@pytest.fixture
def good(tmp_path) -> dict[str, Path]:
    return {"train": write(tmp_path / "train", blobs(3, 4, 2, 8, 0.1, seed=1)),
            "test": write(tmp_path / "test", blobs(3, 2, 2, 8, 0.1, seed=2, key_prefix="t"))}


def _bad_test_folder(tmp_path, kind: str) -> tuple[Path, str]:
    """A TEST folder with one fault, and the words the refusal must contain."""
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "missing":
        return tmp_path / "nowhere", "nowhere: not found"
    if kind == "missing_npz":
        write(folder, blobs(3, 2, 2, 8, 0.1, seed=2), "audio")
        return folder / "video.npz", "video.npz: feature file not found"
    if kind == "empty":
        (folder / "video.npz").write_bytes(b"")
        return folder, "video.npz: feature file is empty"
    if kind == "width":
        return write(folder, blobs(3, 2, 2, 6, 0.1, seed=2)), "6-d features"
    if kind == "backbone":
        return write(folder, blobs(3, 2, 2, 8, 0.1, seed=2), backbones={**WEIGHTS, "video": {"sha256": "c" * 64}}), \
            "another backbone"
    if kind == "absent_class":
        return write(folder, blobs(4, 2, 2, 8, 0.1, seed=2), classes=None), "never occur in the training split"
    if kind == "unlabelled":
        fs = blobs(3, 2, 2, 8, 0.1, seed=2)
        fs.labels[1] = -1
        return write(folder, fs), "1 of 6 videos are unlabelled"
    if kind == "multi_label":
        return write(folder, _multi_label(6, 3, 8, seed=2, key_prefix="t"), multi_label=True), \
            "multi-label features, but"
    raise AssertionError(kind)


@pytest.mark.parametrize("command", ["svm", "linear", "knn"])
@pytest.mark.parametrize("kind", ["missing", "missing_npz", "empty", "width", "backbone", "absent_class", "unlabelled",
                                  "multi_label"])
def test_bad_inputs_are_refused_naming_the_file(run_cli, tmp_path, capsys, good, command, kind):
    test, words = _bad_test_folder(tmp_path, kind)
    assert run_cli("eval", command, good["train"], test, "--out", tmp_path / "r.json") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"xkd eval {command}: ") and len(err.splitlines()) == 1, err
    assert words in err and (kind == "missing" or str(test).rstrip("/").split("/")[-1] in err), err
    assert not (tmp_path / "r.json").exists()


def test_classifiers_that_need_single_labels_refuse_multi_label_sets(run_cli, tmp_path, capsys):
    train = write(tmp_path / "train", _multi_label(12, 3, 8, seed=1, key_prefix="k"), multi_label=True)
    test = write(tmp_path / "test", _multi_label(6, 3, 8, seed=2, key_prefix="t"), multi_label=True)
    for command in ("svm", "knn"):
        assert run_cli("eval", command, train, test) == 2
        err = capsys.readouterr().err
        assert "multi-label" in err and "xkd eval linear" in err and str(train) in err


def test_both_refuses_mismatched_modalities_through_the_cli(run_cli, tmp_path, capsys, good):
    audio = blobs(3, 4, 1, 4, 0.1, seed=5)  # one clip per video where the video file has two
    write(good["train"], audio, "audio")
    write(good["test"], blobs(3, 2, 2, 4, 0.1, seed=6, key_prefix="t"), "audio")
    assert run_cli("eval", "svm", good["train"], good["test"], "--modality", "both") == 2
    assert "(key, clip) rows do not match" in capsys.readouterr().err
    assert run_cli("eval", "knn", good["test"], good["test"], "--modality", "both", "--out", tmp_path / "r.json") == 0
