"""The XKD pretraining pipeline (docs/method.md §Views): one clip per sample, audio and video starting
at the same instant, a global view and K local views of each modality.

Per sample: the `.lengths` member gives the video's frame count, a start frame is drawn
uniformly, the decoder decodes only the clip (from the key frame before it), and the audio is cut
at the same time. Clips shorter than the clip length are padded (video: last frame repeated;
audio: silence), never dropped. Video decodes on the GPU ("mixed") when there is one."""
from __future__ import annotations

import nvidia.dali.math as dmath
import torch
from nvidia.dali import fn, pipeline_def, types

from dali_pipelines.config import DataConfig
from dali_pipelines.ops import audio_view, output_type, padded_json, random_index, random_int, video_view
from dali_pipelines.shardset import ShardSet

READER = "reader"


def read_shards(shards: ShardSet, cfg: DataConfig, shard_id: int, num_shards: int):
    """(video bytes, flac bytes, json bytes, [frames, audio samples]) per sample, shuffled."""
    video, audio, meta, lengths = fn.readers.webdataset(
        paths=list(shards.tars), index_paths=list(shards.indexes),
        ext=[shards.video_extension, "flac", "json", "lengths"], missing_component_behavior="error",
        shard_id=shard_id, num_shards=num_shards, random_shuffle=True, initial_fill=cfg.shuffle_buffer,
        pad_last_batch=True, stick_to_shard=False, name=READER)
    return video, audio, padded_json(meta), fn.reinterpret(lengths, dtype=types.INT32)


def decode_clip(video_bytes, lengths, cfg: DataConfig, gpu: bool = False):
    """(frames (F, H, W, C) uint8, start frame): a clip of `clip_seconds` from a uniform start,
    decoded from the key frame before it; a shorter video repeats its last frame."""
    start = random_index(dmath.max(lengths[0] - cfg.clip_frames + 1, 1))
    frames = fn.decoders.video(video_bytes, device="mixed" if gpu else "cpu", start_frame=start,
                               sequence_length=cfg.clip_frames, pad_mode="edge")
    return frames, start


def decode_waveform(flac, cfg: DataConfig):
    """The whole FLAC member as a mono float waveform at the mel sample rate."""
    waveform, _ = fn.decoders.audio(flac, dtype=types.FLOAT, downmix=True, sample_rate=cfg.mel.sample_rate)
    return waveform


@pipeline_def(enable_conditionals=False)
def pretrain_pipeline(shards: ShardSet, cfg: DataConfig, shard_id: int = 0, num_shards: int = 1,
                      gpu: bool = False, dtype: torch.dtype = torch.float32):
    if not shards.has_video:
        raise ValueError("pretraining needs video and audio; these shards were made with --audio-only")
    video_bytes, flac, meta, lengths = read_shards(shards, cfg, shard_id, num_shards)
    dtype = output_type(dtype)
    clip_frames, clip_samples = cfg.clip_frames, cfg.clip_samples

    # one start for both modalities: video frame `start` is audio sample `start * sr / fps`
    frames, start = decode_clip(video_bytes, lengths, cfg, gpu)
    waveform = decode_waveform(flac, cfg)
    clip_audio = fn.slice(waveform, start * cfg.samples_per_frame, clip_samples, axes=[0],
                          out_of_bounds_policy="pad", fill_values=0.0)
    if gpu:
        clip_audio = clip_audio.gpu()

    videos = [video_view(frames, cfg.global_video, cfg.mean, cfg.std, dtype)]
    local_frames = cfg.local_video.frames
    for _ in range(cfg.local_video_views):  # each local view: its own contiguous frames and augmentation
        first = random_int(0, clip_frames - local_frames)
        clip = fn.slice(frames, first, local_frames, axes=[0])
        videos.append(video_view(clip, cfg.local_video, cfg.mean, cfg.std, dtype))

    audios = [audio_view(clip_audio, cfg.global_audio, cfg.mel, dtype)]
    local_samples = cfg.local_audio_samples
    for _ in range(cfg.local_audio_views):  # cut from the raw clip, at a multiple of 100 samples
        first = random_int(0, (clip_samples - local_samples) // 100) * 100
        piece = fn.slice(clip_audio, first, local_samples, axes=[0])
        audios.append(audio_view(piece, cfg.local_audio, cfg.mel, dtype))
    return (*videos, *audios, meta)


def output_names(cfg: DataConfig) -> list[str]:
    return ([f"video{i}" for i in range(1 + cfg.local_video_views)]
            + [f"audio{i}" for i in range(1 + cfg.local_audio_views)] + ["meta"])
