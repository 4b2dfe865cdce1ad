"""The evaluation sets the shard tool lacked: ESC-50 folds (audio only, the official class numbers),
FSD50K (several labels per clip) and Kinetics-Sound (a class list over Kinetics-400), each from a
tiny copy of the official layout, checked through DALI's evaluation pipeline and the webdataset
library; bad metadata, missing files and unknown labels handled as the shard tool handles bad input."""
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import webdataset as wds

from dali_pipelines.config import DataConfig
from dali_pipelines.evaluation import eval_loader
from shards.class_lists import read_class_list
from shards.format import load_manifest
from shards.inputs import load_inputs
from shards.recipes import write_manifest

ESC50_CLASSES = {"dog": 0, "chirping_birds": 14, "chainsaw": 41}  # category -> official target
FSD50K_VOCABULARY = ["Bark", "Dog", "Animal", "Music"]  # index = class id
FSD50K_DEV = [("101", "Bark,Dog,Animal", "train", 2.0), ("102", "Music", "train", 0.6),
              ("103", "Dog,Animal", "val", 1.5), ("104", "Animal,Music", "train", 3.0)]
FSD50K_EVAL = [("201", "Music,Bark", 1.0), ("202", "Animal", 2.5)]


def write_tone(path: Path, seconds: float, rate: int = 44100, frequency: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tone = 0.3 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)
    soundfile.write(path, tone.astype(np.float32), rate)


def make_esc50(root: Path) -> Path:
    """ESC-50's layout: meta/esc50.csv and audio/{fold}-{source}-{take}-{target}.wav, 5 s at 44.1 kHz."""
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for category, target in ESC50_CLASSES.items():
            name = f"{fold}-{100 + target}-A-{target}.wav"
            write_tone(root / "audio" / name, 5.0, frequency=200 + 10 * target + fold)
            lines.append(f"{name},{fold},{target},{category},False,{100 + target},A")
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")
    return root


def make_fsd50k(root: Path, eval_rows=FSD50K_EVAL) -> Path:
    """FSD50K's layout: FSD50K.ground_truth/{vocabulary,dev,eval}.csv (vocabulary without a header,
    labels comma-separated in quoted cells), clips of 0.3-30 s in FSD50K.{dev,eval}_audio/."""
    truth = root / "FSD50K.ground_truth"
    truth.mkdir(parents=True)
    (truth / "vocabulary.csv").write_text("".join(f"{index},{name},/m/{index:04d}\n"
                                                  for index, name in enumerate(FSD50K_VOCABULARY)))
    (truth / "dev.csv").write_text("fname,labels,mids,split\n" + "".join(
        f'{fname},"{labels}","/m/x",{split}\n' for fname, labels, split, _ in FSD50K_DEV))
    (truth / "eval.csv").write_text("fname,labels,mids\n" + "".join(
        f'{fname},"{labels}","/m/x"\n' for fname, labels, _ in eval_rows))
    for fname, _, _, seconds in FSD50K_DEV:
        write_tone(root / "FSD50K.dev_audio" / f"{fname}.wav", seconds, frequency=300 + int(fname))
    for fname, _, seconds in eval_rows:
        write_tone(root / "FSD50K.eval_audio" / f"{fname}.wav", seconds, frequency=300 + int(fname))
    return root


def create(run_cli, source, out, *extra) -> dict:
    assert run_cli("shards", "create", source, out, "--quiet", "--workers", "2", "--audio-only", *extra) == 0
    return load_manifest(str(out))


def dali_labels(shards: Path) -> dict[str, tuple[int, tuple[int, ...]]]:
    """key -> (label, label set), every sample read once by the DALI evaluation pipeline."""
    found = {}
    for batch in eval_loader(str(shards), DataConfig(batch_size=4, num_threads=1, eval_clips=1), modality="audio"):
        assert batch.audio_clips.shape[0] == len(batch.key) == len(batch.label_sets)
        for key, label, label_set in zip(batch.key, batch.label.tolist(), batch.label_sets):
            assert key not in found
            found[key] = (label, label_set)
    return found


def webdataset_samples(shards: Path) -> dict[str, dict]:
    """key -> the sample as the webdataset library decodes it (its default decoders)."""
    tars = [str(path) for path in sorted(shards.glob("*.tar"))]
    return {sample["__key__"]: sample for sample in wds.WebDataset(tars, shardshuffle=False).decode()}


