"""The evaluation pipeline: deterministic, no random augmentation. Each video gives N clips whose
starts are spread uniformly over it (the same instants in its audio), each clip in 1 centre crop
or 3 crops along the long side; audio-only shard sets give N windows of the soundtrack. Scores are
averaged per video by the caller, using the key and the clip/crop layout of each
`EvaluationBatch` (dali_pipelines/batch.py)."""
from __future__ import annotations

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

from dali_pipelines.config import DataConfig
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from dali_pipelines.batch import EvaluationBatch
from dali_pipelines.iterator import explain_dali_error, parse_meta
from dali_pipelines.loader import _device_index
from dali_pipelines.ops import floor_int, log_mel, output_type, padded_json, torch_cast
from dali_pipelines.pretrain import READER, decode_waveform
from dali_pipelines.shardset import ShardSet

MODALITIES = ("both", "video", "audio")


def _uniform_starts(length, window: int, clips: int):
    """Starts (clips,) int32 spread from 0 to max(length - window, 0), both ends included."""
    room = fn.cast(length - window, dtype=types.FLOAT)
    room = room * fn.cast(room > 0, dtype=types.FLOAT)
    steps = types.Constant(np.arange(clips, dtype=np.float32) / max(clips - 1, 1))
    return floor_int(steps * room)  # like numpy's linspace(...).astype(int)


def _crops(frames, cfg: DataConfig, dtype):
    """(F, H, W, C) -> (crops, C, F, S, S). 1 crop: short side to S/0.875, centre crop (the
    authors' test transform); 3 crops: short side to S, left/centre/right (top/centre/bottom)."""
    size = cfg.eval_size
    positions = [0.5] if cfg.eval_crops == 1 else [0.0, 0.5, 1.0]
    shorter = round(size / 0.875) if cfg.eval_crops == 1 else size
    frames = fn.resize(frames, resize_shorter=shorter, interp_type=types.INTERP_LINEAR, antialias=True)
    views = [fn.crop_mirror_normalize(frames, crop=[size, size], crop_pos_x=p, crop_pos_y=p, output_layout="CFHW",
                                      dtype=dtype, mean=[255 * m for m in cfg.mean], std=[255 * s for s in cfg.std])
             for p in positions]
    return fn.stack(*views)


@pipeline_def(enable_conditionals=False)
def eval_pipeline(shards: ShardSet, cfg: DataConfig, modality: str = "both", shard_id: int = 0,
                  num_shards: int = 1, gpu: bool = False, dtype: torch.dtype = torch.float32):
    use_video = modality in ("both", "video")
    use_audio = modality in ("both", "audio")
    if use_video and not shards.has_video:
        raise ValueError("these shards hold no video (made with --audio-only): use modality='audio'")
    exts = ([shards.video_extension] if use_video else []) + (["flac"] if use_audio else []) + ["json", "lengths"]
    members = fn.readers.webdataset(paths=list(shards.tars), index_paths=list(shards.indexes), ext=exts,
                                    missing_component_behavior="error", shard_id=shard_id, num_shards=num_shards,
                                    random_shuffle=False, pad_last_batch=True, name=READER)
    members = dict(zip(exts, members))
    lengths = fn.reinterpret(members["lengths"], dtype=types.INT32)
    dtype = output_type(dtype)
    clips, clip_frames, clip_samples = cfg.eval_clips, cfg.clip_frames, cfg.clip_samples
    outputs = []
    if shards.has_video:  # clips start on the video's frames; the audio windows follow them
        starts = _uniform_starts(lengths[0], clip_frames, clips)
        audio_starts = starts * cfg.samples_per_frame
    else:
        audio_starts = _uniform_starts(lengths[1], clip_samples, clips)
    if use_video:
        # One decoder per clip, each from the key frame before the clip's start. One decoder given
        # every clip's frames in a single list restarts for each clip that begins before the last
        # one ended: 6.8x slower for 10 overlapping clips of 6-s videos, for the same frames.
        video = members[shards.video_extension]
        clip_list = [fn.decoders.video(video, device="mixed" if gpu else "cpu", start_frame=starts[k],
                                       sequence_length=clip_frames, pad_mode="edge") for k in range(clips)]
        frames = fn.cat(*clip_list, axis=0) if clips > 1 else clip_list[0]
        outputs.append(_crops(frames, cfg, dtype))
    if use_audio:
        waveform = decode_waveform(members["flac"], cfg)
        windows = [fn.slice(waveform, audio_starts[k], clip_samples, axes=[0], out_of_bounds_policy="pad",
                            fill_values=0.0) for k in range(clips)]
        if gpu:
            windows = [w.gpu() for w in windows]
        outputs.append(fn.cast(fn.stack(*[log_mel(w, cfg.mel) for w in windows]), dtype=dtype))
    return (*outputs, padded_json(members["json"]))


