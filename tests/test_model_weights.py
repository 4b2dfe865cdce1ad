"""Importing the authors' released backbones and the backbone file format."""
import argparse
import json
from pathlib import Path

import pytest
import torch

from xkd.commands import import_weights as import_weights_command
from xkd.backbone_io import backbone_paths, load_backbone, save_backbone
from xkd.config import load_config
from xkd.models import build_encoder
from xkd.weights import (WeightImportError, convert_official_backbone, detect_modality, select_part,
                         unwrap_state_dict)

# key -> shape listing of the authors' released backbones (docs/method.md §Backbone files)
REFERENCE = Path(__file__).resolve().parent / "data" / "xkd_official_backbone_keys.json"

# The authors' names for our keys, written out independently of xkd.weights.
TO_OFFICIAL = {"video": [("patch_embed.", "cuboid_embed."), ("pos_embed", "enc_pos_embed"), ("blocks.", "encoder.blocks."),
                         ("norm.", "encoder_norm.")],
               "audio": [("patch_embed.", "patch_embed."), ("pos_embed", "enc_pos_embed"), ("blocks.", "encoder.blocks."),
                         ("norm.", "encoder_norm.")]}


def reference_listings():
    data = json.loads(REFERENCE.read_text())
    listings = [(name, data[name]) for name in ("vid_student", "vid_teacher", "aud_student", "aud_teacher")]
    for variant, files in data["_variants"].items():
        listings += [(f"{variant}/{name}", keys) for name, keys in files.items()]
    return listings


def meta_state(listing):
    return {key: torch.empty(shape, device="meta") for key, shape in listing.items()}


def to_official(state, modality):
    out = {}
    for key, value in state.items():
        for ours, theirs in TO_OFFICIAL[modality]:
            if key.startswith(ours):
                key = theirs + key[len(ours):]
                break
        out[key] = value
    return out