# ------------------------------------------------------------------------------------------------
# ESC-50: five folds, audio only, the official class numbers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def esc50(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("esc50")
    make_esc50(root / "ESC-50-master")
    write_manifest("esc50", root / "ESC-50-master", root / "lists")
    return root


def target_of(key: str) -> int:
    """ESC-50 file names end with the class number: {fold}-{source}-{take}-{target}."""
    return int(key.rsplit("-", 1)[1])


def test_esc50_fold_gives_disjoint_train_and_test_with_the_official_class_numbers(esc50, run_cli):
    test = create(run_cli, esc50 / "lists" / "inputs.csv", esc50 / "f2_test", "--fold", "2", "--split", "test")
    train = create(run_cli, esc50 / "lists" / "inputs.csv", esc50 / "f2_train", "--fold", "2", "--split", "train")
    assert test["classes"] == train["classes"] == ESC50_CLASSES and not test["has_video"]
    assert not test["multi_label"] and test["members"] == ["flac", "json", "lengths", "cls"]
    test_labels, train_labels = dali_labels(esc50 / "f2_test"), dali_labels(esc50 / "f2_train")
    assert sorted(test_labels) == sorted(f"2-{100 + t}-A-{t}" for t in ESC50_CLASSES.values())
    assert len(train_labels) == 12 and all(not key.startswith("2-") for key in train_labels)
    for key, (label, label_set) in {**test_labels, **train_labels}.items():
        assert label == target_of(key) and label_set == (label,)
    for key, sample in webdataset_samples(esc50 / "f2_test").items():
        assert sample["cls"] == target_of(key) == ESC50_CLASSES[sample["json"]["label"]]


def test_esc50_row_naming_a_missing_file_is_rejected_by_name(tmp_path, run_cli):
    make_esc50(tmp_path / "ESC-50-master")
    missing = tmp_path / "ESC-50-master" / "audio" / "3-114-A-14.wav"
    missing.unlink()
    write_manifest("esc50", tmp_path / "ESC-50-master", tmp_path / "lists")
    manifest = create(run_cli, tmp_path / "lists" / "inputs.csv", tmp_path / "out", "--fold", "3", "--split", "test")
    assert manifest["samples"] == 2 and manifest["rejected_counts"] == {"unreadable": 1}
    assert manifest["rejected"][0]["path"] == str(missing) and "No such file" in manifest["rejected"][0]["reason"]


def test_fold_selection_refuses_what_it_cannot_do(esc50, run_cli, capsys):
    source = esc50 / "lists" / "inputs.csv"
    for extra, message in ((["--fold", "2"], "add --split test"),
                           (["--fold", "7", "--split", "test"], "has folds 1, 2, 3, 4, 5")):
        assert run_cli("shards", "create", source, esc50 / "never", "--audio-only", *extra) == 2
        assert message in capsys.readouterr().err
    assert not (esc50 / "never").exists()


def test_bad_esc50_metadata_is_exit_2_naming_the_file(tmp_path, run_cli, capsys):
    meta = tmp_path / "ESC-50-master" / "meta" / "esc50.csv"
    meta.parent.mkdir(parents=True)
    meta.write_text("filename,fold,category\n1-1-A-0.wav,1,dog\n")
    assert run_cli("shards", "manifest", "esc50", tmp_path / "ESC-50-master", tmp_path / "lists") == 2
    assert f"{meta}: needs the columns filename, fold, target, category" in capsys.readouterr().err
    meta.write_text("filename,fold,target,category\n1-1-A-0.wav,1,0,dog\n1-2-A-1.wav,1,1,dog\n")
    assert run_cli("shards", "manifest", "esc50", tmp_path / "ESC-50-master", tmp_path / "lists") == 2
    assert f"{meta}:3: category 'dog' has targets 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "lists" / "inputs.csv").exists()


# ------------------------------------------------------------------------------------------------
# FSD50K: several labels per clip
# ------------------------------------------------------------------------------------------------


def expected_ids(labels: str) -> tuple[int, ...]:
    return tuple(sorted(FSD50K_VOCABULARY.index(name) for name in labels.split(",")))


@pytest.fixture(scope="module")
def run_cli_module():
    from xkd.commands import main

    return lambda *args: main([str(a) for a in args])


@pytest.fixture(scope="module")
def fsd50k(tmp_path_factory, run_cli_module) -> Path:
    root = tmp_path_factory.mktemp("fsd50k")
    make_fsd50k(root / "FSD50K")
    write_manifest("fsd50k", root / "FSD50K", root / "lists")
    for split in ("train", "eval"):
        assert run_cli_module("shards", "create", root / "lists" / "inputs.csv", root / split, "--quiet",
                              "--audio-only", "--split", split, "--min-duration", "0", "--workers", "2") == 0
    return root


