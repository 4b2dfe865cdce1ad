"""The pieces of `xkd finetune` on their own (no DeepSpeed): the presets, the layer-wise LR, the
mixed targets, the masking, the position table at another input size, the classifier files, the
label checks and the schedules; the labelled pipeline's batches."""
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xkd.config import ConfigError, load_config
from xkd.finetune.augment import BatchAugment
from xkd.finetune.classifier import (Classifier, encoder_at, layer_decay_groups, load_classifier, model_config_at,
                                     save_classifier)
from xkd.finetune.config import AugmentConfig, available_finetune_presets, load_finetune_config
from xkd.models.encoders import build_encoder


def micro_classifier(classes: int = 5, modality: str = "video") -> Classifier:
    torch.manual_seed(0)
    return Classifier(build_encoder(modality, load_config("xkd_micro").model), classes, dropout=0.0)


def test_every_preset_loads_and_names_its_sources():
    presets = available_finetune_presets()
    assert {"ft_ucf101", "ft_hmdb51", "ft_kinetics", "ft_esc50", "ft_fsd50k", "ft_micro", "ft_tiny"} <= set(presets)
    for name in presets:
        cfg = load_finetune_config(name)
        assert cfg.name == name
        text = (Path(__file__).resolve().parents[1] / "xkd" / "configs" / "finetune" / f"{name}.yaml").read_text()
        assert "docs/method.md" in text or "inherit:" in text, name
    # the authors' values (docs/method.md §Fine-tuning)
    ucf, hmdb, esc, fsd = (load_finetune_config(n) for n in ("ft_ucf101", "ft_hmdb51", "ft_esc50", "ft_fsd50k"))
    assert (ucf.train.base_lr, ucf.train.warmup_epochs, ucf.train.layer_decay, ucf.augment.mixup, ucf.augment.cutmix) == \
        (5e-4, 5, 0.45, 0.6, 0.5)
    assert (hmdb.train.base_lr, hmdb.train.warmup_epochs, hmdb.train.layer_decay, hmdb.augment.mixup) == (1e-4, 20, 0.75, 1.0)
    assert (esc.modality, esc.train.layer_decay, esc.train.warmup_epochs, esc.head.init) == ("audio", 0.65, 10, "normal")
    assert (fsd.train.lr_schedule, fsd.train.epochs, fsd.data.eval_clips) == ("constant", 30, 8)
    assert ucf.data.global_video.size == ucf.data.eval_size == 224 and ucf.data.eval_crops == 3


def test_contradictions_in_a_finetune_config_are_refused():
    with pytest.raises(ConfigError, match="even data.batch_size"):
        load_finetune_config("ft_micro", ["data.batch_size=3"])  # mixup pairs each clip with another
    load_finetune_config("ft_micro", ["data.batch_size=3", "augment.mixup=0", "augment.cutmix=0"])
    with pytest.raises(ConfigError, match="train.warmup_epochs=9 > train.epochs=2"):
        load_finetune_config("ft_micro", ["train.epochs=2", "train.warmup_epochs=9"])
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_finetune_config("ft_micro", ["train.learning_rate=1"])


def test_layer_wise_decay_gives_each_block_its_learning_rate():
    """BEiT's layer ids: embeddings 0, block i i + 1, final norm and head depth + 1; a parameter's LR
    is the peak x decay^(depth + 1 - id); no weight decay on biases, norms, CLS token, positions."""
    from xkd.finetune.loop import FinetuneTrainer

    model, decay, peak = micro_classifier(), 0.5, 1e-3
    optimizer = torch.optim.AdamW(layer_decay_groups(model, weight_decay=0.05, layer_decay=decay))
    FinetuneTrainer._set_hyperparameters(SimpleNamespace(optimizer=optimizer), {"lr": peak})
    depth = len(model.encoder.blocks)
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        if name.startswith(("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed")):
            layer = 0
        elif name.startswith("encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        else:
            layer = depth + 1
        assert lr[id(param)] == pytest.approx(peak * decay ** (depth + 1 - layer)), name
        no_decay = param.ndim == 1 or name in ("encoder.cls_token", "encoder.pos_embed")
        assert wd[id(param)] == (0.0 if no_decay else 0.05), name
    assert {round(v / peak, 6) for v in lr.values()} == {0.125, 0.25, 0.5, 1.0}


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "none"])
def test_mixed_targets_sum_to_one_and_cutmix_cuts_every_frame_alike(mode):
    augment = AugmentConfig(mixup=1.0 if mode == "mixup" else 0.0, cutmix=1.0 if mode == "cutmix" else 0.0,
                            label_smoothing=0.1, random_erasing=0.0)
    np.random.seed(3)
    mixer = BatchAugment(augment, "video", num_classes=7, multi_label=False)
    clips = torch.randn(4, 3, 4, 8, 8)
    before = clips.clone()
    labels = torch.tensor([0, 3, 6, 3])
    mixed, targets = mixer(clips, labels, [(int(i),) for i in labels])
    assert targets.shape == (4, 7) and torch.allclose(targets.sum(1), torch.ones(4))
    assert (targets > 0).all()  # smoothing spreads 0.1 over the classes
    flipped = before.flip(0)
    if mode == "none":
        assert torch.equal(mixed, before) and torch.allclose(targets.argmax(1), labels)
        assert targets.max() == pytest.approx(0.9 + 0.1 / 7)
    elif mode == "mixup":  # every pixel the same blend of the clip and its partner
        lam = ((mixed - flipped) / (before - flipped))[0, 0, 0, 0, 0]
        assert torch.allclose(mixed, lam * before + (1 - lam) * flipped, atol=1e-5)
    else:  # a box of pixels taken from the partner, in every frame and channel alike
        taken = (mixed == flipped) & (mixed != before)
        assert taken.any() and torch.equal(taken, taken[:, :1, :1].expand_as(taken))
        share = taken[0, 0, 0].float().mean().item()  # the box's area is what the targets say
        assert targets[0, labels[3]] == pytest.approx(share * 0.9 + 0.1 / 7, abs=1e-5)


