"""Finding inputs: folders, manifests, labels, classes.json, official split lists, keys."""
import json

import pytest

from shards.inputs import InputError, load_inputs, sanitize_key


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_labels_from_class_folders(tmp_path):
    touch(tmp_path / "Archery" / "v_Archery_g01_c01.avi")
    touch(tmp_path / "Basketball" / "v_Basketball_g01_c01.avi")
    touch(tmp_path / "Basketball" / "readme.txt")  # not a video extension
    touch(tmp_path / ".hidden" / "x.mp4")
    inputs = load_inputs(tmp_path)
    assert [(i.rel, i.label) for i in inputs.items] == [
        ("Archery/v_Archery_g01_c01.avi", "Archery"), ("Basketball/v_Basketball_g01_c01.avi", "Basketball")]
    assert inputs.classes == {"Archery": 0, "Basketball": 1}
    assert load_inputs(tmp_path, labels="none").classes == {}


def test_flat_folder_has_no_labels_and_folder_labels_demand_class_folders(tmp_path):
    touch(tmp_path / "a.mp4")
    assert load_inputs(tmp_path).items[0].label is None
    with pytest.raises(InputError, match="class folder"):
        load_inputs(tmp_path, labels="folder")


def test_classes_json_maps_names_and_rejects_unknown_labels(tmp_path):
    touch(tmp_path / "cat" / "a.mp4")
    touch(tmp_path / "dog" / "b.mp4")
    (tmp_path / "classes.json").write_text(json.dumps({"dog": 7}))
    inputs = load_inputs(tmp_path)
    assert inputs.classes == {"dog": 7}
    assert [i.rel for i in inputs.items] == ["dog/b.mp4"]
    assert inputs.rejected[0].category == "label" and "cat" in inputs.rejected[0].reason


def test_csv_and_jsonl_manifests(tmp_path):
    touch(tmp_path / "clips" / "a.mp4")
    (tmp_path / "m.csv").write_text("path,label,key,split\nclips/a.mp4,run,mykey,train\nclips/b.mp4,jump,,val\n")
    inputs = load_inputs(tmp_path / "m.csv")
    assert [(i.key, i.label) for i in inputs.items] == [("mykey", "run"), ("clips__b", "jump")]
    assert inputs.items[0].path == str(tmp_path / "clips" / "a.mp4")
    assert [i.label for i in load_inputs(tmp_path / "m.csv", split="val").items] == ["jump"]
    (tmp_path / "m.jsonl").write_text('{"path": "clips/a.mp4", "label": 3}\n\n{"path": "/abs/x.webm"}\n')
    inputs = load_inputs(tmp_path / "m.jsonl")
    assert [(i.path, i.label) for i in inputs.items] == [("/abs/x.webm", None), (str(tmp_path / "clips/a.mp4"), "3")]
    assert inputs.classes == {"3": 3}  # numeric labels are ids already


def test_bad_manifests_are_refused_with_the_reason(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.mp4,x\n")
    with pytest.raises(InputError, match="'path' column"):
        load_inputs(tmp_path / "m.csv")
    (tmp_path / "m.jsonl").write_text('{"path": "a.mp4"}\n{broken\n')
    with pytest.raises(InputError, match="m.jsonl:2"):
        load_inputs(tmp_path / "m.jsonl")
    with pytest.raises(InputError, match="no such"):
        load_inputs(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="folder or a .csv/.jsonl"):
        load_inputs(tmp_path / "notes.txt")


def test_ucf101_split_lists_select_videos(tmp_path):
    videos = tmp_path / "UCF-101"
    for name in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
                 "Archery/v_Archery_g08_c02.avi"):
        touch(videos / name)
    (tmp_path / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nArchery/v_Archery_g08_c02.avi 2\r\n")
    (tmp_path / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nArchery/v_gone.avi\n")
    train = load_inputs(videos, split_lists=[str(tmp_path / "trainlist01.txt")])
    assert [i.key for i in train.items] == ["ApplyEyeMakeup__v_ApplyEyeMakeup_g08_c01", "Archery__v_Archery_g08_c02"]
    test = load_inputs(videos, split_lists=[str(tmp_path / "testlist01.txt")])
    assert [i.rel for i in test.items] == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"]
    assert test.rejected[0].category == "missing" and "v_gone" in test.rejected[0].path
    assert train.classes == test.classes == {"ApplyEyeMakeup": 0, "Archery": 1}


def test_hmdb51_split_files_pick_train_or_test(tmp_path):
    videos = tmp_path / "hmdb51"
    for name in ("brush_hair/a.avi", "brush_hair/b.avi", "brush_hair/c.avi"):
        touch(videos / name)
    split_file = tmp_path / "brush_hair_test_split1.txt"
    split_file.write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    assert [i.rel for i in load_inputs(videos, split_lists=[str(split_file)], split="train").items] == ["brush_hair/a.avi"]
    assert [i.rel for i in load_inputs(videos, split_lists=[str(split_file)], split="test").items] == ["brush_hair/b.avi"]
    with pytest.raises(InputError, match="--split train or --split test"):
        load_inputs(videos, split_lists=[str(split_file)])


def test_keys_are_valid_unique_webdataset_keys(tmp_path):
    touch(tmp_path / "a b" / "clip.v2.mp4")
    touch(tmp_path / "a b" / "clip.v2.mkv")  # same key once the extension goes
    touch(tmp_path / "x" / ("long" * 40 + ".mp4"))
    keys = [i.key for i in load_inputs(tmp_path).items]
    assert len(set(keys)) == 3
    for key in keys:
        assert "." not in key and " " not in key and "/" not in key and len(key) <= 90
    assert sanitize_key("Class/v_x.y.avi") == "Class__v_x_y"


def test_duplicate_manifest_rows_are_rejected(tmp_path):
    (tmp_path / "m.csv").write_text("path\na.mp4\na.mp4\n")
    inputs = load_inputs(tmp_path / "m.csv")
    assert len(inputs.items) == 1 and inputs.rejected[0].category == "duplicate"
