"""What a fine-tuning run starts from, checked before DeepSpeed starts: the label space of its shard
sets (from their manifests) and the backbone (an `xkd export` folder or file, an `xkd import-weights`
file, or a pretraining preset at random initialisation), each refused with a message naming the
file and the mismatch."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from dali_pipelines.shardset import ShardSet
from shards.format import load_manifest
from xkd.config import load_config
from xkd.eval.backbones import BackboneMismatch, EvalBackbone, check_fits, default_modality, resolve_backbones
from xkd.finetune.config import FinetuneConfig


class LabelMismatch(ValueError):
    """Shard sets whose labels cannot be fine-tuned on as configured."""


@dataclass(frozen=True)
class LabelSpace:
    num_classes: int
    multi_label: bool
    classes: tuple[str, ...] | None  # names in id order, when the manifest has them


def _manifest(location: str, role: str) -> dict:
    if not os.path.isdir(location):
        raise LabelMismatch(f"{location}: {role} must be a shard folder made by `xkd shards create` (its "
                            "manifest.json gives the classes); a '*.tar' pattern has none")
    try:
        return load_manifest(location)
    except (FileNotFoundError, ValueError) as error:
        raise LabelMismatch(str(error)) from None


def _names(manifest: dict) -> tuple[str, ...]:
    return tuple(name for name, _ in sorted((manifest.get("classes") or {}).items(), key=lambda item: item[1]))


def label_space(cfg: FinetuneConfig, train: str, others: dict[str, str]) -> LabelSpace:
    """The classes of the training set, which every other set (`others`: role -> location) and the
    config's num_classes (when set) must agree with."""
    manifest = _manifest(train, "--train")
    names = _names(manifest)
    if not names:
        raise LabelMismatch(f"{train}: the shards hold no labels (made from a folder without class folders, or "
                            "a manifest without a label column)")
    space = LabelSpace(manifest.get("num_classes", len(names)), bool(manifest.get("multi_label")), names)
    if cfg.num_classes and cfg.num_classes != space.num_classes:
        raise LabelMismatch(f"num_classes={cfg.num_classes} in config {cfg.name}, but {train} holds "
                            f"{space.num_classes} classes (manifest.json)")
    for role, location in others.items():
        other = _manifest(location, role)
        if bool(other.get("multi_label")) != space.multi_label:
            kinds = ("multi-label" if space.multi_label else "single-label", "multi-label" if other.get("multi_label")
                     else "single-label")
            raise LabelMismatch(f"{location} ({role}) is a {kinds[1]} set but {train} (--train) a {kinds[0]} one")
        if _names(other) != names:
            raise LabelMismatch(f"{location} ({role}) has {len(_names(other))} classes, not the {len(names)} of "
                                f"{train} (--train) in the same order: shard both with the same classes.json")
    return space


def check_shards(location: str, cfg: FinetuneConfig, skip_bad: bool = False) -> ShardSet:
    """The preflight of one shard set for the config's modality (ShardSetError naming what is wrong)."""
    return ShardSet.from_path(location, needs=(cfg.modality,), skip_bad=skip_bad)


def _fit_namespace(cfg: FinetuneConfig):
    """What `check_fits` reads: the backbone preset's encoder and patch geometry, this config's clips."""
    return SimpleNamespace(name=f"{cfg.name} (backbone_preset {cfg.backbone_preset})",
                           model=load_config(cfg.backbone_preset).model, data=cfg.data)


def finetune_backbone(source: str | None, cfg: FinetuneConfig, *, role: str = "teacher",
                      random_init: str | None = None, seed: int = 0) -> EvalBackbone:
    """The backbone to fine-tune: `source` (a backbone file or an export folder, whose
    {modality}_{role} backbone is taken), or `random_init`, a pretraining preset whose encoder is
    built at random (seeded). Refused (BackboneMismatch) when it is of the other modality, or its
    size or geometry is not `cfg.backbone_preset`'s and this config's clips'."""
    fit = _fit_namespace(cfg)
    if random_init is not None:
        backbone = resolve_backbones(None, cfg.modality, load_config(random_init), seed=seed)[0]
        check_fits(backbone.info, fit, f"--random-init {random_init}")
    else:
        if not Path(source).is_dir():
            own = default_modality(source)
            if own != cfg.modality:
                article = "an" if own == "audio" else "a"
                raise BackboneMismatch(f"{source}: {article} {own} backbone, but config {cfg.name} fine-tunes "
                                       f"{cfg.modality} (set modality={own}, or give a {cfg.modality} backbone)")
        backbone = resolve_backbones(source, cfg.modality, fit, role=role)[0]
    if cfg.modality == "video":
        patch = backbone.info["input"]["patch_size"]
        if cfg.data.global_video.size % patch:
            raise BackboneMismatch(f"data.global_video.size={cfg.data.global_video.size} in config {cfg.name} is not "
                                   f"a whole number of the backbone's {patch}-px patches")
    return backbone


def backbone_identity(backbone: EvalBackbone) -> dict:
    """What a checkpoint records of the backbone it started from (resuming from another is refused)."""
    info = backbone.info
    keys = ("kind", "sha256", "preset", "seed", "modality", "encoder", "input")
    return {k: info[k] for k in keys if k in info}


def describe_identity(identity: dict | None) -> str:
    """A backbone identity in a few words: the file's SHA-256 prefix, or the preset and seed."""
    if not identity:
        return "none"
    if identity.get("kind") == "random-init":
        return f"{identity.get('modality')} random-init {identity.get('preset')} (seed {identity.get('seed')})"
    return f"{identity.get('modality')} backbone file, SHA-256 {str(identity.get('sha256'))[:12]}..."