def test_multi_label_targets_are_the_multi_hot_rows_and_masks_hide_bins_per_clip():
    mixer = BatchAugment(AugmentConfig(mixup=0.0, cutmix=0.0, label_smoothing=0.0, freq_masks=2, freq_mask_width=6,
                                       time_masks=2, time_mask_width=20), "audio", num_classes=5, multi_label=True)
    torch.manual_seed(0)
    clips = torch.randn(8, 1, 16, 64) + 10.0  # nowhere near 0, the masks' value
    masked, targets = mixer(clips, torch.full((8,), -1), [(0, 2), (1,), (), (4,), (0,), (3,), (2, 3), (1, 4)])
    assert targets.tolist()[0] == [1.0, 0.0, 1.0, 0.0, 0.0] and targets.sum().item() == 10
    zero = masked == 0
    bins, frames = zero.all(dim=3)[:, 0], zero.all(dim=2)[:, 0]  # whole frequency rows / time columns at 0
    assert bins.any() and frames.any()
    assert (bins.sum(1) <= 2 * 5).all() and (frames.sum(1) <= 2 * 19).all()  # widths drawn in [0, width)
    assert len({tuple(row.tolist()) for row in bins}) > 1  # each clip its own masks
    assert torch.equal(masked[~zero], clips[~zero])


def test_the_position_table_is_resized_once_to_the_new_input_size():
    """A backbone of 32-px clips fine-tuned at 64 px: the new encoder's table is the backbone's resized
    with the encoders' own function, so both give the same features on a 64-px clip."""
    backbone = build_encoder("video", load_config("xkd_micro").model).eval()
    model_cfg = model_config_at({"embed_dim": 64, "depth": 2, "num_heads": 4}, vars(load_config("xkd_micro").model.video),
                                "video", frame_size=64)
    wider = encoder_at(backbone, model_cfg).eval()
    assert wider.native_grid == (4, 4, 4) and wider.pos_embed.shape == (1, 1 + 64, 64)
    clip = torch.randn(2, 3, 16, 64, 64)
    with torch.no_grad():
        assert torch.allclose(wider.pooled(clip), backbone.pooled(clip), atol=1e-5)


def test_drop_path_rises_to_the_configured_rate_in_the_last_block():
    model_cfg = model_config_at({"embed_dim": 64, "depth": 2, "num_heads": 4},
                                vars(load_config("xkd_micro").model.audio), "audio", drop_path=0.2)
    blocks = encoder_at(build_encoder("audio", load_config("xkd_micro").model), model_cfg).blocks
    assert isinstance(blocks[0].drop_path1, torch.nn.Identity)
    assert blocks[1].drop_path1.drop_prob == blocks[1].drop_path2.drop_prob == pytest.approx(0.2)


def test_a_classifier_file_pair_loads_back_the_same_network(tmp_path):
    model = micro_classifier(classes=3, modality="audio").eval()
    meta = {"modality": "audio", "encoder": {"embed_dim": 64, "depth": 2, "num_heads": 4},
            "input": vars(load_config("xkd_micro").model.audio), "num_classes": 3, "multi_label": False,
            "classes": ["a", "b", "c"], "head": {"dropout": 0.5}, "source": {}}
    weights, _ = save_classifier(tmp_path / "c", model, meta)
    loaded, read = load_classifier(weights)
    assert read["classes"] == ["a", "b", "c"] and not loaded.training
    clip = torch.randn(2, 1, 16, 64)
    with torch.no_grad():
        assert torch.equal(loaded(clip), model(clip))


