"""Presets, validation, overrides and saving of the experiment config."""
import pytest
import torch
import yaml

from xkd.config import (ConfigError, ExperimentConfig, available_presets, from_dict, load_config, to_dict)
from xkd.models import build_xkd


def test_presets_exist_and_load():
    presets = set(available_presets())
    assert {"xkd_base", "xkd_mas_base", "xkd_mats_base", "xkd_tiny", "xkd_mas_tiny", "xkd_mats_tiny",
            "xkd_small"} <= presets
    for name in presets:
        cfg = load_config(name)
        assert cfg.name == name


def test_base_defaults_are_the_papers():
    cfg = load_config("xkd_base")
    m, l = cfg.model, cfg.loss
    assert (m.encoder.embed_dim, m.encoder.depth, m.encoder.num_heads, m.encoder.qkv_bias) == (768, 12, 12, False)
    assert (m.decoder.embed_dim, m.decoder.depth, m.decoder.num_heads) == (384, 4, 12)
    assert (m.head.hidden_dim, m.head.bottleneck_dim, m.head.out_dim) == (2048, 256, 8192)
    assert (m.video.mask_ratio, m.audio.mask_ratio, m.teacher_view) == (0.85, 0.80, 1)
    assert (l.align_coeff, l.cmkd_coeff, l.recon_coeff) == (1, 1, 5)
    assert (l.teacher_temp_video, l.teacher_temp_audio, l.student_temp_video) == (0.1, 0.07, 0.1)
    assert cfg == ExperimentConfig()  # the dataclass defaults and the shipped YAML agree
    mas = load_config("xkd_mas_base")
    assert mas.model.variant == "xkd_mas" and (mas.loss.teacher_temp_video_warmup, mas.loss.teacher_temp_video) == (0.09, 0.11)
    assert (mas.loss.teacher_temp_audio_warmup, mas.loss.teacher_temp_audio) == (0.04, 0.06)
    assert load_config("xkd_mats_base").model.variant == "xkd_mats"


@pytest.mark.parametrize("preset,trainable,total", [("xkd_base", 206.35, 396.37), ("xkd_mas_base", 121.32, 311.35),
                                                     ("xkd_mats_base", 121.32, 226.32)])
def test_base_parameter_counts_match_the_authors(preset, trainable, total):
    with torch.device("meta"):
        model = build_xkd(load_config(preset))
    count = sum(p.numel() for p in model.students.parameters() if p.requires_grad) / 1e6
    assert count == pytest.approx(trainable, abs=0.01)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(total, abs=0.01)
    assert sum(p.numel() for p in model.students.video_head.parameters()) == 8_405_248  # tied hidden LayerNorms


def test_unknown_keys_are_refused_by_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"inherit": "xkd_tiny", "model": {"encoder": {"widht": 3}}}))
    with pytest.raises(ConfigError, match=r"model\.encoder\.widht"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"loss\.temperature"):
        load_config("xkd_tiny", ["loss.temperature=0.1"])
    with pytest.raises(ConfigError, match="bogus"):
        load_config("xkd_tiny", ["bogus=1"])


def test_overrides_are_parsed_and_validated():
    cfg = load_config("xkd_tiny", ["model.encoder.depth=3", "loss.mmd_gammas=[1, 10]", "model.variant=xkd_mats",
                                   "loss.recon_coeff=2"])
    assert cfg.model.encoder.depth == 3 and cfg.loss.mmd_gammas == [1.0, 10.0] and cfg.model.variant == "xkd_mats"
    assert isinstance(cfg.loss.recon_coeff, float)
    with pytest.raises(ConfigError, match="model.variant"):
        load_config("xkd_tiny", ["model.variant=xkd_big"])
    with pytest.raises(ConfigError, match="model.encoder.depth: expected an integer"):
        load_config("xkd_tiny", ["model.encoder.depth=2.5"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config("xkd_tiny", ["model.encoder.depth"])
    with pytest.raises(ConfigError, match="no config file"):
        load_config("xkd_huge")


def test_to_dict_round_trips():
    cfg = load_config("xkd_mas_tiny", ["model.teacher_view=0"])
    data = to_dict(cfg)
    assert yaml.safe_load(yaml.safe_dump(data)) == data
    assert from_dict(ExperimentConfig, data) == cfg