def test_fsd50k_label_sets_reach_the_evaluation_batches(fsd50k):
    manifest = load_manifest(str(fsd50k / "train"))
    assert manifest["multi_label"] and manifest["classes"] == {n: i for i, n in enumerate(FSD50K_VOCABULARY)}
    assert manifest["members"] == ["flac", "json", "lengths", "labels"] and manifest["samples"] == 3
    train = dali_labels(fsd50k / "train")
    assert train == {f"dev_{fname}": (-1, expected_ids(labels)) for fname, labels, split, _ in FSD50K_DEV
                     if split == "train"}  # the 0.6 s clip is kept with --min-duration 0
    assert dali_labels(fsd50k / "eval") == {f"eval_{fname}": (-1, expected_ids(labels))
                                            for fname, labels, _ in FSD50K_EVAL}


def test_fsd50k_members_read_with_the_webdataset_library(fsd50k, run_cli):
    samples = webdataset_samples(fsd50k / "eval")
    for fname, labels, _ in FSD50K_EVAL:
        sample = samples[f"eval_{fname}"]
        ids = expected_ids(labels)
        assert sample["labels"] == ",".join(map(str, ids)).encode() and "cls" not in sample
        assert sample["json"]["label_ids"] == list(ids) and sample["json"]["label_id"] is None
        assert sample["json"]["labels"] == [FSD50K_VOCABULARY[i] for i in ids]
    assert run_cli("shards", "verify", fsd50k / "eval") == 0


def test_verify_finds_a_labels_member_that_disagrees_with_the_json(fsd50k, tmp_path, run_cli, capsys):
    copy = tmp_path / "eval"
    copy.mkdir()
    for path in (fsd50k / "eval").iterdir():
        if path.is_file():
            copy.joinpath(path.name).write_bytes(path.read_bytes())
    tar = next(copy.glob("*.tar"))
    with tarfile.open(tar) as archive:
        member = next(m for m in archive if m.name.endswith(".labels"))
    data = bytearray(tar.read_bytes())
    data[member.offset_data] = ord("9")  # "0,..." -> "9,...", same length
    tar.write_bytes(bytes(data))
    assert run_cli("shards", "verify", copy) == 1
    assert f"{member.name.split('.')[0]}.labels" in capsys.readouterr().out


def test_fsd50k_unknown_label_is_rejected_naming_the_file_and_the_label(tmp_path, run_cli):
    make_fsd50k(tmp_path / "FSD50K", eval_rows=FSD50K_EVAL + [("203", "Animal,Meow", 1.0)])
    write_manifest("fsd50k", tmp_path / "FSD50K", tmp_path / "lists")
    manifest = create(run_cli, tmp_path / "lists" / "inputs.csv", tmp_path / "out", "--split", "eval",
                      "--min-duration", "0")
    assert manifest["samples"] == 2 and manifest["rejected_counts"] == {"label": 1}
    rejected = manifest["rejected"][0]
    assert rejected["path"].endswith("FSD50K.eval_audio/203.wav") and "'Meow'" in rejected["reason"]


def test_dev_split_selects_train_and_val_together(fsd50k):
    dev = load_inputs(fsd50k / "lists" / "inputs.csv", split="train,val", extensions={".wav"})
    assert dev.multi_label and sorted(item.key for item in dev.items) == [f"dev_{f}" for f, *_ in FSD50K_DEV]
    assert dev.items[0].labels == ("Bark", "Dog", "Animal") and dev.items[0].label is None


# ------------------------------------------------------------------------------------------------
# Kinetics-Sound: a class list over Kinetics-400
# ------------------------------------------------------------------------------------------------

KINETICS_CLASSES = ["abseiling", "playing bagpipes", "tap dancing", "zumba"]