def test_the_learning_rate_schedules():
    from xkd.schedules import FinetuneSchedules

    cosine = FinetuneSchedules(load_finetune_config("ft_ucf101").train, iters_per_epoch=4, total_batch=192)
    assert cosine.peak_lr == pytest.approx(1e-3)  # 5e-4 at the authors' 96, scaled linearly
    assert cosine.at(0)["lr"] == 0.0 and cosine.at(20)["lr"] == pytest.approx(1e-3)  # 5 warm-up epochs
    assert cosine.at(len(cosine) - 1)["lr"] == pytest.approx(1e-6, rel=0.05)
    constant = FinetuneSchedules(load_finetune_config("ft_fsd50k").train, iters_per_epoch=4, total_batch=128)
    assert np.all(constant.lr == 1e-4) and len(constant) == 30 * 4


@pytest.fixture(scope="module")
def class_shards(tmp_path_factory):
    from conftest import make_class_shards

    root = tmp_path_factory.mktemp("parts")
    return make_class_shards(root, 2), make_class_shards(root, 2, audio_only=True)


def test_label_counts_that_do_not_match_the_shards_are_refused(class_shards, tmp_path):
    from xkd.finetune.inputs import LabelMismatch, label_space

    video, audio_only = class_shards
    cfg = load_finetune_config("ft_micro")
    space = label_space(cfg, str(video), {"--val": str(audio_only)})
    assert (space.num_classes, space.multi_label, space.classes) == (4, False, ("blue", "green", "red", "yellow"))
    with pytest.raises(LabelMismatch, match="num_classes=101 in config ft_micro, but .* holds 4 classes"):
        label_space(load_finetune_config("ft_micro", ["num_classes=101"]), str(video), {})
    with pytest.raises(LabelMismatch, match="must be a shard folder"):
        label_space(cfg, str(video / "*.tar"), {})


def test_sets_with_other_classes_are_refused(class_shards, tmp_path):
    from conftest import make_multi_label_shards
    from xkd.finetune.inputs import LabelMismatch, label_space

    cfg = load_finetune_config("ft_micro")
    multi = make_multi_label_shards(tmp_path, 1)
    with pytest.raises(LabelMismatch, match=r"\(--val\) is a multi-label set but .* \(--train\) a single-label one"):
        label_space(cfg, str(class_shards[0]), {"--val": str(multi)})
    two = tmp_path / "two"
    for label in ("blue", "red"):
        (two / "videos" / label).mkdir(parents=True)
        for clip in (tmp_path / "videos" / label).glob("*.mp4"):
            (two / "videos" / label / clip.name).symlink_to(clip)
    from xkd.commands import main

    assert main(["shards", "create", str(two / "videos"), str(two / "shards"), "--audio-only", "--quiet",
                 "--workers", "1"]) == 0
    with pytest.raises(LabelMismatch, match=r"\(--test\) has 2 classes, not the 4 of .* \(--train\)"):
        label_space(cfg, str(class_shards[1]), {"--val": str(class_shards[0]), "--test": str(two / "shards")})


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_the_labelled_pipeline_gives_one_augmented_clip_per_sample_with_its_label(class_shards, modality):
    from dali_pipelines.labelled import labelled_loader

    cfg = load_finetune_config("ft_micro", [f"modality={modality}"])
    shards = class_shards[0] if modality == "video" else class_shards[1]
    loader = labelled_loader(str(shards), cfg.data, modality, rand_augment=(2, 7), seed=4)
    batches = list(loader)
    assert len(batches) == len(loader) == 2  # 8 samples, batches of 4
    shape = (4, 3, 16, 32, 32) if modality == "video" else (4, 1, 16, 64)
    assert all(b.clips.shape == shape and b.clips.dtype == torch.float32 for b in batches)
    names = ["blue", "green", "red", "yellow"]
    for batch in batches:
        assert [names[i] for i in batch.label.tolist()] == [k.split("__")[0] for k in batch.key]
        assert batch.label_sets == [(int(i),) for i in batch.label]
    assert sorted(k for b in batches for k in b.key) == sorted(set(k for b in batches for k in b.key))
    again = [b.clips for b in labelled_loader(str(shards), cfg.data, modality, rand_augment=(2, 7), seed=4)]
    assert all(torch.equal(a, b.clips) for a, b in zip(again, batches))  # seeded by (seed, rank, epoch)

    # two pipelines, each making half of every batch from its half of the samples; labels stay with their clips
    parted = list(labelled_loader(str(shards), replace(cfg.data, pipelines_per_device=2), modality, seed=4))
    assert len(parted) == 2 and all(b.clips.shape == shape for b in parted)
    for batch in parted:
        assert [names[i] for i in batch.label.tolist()] == [k.split("__")[0] for k in batch.key]
    assert sorted(k for b in parted for k in b.key) == sorted(k for b in batches for k in b.key)