class EvaluationPass:
    """EvaluationBatches of one shard set: each iter() is one pass in which every sample (of this
    rank's share) comes exactly once, the last batch possibly smaller."""

    def __init__(self, pipeline, names: list[str], cfg: DataConfig, cast: torch.dtype | None):
        self.cfg, self.names, self.cast = cfg, names, cast
        self._dali = DALIGenericIterator([pipeline], names, reader_name=READER, auto_reset=True,
                                         last_batch_policy=LastBatchPolicy.PARTIAL)

    def __len__(self) -> int:
        return len(self._dali)

    def _clips(self, outputs: dict, name: str) -> torch.Tensor | None:
        if name not in outputs:
            return None
        return outputs[name].to(self.cast) if self.cast else outputs[name]

    def _to_batch(self, outputs: dict) -> EvaluationBatch:
        cfg = self.cfg
        keys, labels, label_sets = parse_meta(outputs["meta"])
        video, audio = self._clips(outputs, "video0"), self._clips(outputs, "audio0")
        if video is not None:  # (B, crops, C, N*T, S, S) -> (B, N, crops, C, T, S, S)
            b, crops, c, _, h, w = video.shape
            video = video.reshape(b, crops, c, cfg.eval_clips, -1, h, w).permute(0, 3, 1, 2, 4, 5, 6)
        if audio is not None:  # (B, N, mel_bins, frames) -> (B, N, 1, mel_bins, frames)
            audio = audio.unsqueeze(2)
        device = next(t.device for n, t in outputs.items() if n != "meta")
        return EvaluationBatch(video, audio, labels.to(device), keys, torch.arange(cfg.eval_clips),
                               torch.arange(cfg.eval_crops), label_sets)

    def __iter__(self):
        try:
            for outputs in self._dali:
                yield self._to_batch(outputs[0])
        except RuntimeError as error:
            raise explain_dali_error(error) from error


def eval_loader(shards: str | ShardSet, cfg: DataConfig, *, modality: str = "both", rank: int = 0,
                world_size: int = 1, device=None, dtype: torch.dtype = torch.float32) -> EvaluationPass:
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r}: choose one of {MODALITIES}")
    if cfg.eval_crops not in (1, 3):
        raise ValueError(f"eval_crops {cfg.eval_crops}: 1 or 3")
    shards = shards if isinstance(shards, ShardSet) else ShardSet.from_path(shards)
    if not shards.has_video and modality == "both":
        modality = "audio"
    device_id = _device_index(device)
    pipeline = eval_pipeline(shards, cfg, modality, shard_id=rank, num_shards=world_size,
                             gpu=device_id is not None, batch_size=cfg.batch_size, num_threads=cfg.num_threads,
                             device_id=device_id, seed=0, dtype=dtype)
    pipeline.build()
    names = (["video0"] if modality in ("both", "video") else []) + (["audio0"] if modality != "video" else [])
    return EvaluationPass(pipeline, names + ["meta"], cfg, torch_cast(dtype))
