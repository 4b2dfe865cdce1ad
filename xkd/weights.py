"""The authors' released XKD backbones (vid_student.pth.tar, aud_teacher.pth.tar, ...) mapped onto our
encoders; `xkd/backbone_io.py` reads the files.

Their files are torch.save'd state_dicts of VideoViT / AudioViT (docs/method.md §Backbone files), possibly wrapped
({"state_dict": ...}) or with a `module.` prefix. Key renaming onto our encoders:

    cls_token                    -> cls_token
    enc_pos_embed                -> pos_embed
    cuboid_embed.proj.* (video)  -> patch_embed.proj.*
    patch_embed.proj.*  (audio)  -> patch_embed.proj.*
    encoder.blocks.L.*           -> blocks.L.*          (same names inside a block)
    encoder_norm.*               -> norm.*

Every key and shape must be accounted for; anything else is refused with the lists of missing,
unexpected and mis-shaped keys.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from typing import Any, Mapping

import torch

from xkd.config import ModelConfig, load_config

RENAMES = (  # (authors' prefix, our prefix), first match wins
    ("enc_pos_embed", "pos_embed"),
    ("cuboid_embed.", "patch_embed."),
    ("patch_embed.", "patch_embed."),
    ("encoder.blocks.", "blocks."),
    ("encoder_norm.", "norm."),
    ("cls_token", "cls_token"),
)
WRAPPER_KEYS = ("state_dict", "model", "module", "backbone")
FULL_CHECKPOINT_PARTS = ("vid_student", "vid_teacher", "aud_student", "aud_teacher")


class WeightImportError(ValueError):
    """A state_dict that does not match the expected backbone."""


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Peel {"state_dict": ...}-style wrappers and a leading `module.` from every key."""
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in WRAPPER_KEYS if k in obj), None)
        if key is None:
            raise WeightImportError(f"no state_dict found; top-level keys: {sorted(map(str, obj))[:20]}")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise WeightImportError(f"expected a state_dict, got {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    while state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def select_part(state: dict[str, torch.Tensor], part: str | None) -> dict[str, torch.Tensor]:
    """From a full training checkpoint, keep one network's backbone (`{part}.backbone.*`).

    The key layout of the full checkpoint is inferred from the authors' wrapper classes; the released
    backbone files need no `part`.
    """
    if part is None:
        if any(k.startswith(f"{p}.") for p in FULL_CHECKPOINT_PARTS for k in state):
            raise WeightImportError("this looks like a full training checkpoint; choose a network with "
                                    f"--part {{{','.join(FULL_CHECKPOINT_PARTS)}}}")
        return state
    prefix = f"{part}.backbone."
    selected = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not selected:
        raise WeightImportError(f"no keys start with {prefix!r}")
    return selected


def detect_modality(state: Mapping[str, Any]) -> str:
    if any(k.startswith("cuboid_embed.") for k in state):
        return "video"
    if any(k.startswith("patch_embed.") for k in state):
        return "audio"
    raise WeightImportError("cannot tell video from audio: no cuboid_embed.* (video) or patch_embed.* (audio) key")


def rename_official_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """Authors' key names -> ours; keys no rule covers are kept as they are (and later reported)."""
    out = {}
    for key, value in state.items():
        for old, new in RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


# Where each key of a renamed state_dict holds the embedding width and the MLP width (tensor axes).
# Every key votes, so one mis-shaped key is outvoted and then named, instead of setting the geometry.
_BLOCK = r"blocks\.\d+\."
WIDTH_AXES = [(re.compile(pattern), axes) for pattern, axes in (
    (r"cls_token|pos_embed", (-1,)),
    (r"patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)", (0,)),
    (_BLOCK + r"(norm[12]\.(weight|bias)|attn\.proj\.bias|mlp\.fc2\.(weight|bias))", (0,)),
    (_BLOCK + r"attn\.proj\.weight", (0, 1)),
    (_BLOCK + r"(attn\.qkv|mlp\.fc1)\.weight", (1,)),
)]
HIDDEN_AXES = [(re.compile(_BLOCK + r"mlp\.fc1\.(weight|bias)"), (0,)), (re.compile(_BLOCK + r"mlp\.fc2\.weight"), (1,))]


def _agreed_size(state: Mapping[str, Any], rules) -> int | None:
    """The size most keys agree on, reading each key at the axes its rule names."""
    votes: Counter = Counter()
    for key, value in state.items():
        shape = tuple(value.shape)
        axes = next((axes for pattern, axes in rules if pattern.fullmatch(key)), ())
        votes.update(shape[axis] for axis in axes if -len(shape) <= axis < len(shape))
    return votes.most_common(1)[0][0] if votes else None


def infer_model_config(state: Mapping[str, Any], base: ModelConfig | None = None,
                       num_heads: int | None = None) -> ModelConfig:
    """Encoder width, depth, MLP width and qkv bias agreed by the keys of a renamed state_dict; input
    geometry and head count from `base` (the paper's ViT-B preset by default) unless the width differs."""
    base = base or load_config("xkd_base").model
    dim = _agreed_size(state, WIDTH_AXES)
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = 0
    while depth in blocks:  # blocks past a gap are reported as unexpected keys, not built
        depth += 1
    if dim is None or depth == 0:
        raise WeightImportError("not an XKD backbone: no encoder blocks (encoder.blocks.0.*) or no key that "
                                "holds the embedding width")
    hidden = _agreed_size(state, HIDDEN_AXES) or round(base.encoder.mlp_ratio * dim)  # absent: named as missing
    heads = num_heads or (base.encoder.num_heads if dim == base.encoder.embed_dim else max(1, dim // 64))
    if dim % heads:
        raise WeightImportError(f"the embedding width the keys agree on, {dim}, is not divisible by {heads} "
                                "attention heads: give the head count with --num-heads")
    qkv_bias = 2 * sum(f"blocks.{i}.attn.qkv.bias" in state for i in range(depth)) > depth
    encoder = replace(base.encoder, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=hidden / dim,
                      qkv_bias=qkv_bias)
    return replace(base, encoder=encoder)


def official_key(key: str, modality: str) -> str:
    """Our key -> the authors' name for it (for error messages)."""
    embed = "cuboid_embed." if modality == "video" else "patch_embed."
    for ours, theirs in (("pos_embed", "enc_pos_embed"), ("patch_embed.", embed), ("blocks.", "encoder.blocks."),
                         ("norm.", "encoder_norm.")):
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key


def check_state_dict(expected: Mapping[str, Any], actual: Mapping[str, Any], what: str = "backbone",
                     name=lambda key: key) -> None:
    """Raise WeightImportError listing missing, unexpected and mis-shaped keys (shapes compared).

    `name` turns a key into the name shown to the user (e.g. the authors' original key).
    """
    missing = sorted(name(k) for k in set(expected) - set(actual))
    unexpected = sorted(name(k) for k in set(actual) - set(expected))
    mis_shaped = sorted(f"{name(k)}: file {tuple(actual[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in set(expected) & set(actual) if tuple(expected[k].shape) != tuple(actual[k].shape))
    if missing or unexpected or mis_shaped:
        lines = [f"{what} does not match the model:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise WeightImportError("\n".join(lines))


def convert_official_backbone(state: Mapping[str, Any], base: ModelConfig | None = None,
                              num_heads: int | None = None):
    """Authors' backbone state_dict -> (modality, ModelConfig, our state_dict), fully checked."""
    from xkd.models.encoders import build_encoder

    modality = detect_modality(state)
    renamed = rename_official_keys(state)
    model_cfg = infer_model_config(renamed, base, num_heads)
    with torch.device("meta"):  # the expected shapes at the agreed geometry; nothing is allocated
        reference = build_encoder(modality, model_cfg).state_dict()
    encoder = model_cfg.encoder
    check_state_dict(reference, renamed, name=lambda k: official_key(k, modality),
                     what=f"{modality} backbone (width {encoder.embed_dim}, depth {encoder.depth}, MLP width "
                          f"{round(encoder.mlp_ratio * encoder.embed_dim)}, as most keys agree)")
    return modality, model_cfg, renamed