@pytest.mark.parametrize("name,listing", reference_listings(), ids=[n for n, _ in reference_listings()])
def test_every_key_and_shape_of_the_released_backbones_maps(name, listing):
    assert len(listing) == 138
    modality, model_cfg, ours = convert_official_backbone(meta_state(listing))
    assert modality == ("video" if "vid_" in name else "audio")
    assert (model_cfg.encoder.embed_dim, model_cfg.encoder.depth, model_cfg.encoder.num_heads) == (768, 12, 12)
    with torch.device("meta"):
        expected = build_encoder(modality, model_cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert sum(v.numel() for v in ours.values()) == (87_691_008 if modality == "video" else 85_509_888)


def test_mismatches_are_listed_by_their_original_names():
    state = meta_state(dict(reference_listings())["vid_teacher"])
    del state["encoder_norm.bias"], state["encoder.blocks.11.attn.proj.weight"]
    state["head.weight"] = torch.empty(10, 768, device="meta")
    state["enc_pos_embed"] = torch.empty(1, 561, 768, device="meta")
    with pytest.raises(WeightImportError) as err:
        convert_official_backbone(state)
    message = str(err.value)
    assert "missing (2): encoder.blocks.11.attn.proj.weight, encoder_norm.bias" in message
    assert "unexpected (1): head.weight" in message
    assert "wrong shape (1): enc_pos_embed: file (1, 561, 768) vs model (1, 393, 768)" in message


def test_wrappers_and_module_prefix_are_peeled():
    tensor = torch.zeros(1)
    assert unwrap_state_dict({"state_dict": {"module.cls_token": tensor}}) == {"cls_token": tensor}
    assert unwrap_state_dict({"model": {"module.module.a": tensor}, "epoch": 3}) == {"a": tensor}
    with pytest.raises(WeightImportError, match="no state_dict"):
        unwrap_state_dict({"epoch": 3})
    with pytest.raises(WeightImportError, match="--part"):
        select_part({"vid_teacher.backbone.cls_token": tensor}, None)
    assert select_part({"vid_teacher.backbone.cls_token": tensor, "vid_teacher.head.x": tensor}, "vid_teacher") == {
        "cls_token": tensor}
    with pytest.raises(WeightImportError, match="video from audio"):
        detect_modality({"blocks.0.x": tensor})


def run_import(argv):
    parser = argparse.ArgumentParser()
    import_weights_command.register(parser.add_subparsers())
    args = parser.parse_args(["import-weights", *argv])
    return args.func(args)


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_import_weights_command_round_trip(tmp_path, modality, capsys):
    """A fake authors' file (wrapped, `module.` prefixed) at the paper's geometry with a narrow model."""
    torch.manual_seed(0)
    model_cfg = load_config("xkd_base", ["model.encoder.embed_dim=64", "model.encoder.depth=2",
                                         "model.encoder.num_heads=4"]).model
    original = build_encoder(modality, model_cfg)
    official = {f"module.{k}": v for k, v in to_official(original.state_dict(), modality).items()}
    source = tmp_path / "vid_teacher.pth.tar"
    torch.save({"state_dict": official}, source)

    assert run_import([str(source), str(tmp_path / "out" / "backbone"), "--num-heads", "4"]) == 0
    assert f"{modality} backbone" in capsys.readouterr().out
    weights, meta_path = backbone_paths(tmp_path / "out" / "backbone")
    assert weights.exists() and meta_path.exists()
    assert not [p for p in weights.parent.iterdir() if p.name.startswith(".")]  # no temporary files left

    encoder, meta = load_backbone(tmp_path / "out" / "backbone.safetensors")
    assert meta["modality"] == modality and meta["encoder"]["num_heads"] == 4 and meta["encoder"]["depth"] == 2
    shape = (2, 3, 32, 112, 112) if modality == "video" else (2, 1, 80, 448)
    x = torch.randn(shape)
    assert torch.allclose(encoder.pooled(x), original.pooled(x), atol=1e-6)


def test_import_weights_command_reports_a_bad_file(tmp_path, capsys):
    torch.save({"cuboid_embed.proj.weight": torch.zeros(3, 3)}, tmp_path / "bad.pth.tar")
    assert run_import([str(tmp_path / "bad.pth.tar"), str(tmp_path / "out")]) == 2
    assert "bad.pth.tar" in capsys.readouterr().err


def small_official(modality="video", width=64, heads=4):
    """The authors' key names at width 64, depth 2, MLP width 256 (4 heads)."""
    model_cfg = load_config("xkd_base", [f"model.encoder.embed_dim={width}", "model.encoder.depth=2",
                                         f"model.encoder.num_heads={heads}"]).model
    return to_official(build_encoder(modality, model_cfg).state_dict(), modality)


def reshaped(key, shape):
    return lambda state: {**state, key: torch.zeros(shape)}


def without(*keys):
    return lambda state: {k: v for k, v in state.items() if k not in keys}


# (file content made from a good backbone, or raw bytes) -> what the refusal must say
ODD_FILES = {
    "cls_token": (reshaped("cls_token", (1, 1, 63)),
                  ["as most keys agree", "wrong shape (1): cls_token: file (1, 1, 63) vs model (1, 1, 64)"]),
    "fc1": (reshaped("encoder.blocks.0.mlp.fc1.weight", (250, 64)),
            ["width 64, depth 2, MLP width 256", "wrong shape (1): encoder.blocks.0.mlp.fc1.weight: file (250, 64) "
                                                 "vs model (256, 64)"]),
    "fc2": (reshaped("encoder.blocks.1.mlp.fc2.weight", (63, 256)),
            ["wrong shape (1): encoder.blocks.1.mlp.fc2.weight: file (63, 256) vs model (64, 256)"]),
    "missing": (without("cls_token", "encoder.blocks.1.mlp.fc1.weight"),
                ["missing (2): cls_token, encoder.blocks.1.mlp.fc1.weight"]),
    "no_blocks": (lambda state: {k: v for k, v in state.items() if "blocks" not in k}, ["no encoder blocks"]),
    "not_tensors": (lambda state: {"epoch": 3, "args": "lr=1"}, ["no state_dict found"]),
    "a_list": (lambda state: [1, 2, 3], ["expected a state_dict, got list"]),
    "width_for_other_heads": (lambda state: small_official(width=66, heads=3),
                              ["width the keys agree on, 66, is not divisible by 4 attention heads", "--num-heads"]),
    "empty": (b"", ["the file is empty"]),
    "text": (b"not a checkpoint\n" * 10, ["cannot be read as a PyTorch file"]),
}


@pytest.mark.parametrize("case", sorted(ODD_FILES))
def test_odd_files_are_refused_naming_what_is_wrong(tmp_path, capsys, case):
    make, expected = ODD_FILES[case]
    source = tmp_path / f"{case}.pth.tar"
    if isinstance(make, bytes):
        source.write_bytes(make)
    else:
        torch.save(make(small_official()), source)
    assert run_import([str(source), str(tmp_path / "out"), "--num-heads", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xkd import-weights: {source}: ")
    for text in expected:
        assert text in err
    assert not (tmp_path / "out.safetensors").exists()


def test_save_and_load_backbone_for_a_shared_stack_encoder(tmp_path):
    """An XKD-MAS student encoder (blocks shared with the other modality) saves on its own."""
    from xkd.models import build_xkd

    cfg = load_config("xkd_micro", ["model.variant=xkd_mas"])
    model = build_xkd(cfg)
    save_backbone(tmp_path / "aud", model.students.audio, "audio", cfg.model, source={"variant": "xkd_mas"})
    encoder, meta = load_backbone(tmp_path / "aud")
    x = torch.randn(1, 1, 16, 64)
    assert torch.allclose(encoder(x), model.students.audio(x), atol=1e-6)
    assert meta["input"]["mel_bins"] == 16 and meta["source"] == {"variant": "xkd_mas"}
    with pytest.raises(ValueError, match="modality"):
        save_backbone(tmp_path / "x", model.students.audio, "speech", cfg.model)
