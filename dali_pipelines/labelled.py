"""The fine-tuning pipeline: one augmented clip per labelled sample, of one modality, with its
labels (`LabelledBatch`, dali_pipelines/batch.py). Clips start at a uniformly drawn instant, as in
pretraining (docs/method.md §Clip), and take the pretraining view ops:

* video: the `data.global_video` view (random resized crop, flip; colour jitter when it is set),
  RandAugment first when asked (DALI's `rand_augment`, one draw per clip, every frame alike), the
  frames decoded on the GPU when there is one;
* audio: the `data.global_audio` view of the soundtrack (volume jitter, log-mel, BYOL-A random
  resize crop when it is set), from video shards or `--audio-only` ones.

Epochs, resume mid-epoch and left-out samples are `PipelineEpochs`' (dali_pipelines/iterator.py)."""
from __future__ import annotations

import tempfile
from functools import partial

import nvidia.dali.math as dmath
import torch
from nvidia.dali import fn, pipeline_def, types

from dali_pipelines.batch import LabelledBatch
from dali_pipelines.config import DataConfig
from dali_pipelines.iterator import PipelineEpochs, parse_meta
from dali_pipelines.loader import _device_index, build_parts
from dali_pipelines.ops import audio_view, output_type, padded_json, random_index, torch_cast, video_view
from dali_pipelines.pretrain import READER, decode_clip, decode_waveform
from dali_pipelines.shardset import ShardSet

MODALITIES = ("video", "audio")


def _read(shards: ShardSet, cfg: DataConfig, extensions: list[str], shard_id: int, num_shards: int):
    members = fn.readers.webdataset(
        paths=list(shards.tars), index_paths=list(shards.indexes), ext=[*extensions, "json", "lengths"],
        missing_component_behavior="error", shard_id=shard_id, num_shards=num_shards, random_shuffle=True,
        initial_fill=cfg.shuffle_buffer, pad_last_batch=True, stick_to_shard=False, name=READER)
    *media, meta, lengths = members
    return media, padded_json(meta), fn.reinterpret(lengths, dtype=types.INT32)


def _rand_augment(frames, n: int, m: int):
    """timm's `rand-m{m}-n{n}` on (F, H, W, C) uint8 frames: magnitudes on its 0..10 scale, translation
    up to 0.45 of the frame (VideoMAE's 0.45 x 224 px at 224)."""
    from nvidia.dali.auto_aug import rand_augment

    size = frames.shape(dtype=types.INT32)[1:3]
    return rand_augment.rand_augment(frames, n=n, m=m, num_magnitude_bins=11, shape=size, max_translate_rel=0.45)


@pipeline_def(enable_conditionals=True)  # DALI's automatic augmentations branch per sample
def labelled_pipeline(shards: ShardSet, cfg: DataConfig, modality: str = "video", rand_augment: tuple[int, int] = (0, 0),
                      shard_id: int = 0, num_shards: int = 1, gpu: bool = False, dtype: torch.dtype = torch.float32):
    """(clip, meta) per sample; rand_augment: (n, m), n = 0 for none (video only)."""
    dtype = output_type(dtype)
    if modality == "video":
        if not shards.has_video:
            raise ValueError("these shards hold no video (made with --audio-only): fine-tune an audio backbone")
        (video,), meta, lengths = _read(shards, cfg, [shards.video_extension], shard_id, num_shards)
        frames, _ = decode_clip(video, lengths, cfg, gpu)
        if rand_augment[0] > 0:
            frames = _rand_augment(frames, *rand_augment)
        return video_view(frames, cfg.global_video, cfg.mean, cfg.std, dtype), meta
    (flac,), meta, lengths = _read(shards, cfg, ["flac"], shard_id, num_shards)
    samples = cfg.clip_samples
    start = random_index(dmath.max(lengths[1] - samples + 1, 1))
    clip = fn.slice(decode_waveform(flac, cfg), start, samples, axes=[0], out_of_bounds_policy="pad",
                    fill_values=0.0)
    return audio_view(clip.gpu() if gpu else clip, cfg.global_audio, cfg.mel, dtype), meta


class LabelledEpochs(PipelineEpochs):
    """LabelledBatches by epoch (see PipelineEpochs)."""

    def _to_batch(self, outputs: dict) -> LabelledBatch:
        keys, labels, label_sets = parse_meta(outputs["meta"])
        clips = outputs["clips"].to(self.cast) if self.cast else outputs["clips"]
        batch = LabelledBatch(clips, labels.to(clips.device), label_sets, keys, skipped=self._unreported)
        self._unreported = []
        return batch


def labelled_loader(shards: str | ShardSet, cfg: DataConfig, modality: str, *, rand_augment: tuple[int, int] = (0, 0),
                    rank: int = 0, world_size: int = 1, device=None, seed: int = 0, skip_bad: bool = False,
                    dtype: torch.dtype = torch.float32) -> LabelledEpochs:
    """LabelledBatches of `modality` clips; rank `rank` of `world_size` reads its own share, every
    rank the same number of full batches per epoch. Each epoch gets a fresh pipeline seeded by
    (seed, rank, epoch), so `state_dict()` / `load_state_dict()` resume mid-epoch exactly."""
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r}: choose one of {MODALITIES}")
    shards = shards if isinstance(shards, ShardSet) else ShardSet.from_path(shards)
    device_id = _device_index(device)
    scratch = tempfile.mkdtemp(prefix="xkd-skip-") if skip_bad else None

    parts = cfg.pipeline_parts()

    def build(excluded, epoch):
        current = shards.without(excluded, scratch) if excluded else shards
        return build_parts(partial(labelled_pipeline, current, cfg, modality, rand_augment), cfg, rank=rank,
                           world_size=world_size, epoch=epoch, seed=seed, device_id=device_id, dtype=dtype)

    batches = shards.batches_per_rank(world_size * parts, cfg.batch_size // parts)
    return LabelledEpochs(build, ["clips", "meta"], batches, True, torch_cast(dtype), skip_bad)
