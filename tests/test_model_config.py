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


# The authors' configs (xkd.yaml, xkd_mas.yaml, xkd_mats.yaml), as docs/method.md records them: the values every
# preset of a variant must keep, whatever its size. Teacher temperatures are (warm-up start, final).
AUTHORS_LOSS = {"align_coeff": 1.0, "cmkd_coeff": 1.0, "recon_coeff": 5.0, "student_temp_video": 0.1,
                "student_temp_audio": 0.1, "teacher_temp_warmup_epochs": 30, "center_momentum": 0.9,
                "mmd_gammas": [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3]}
AUTHORS_TEACHER_TEMPS = {  # video (start, final), audio (start, final)
    "xkd": ((0.1, 0.1), (0.07, 0.07)),
    "xkd_mas": ((0.09, 0.11), (0.04, 0.06)),
    "xkd_mats": ((0.1, 0.1), (0.07, 0.07)),  # XKD's, not MAS's: only MAS ramps
}
AUTHORS_LOCAL_VIEWS = {"xkd": (1, 1), "xkd_mas": (3, 1), "xkd_mats": (3, 1)}  # (video, audio)
AUTHORS_TRAIN = {"base_lr": 1e-4, "lr_reference_batch": 256, "min_lr": 0.0, "weight_decay": 0.3,
                 "weight_decay_end": 0.3, "betas": [0.9, 0.95], "eps": 1e-8, "ema_momentum": 0.997,
                 "ema_momentum_end": 1.0, "clip_grad": 0.3, "clip_mode": "per_parameter", "decay_tokens": True}
AUTHORS_BASE_TRAIN = {"epochs": 800, "warmup_epochs": 30}  # the presets for short runs shorten these


def variant_presets() -> list[str]:
    # the unit-test and demo presets change the input geometry and schedule on purpose (their YAML says why)
    return sorted(name for name in available_presets() if name not in ("xkd_micro", "xkd_demo"))


@pytest.mark.parametrize("preset", variant_presets())
def test_every_preset_keeps_its_variants_loss_data_and_train_values(preset):
    cfg = load_config(preset)
    variant = cfg.model.variant
    assert preset.startswith(variant + "_") and preset.rsplit("_", 1)[1] in ("tiny", "small", "base")
    loss = cfg.loss
    assert {key: getattr(loss, key) for key in AUTHORS_LOSS} == AUTHORS_LOSS
    (video_start, video_final), (audio_start, audio_final) = AUTHORS_TEACHER_TEMPS[variant]
    assert (loss.teacher_temp_video_warmup, loss.teacher_temp_video) == (video_start, video_final)
    assert (loss.teacher_temp_audio_warmup, loss.teacher_temp_audio) == (audio_start, audio_final)
    assert (loss.mmd_teacher_term, loss.refine_mode) == (True, "mean")
    m = cfg.model
    assert (m.video.mask_ratio, m.audio.mask_ratio, m.teacher_view, m.norm_pix_loss, m.student_global) == \
        (0.85, 0.80, 1, True, "masked")
    assert (m.video.num_frames, m.video.image_size, m.video.tubelet_size, m.video.patch_size) == (32, 112, 4, 16)
    assert (m.audio.mel_bins, m.audio.num_frames, m.audio.patch_freq, m.audio.patch_time) == (80, 448, 4, 16)
    assert (cfg.data.local_video_views, cfg.data.local_audio_views) == AUTHORS_LOCAL_VIEWS[variant]
    assert {key: getattr(cfg.train, key) for key in AUTHORS_TRAIN} == AUTHORS_TRAIN
    if preset.endswith("_base"):
        assert {key: getattr(cfg.train, key) for key in AUTHORS_BASE_TRAIN} == AUTHORS_BASE_TRAIN
        e, d, h = m.encoder, m.decoder, m.head
        assert (e.embed_dim, e.depth, e.num_heads, e.mlp_ratio, e.qkv_bias) == (768, 12, 12, 4.0, False)
        assert (d.embed_dim, d.depth, d.num_heads) == (384, 4, 12)
        assert (h.hidden_dim, h.bottleneck_dim, h.out_dim, h.num_layers, h.norm_last_layer) == (2048, 256, 8192, 3, True)


def test_the_base_preset_is_the_dataclass_default():
    assert load_config("xkd_base") == ExperimentConfig()  # the dataclass defaults and the shipped YAML agree


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


def test_the_clip_geometry_of_the_paper_preset_is_derived_from_the_data_section():
    data = load_config("xkd_base").data
    assert (data.clip_frames, data.clip_samples, data.samples_per_frame) == (32, 64000, 2000)
    assert data.global_video_shape == (3, 32, 112, 112) and data.local_video_shape == (3, 8, 96, 96)
    assert data.global_audio_shape == (1, 80, 448) and data.local_audio_shape == (1, 80, 112)


@pytest.mark.parametrize("override,message", [
    ("model.video.num_frames=16", r"model\.video\.num_frames=16 but data\.clip_seconds x data\.fps = 4 x 8 = 32 frames"),
    ("data.fps=4", r"model\.video\.num_frames=32 but data\.clip_seconds x data\.fps = 4 x 4 = 16 frames"),
    ("model.video.image_size=128", r"model\.video\.image_size=128 but data\.global_video\.size=112"),
    ("model.audio.mel_bins=64", r"model\.audio\.mel_bins=64 but data\.mel\.mel_bins=80"),
    ("data.mel.hop=160", r"model\.audio\.num_frames=448 but .*data\.mel\.hop=160.* = 401 mel frames"),
    ("data.global_video.frames=16", r"data\.global_video\.frames=16 but .* = 32 frames"),
    ("data.local_video.frames=6", r"data\.local_video\.frames=6 is not a whole number of model\.video\.tubelet_size=4"),
    ("data.local_video.size=100", r"data\.local_video\.size=100 is not a whole number of model\.video\.patch_size=16"),
    ("data.local_audio.seconds=0.9", r"= 101 mel frames, not a whole number of model\.audio\.patch_time=16"),
])
def test_a_model_that_contradicts_the_data_section_is_refused_naming_both_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("xkd_tiny", [override])


def test_pipelines_per_device_must_split_the_batch():
    assert load_config("xkd_tiny", ["data.batch_size=4", "data.pipelines_per_device=2"]).data.pipeline_parts() == 2
    for parts in ("3", "0"):
        with pytest.raises(ConfigError, match=f"data.pipelines_per_device={parts} must be at least 1 and divide "
                                              "data.batch_size=4"):
            load_config("xkd_tiny", ["data.batch_size=4", f"data.pipelines_per_device={parts}"])


def test_a_partial_view_override_keeps_the_views_other_defaults():
    local = load_config("xkd_tiny", ["data.local_video.frames=4"]).data.local_video
    assert (local.frames, local.size, local.crop_area, local.blur_prob) == (4, 96, [0.08, 0.4], 0.5)