def make_kinetics(root: Path) -> Path:
    """The CVDF mirror's layout: annotations/{train,val}.csv, clips YOUTUBEID_START_END.mp4 in train/
    and val/ (only listed here: the recipe and the selection open no media)."""
    (root / "annotations").mkdir(parents=True)
    for split, count in (("train", 3), ("val", 1)):
        lines = ["label,youtube_id,time_start,time_end,split"]
        for label in KINETICS_CLASSES:
            for index in range(count):
                youtube_id = f"{label[:3]}{split[0]}{index}-x_Y"
                lines.append(f"{label},{youtube_id},{10 * index},{10 * index + 10},{split}")
                clip = root / split / f"{youtube_id}_{10 * index:06d}_{10 * index + 10:06d}.mp4"
                clip.parent.mkdir(parents=True, exist_ok=True)
                clip.write_bytes(b"x")
        (root / "annotations" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_classes_from_keeps_the_listed_classes_with_the_listed_ids(tmp_path):
    make_kinetics(tmp_path / "k400")
    written = write_manifest("kinetics", tmp_path / "k400", tmp_path / "lists")
    assert written["rows"] == 16 and written["missing"] == 0
    (tmp_path / "ks.txt").write_text("# two audible classes\ntap_dancing\nPlaying Bagpipes  # any spelling\n")
    train = load_inputs(tmp_path / "lists" / "inputs.csv", split="train", classes_from=str(tmp_path / "ks.txt"))
    assert train.classes == {"tap_dancing": 0, "Playing Bagpipes": 1}
    assert sorted((item.label, item.key) for item in train.items) == [
        ("Playing Bagpipes", f"plat{i}-x_Y_{10 * i:06d}_{10 * i + 10:06d}") for i in range(3)] + [
        ("tap_dancing", f"tapt{i}-x_Y_{10 * i:06d}_{10 * i + 10:06d}") for i in range(3)]
    full = load_inputs(tmp_path / "lists" / "inputs.csv", split="val")
    assert full.classes == {name: index for index, name in enumerate(KINETICS_CLASSES)} and len(full.items) == 4


def test_kinetics_sound_list_through_the_evaluation_pipeline(tmp_path, run_cli):
    """Class folders spelled with underscores (a common Kinetics dump), the shipped list."""
    names = read_class_list("kinetics_sound_32")[1]
    chosen = [names[3], names[28], "zumba"]  # chopping wood, tap dancing, and a class outside the list
    for index, label in enumerate(chosen):
        write_tone(tmp_path / "k400" / label.replace(" ", "_") / f"clip{index}.wav", 1.5, rate=16000)
    with pytest.raises(ValueError, match="30 of its 32 classes label no input"):
        load_inputs(tmp_path / "k400", classes_from="kinetics_sound_32", extensions={".wav"})
    two = tmp_path / "two.txt"
    two.write_text(f"{names[28]}\n{names[3]}\n")
    manifest = create(run_cli, tmp_path / "k400", tmp_path / "out", "--classes-from", str(two))
    assert manifest["classes"] == {names[28]: 0, names[3]: 1}
    assert dali_labels(tmp_path / "out") == {"chopping_wood__clip0": (1, (1,)), "tap_dancing__clip1": (0, (0,))}


def test_shipped_kinetics_sound_list_has_32_distinct_kinetics_names():
    path, names = read_class_list("kinetics_sound_32")
    assert path.name == "kinetics_sound_32.txt" and len(names) == 32 == len({n.casefold() for n in names})
    assert all(name == name.strip().lower() and "_" not in name for name in names)


def test_a_class_list_naming_an_absent_class_is_exit_2(tmp_path, run_cli, capsys):
    make_kinetics(tmp_path / "k400")
    write_manifest("kinetics", tmp_path / "k400", tmp_path / "lists")
    (tmp_path / "ks.txt").write_text("zumba\nplaying theremin\n")
    assert run_cli("shards", "create", tmp_path / "lists" / "inputs.csv", tmp_path / "out",
                   "--classes-from", tmp_path / "ks.txt") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ks.txt'}: 1 of its 2 classes label no input" in err and "'playing theremin'" in err
    assert run_cli("shards", "create", tmp_path / "lists" / "inputs.csv", tmp_path / "out",
                   "--classes-from", "no_such_list") == 2
    assert "kinetics_sound_32" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_fsd50k_features_carry_multi_hot_labels(fsd50k, run_cli, tmp_path):
    from xkd.eval.feature_file import load_features

    assert run_cli("eval", "features", "--random-init", "xkd_micro", fsd50k / "eval", tmp_path / "features",
                   "--clips", "2") == 0
    features = load_features(tmp_path / "features")  # audio only: the one modality there
    assert features.multi_label and features.labels.dtype == np.uint8
    expected = {f"eval_{fname}": expected_ids(labels) for fname, labels, _ in FSD50K_EVAL}
    for key, row in zip(features.keys, features.labels):
        assert tuple(np.flatnonzero(row)) == expected[key] and len(row) == len(FSD50K_VOCABULARY)
    assert json.loads((tmp_path / "features" / "features.json").read_text())["multi_label"] is True
