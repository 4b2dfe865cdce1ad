"""DALI building blocks shared by the pretraining and evaluation pipelines. Each function takes
DataNodes and returns DataNodes; every random parameter is drawn once per sample (per view), so a
whole clip gets the same crop, flip, colour and blur."""
from __future__ import annotations

import numpy as np
import nvidia.dali.math as dmath
import torch
from nvidia.dali import fn, types

from dali_pipelines.config import AudioViewConfig, MelConfig, VideoViewConfig

# the views' torch dtype -> what DALI emits (DALI has no bfloat16: float32, cast by torch after)
_DALI_TYPES = {torch.float32: types.FLOAT, torch.float16: types.FLOAT16, torch.bfloat16: types.FLOAT}


def output_type(dtype: torch.dtype):
    if dtype not in _DALI_TYPES:
        raise ValueError(f"views of dtype {dtype}: choose torch.float32, torch.bfloat16 or torch.float16")
    return _DALI_TYPES[dtype]


def torch_cast(dtype: torch.dtype) -> torch.dtype | None:
    """The cast torch applies to DALI's outputs for views of `dtype` (None: DALI emits it)."""
    return dtype if dtype == torch.bfloat16 else None


def uniform(low: float, high: float):
    """One float per sample in [low, high] (a constant when the range is empty)."""
    if high <= low:
        return fn.random.uniform(range=[low, low + 1e-6])
    return fn.random.uniform(range=[low, high])


def random_int(low: int, high: int):
    """One integer per sample in [low, high] (inclusive)."""
    return fn.random.uniform(values=list(range(low, high + 1)), dtype=types.INT32)


def padded_json(meta):
    """JSON members zero-padded to a multiple of 4 KiB: an output whose shape changes from batch to
    batch makes the iterator reallocate its buffer every batch, which fragments host memory (RSS
    kept growing by ~300 MiB over 480 batches; with the padding it stays flat)."""
    return fn.pad(meta, fill_value=0, align=4096)


def floor_int(x):
    """int32 of floor(x): DALI's cast rounds to nearest, Python's int() (the authors') truncates."""
    return fn.cast(dmath.floor(x), dtype=types.INT32)


def random_index(count):
    """One integer per sample, uniform in [0, count) for a per-sample count >= 1."""
    return floor_int(uniform(0.0, 1.0 - 1e-6) * fn.cast(count, dtype=types.FLOAT))


def coin(probability: float):
    return fn.random.coin_flip(probability=probability, dtype=types.INT32)


def video_view(frames, view: VideoViewConfig, mean, std, dtype):
    """Frames (F, H, W, C) uint8 -> an augmented view (C, F, size, size), normalised."""
    frames = fn.random_resized_crop(frames, size=[view.size, view.size], random_area=view.crop_area,
                                    random_aspect_ratio=view.crop_ratio, num_attempts=10,
                                    interp_type=types.INTERP_LINEAR)
    if view.grayscale_prob > 0 or any((view.brightness, view.contrast, view.saturation, view.hue)):
        frames = _colour(frames, view)  # (fine-tuning views turn it off)
    if view.blur_prob > 0:
        frames = fn.gaussian_blur(frames, window_size=view.blur_window, sigma=_blur_sigma(view))
    return fn.crop_mirror_normalize(frames, mirror=coin(view.flip_prob), output_layout="CFHW", dtype=dtype,
                                    mean=[255 * m for m in mean], std=[255 * s for s in std])


def _colour(frames, view: VideoViewConfig):
    """Colour jitter with random factors (and grayscale with its probability)."""
    gray = coin(view.grayscale_prob) if view.grayscale_prob > 0 else None
    saturation = uniform(1 - view.saturation, 1 + view.saturation)
    if gray is not None:
        saturation = saturation * (1 - gray)  # saturation 0 is grayscale, replicated on 3 channels
    return fn.color_twist(frames, brightness=uniform(1 - view.brightness, 1 + view.brightness),
                          contrast=uniform(1 - view.contrast, 1 + view.contrast), saturation=saturation,
                          hue=uniform(-360 * view.hue, 360 * view.hue))


def _blur_sigma(view: VideoViewConfig):
    """Per-sample (sigma_y, sigma_x), DALI's axis order; a ~zero sigma (identity) when not applied."""
    applied = fn.cast(coin(view.blur_prob), dtype=types.FLOAT)
    low, high = view.blur_sigma
    if view.blur_sigma_mode == "authors":  # torchvision read (0.1, 2.0) as (sigma_x, sigma_y)
        sigma_y, sigma_x = uniform(high, high), uniform(low, low)
    else:
        sigma_y = sigma_x = uniform(low, high)
    off = 1e-3
    return fn.stack(off + applied * (sigma_y - off), off + applied * (sigma_x - off))


def periodic_hann(length: int) -> list[float]:
    """librosa's and torch's default STFT window (periodic, not symmetric)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)).astype(np.float32).tolist()


def log_mel(waveform, mel: MelConfig):
    """1-D waveform -> normalised natural-log mel spectrogram (mel_bins, frames), frequency first:
    centred reflect-padded STFT with a periodic Hann window, power, Slaney mel filters."""
    power = fn.spectrogram(waveform, nfft=mel.n_fft, window_length=mel.n_fft, window_step=mel.hop,
                           window_fn=periodic_hann(mel.n_fft), center_windows=True, reflect_padding=True,
                           power=2, layout="ft")
    mels = fn.mel_filter_bank(power, sample_rate=mel.sample_rate, nfilter=mel.mel_bins, freq_low=mel.f_min,
                              freq_high=mel.f_max, normalize=True, mel_formula="slaney")
    return (dmath.log(mels + mel.log_offset) - mel.mean) / mel.std


def audio_view(waveform, view: AudioViewConfig, mel: MelConfig, dtype):
    """A waveform of exactly the view's length -> (1, mel_bins, frames) log-mel view."""
    if view.volume_jitter > 0:
        waveform = waveform * uniform(1 - view.volume_jitter, 1 + view.volume_jitter)
    spec = log_mel(waveform, mel)
    if view.resize_crop:
        spec = _random_resize_crop(spec, view, mel, num_frames=mel.frames(mel.samples(view.seconds)))
    spec = fn.cast(spec, dtype=dtype)
    return fn.expand_dims(spec, axes=[0], new_axis_names="C")


def _random_resize_crop(spec, view: AudioViewConfig, mel: MelConfig, num_frames: int):
    """BYOL-A style: the spectrogram centred on a wider zero canvas (zero = the dataset mean after
    normalisation), a random crop of random size, resized back to (mel_bins, num_frames)."""
    bins = mel.mel_bins
    canvas_width = int(num_frames * view.canvas_time_factor)
    offset = (canvas_width - num_frames) // 2
    low, high = view.crop_scale
    height = dmath.clamp(floor_int(uniform(low, high) * bins), 1, bins)
    width = dmath.clamp(floor_int(uniform(low, high) * num_frames), 1, canvas_width)
    top, left = random_index(bins - height + 1), random_index(canvas_width - width + 1)
    crop = fn.slice(spec, fn.stack(top, left - offset), fn.stack(height, width), axes=[0, 1],
                    out_of_bounds_policy="pad", fill_values=0.0)
    crop = fn.expand_dims(fn.reshape(crop, layout="HW"), axes=[2], new_axis_names="C")  # resize wants images
    crop = fn.resize(crop, size=[bins, num_frames], interp_type=types.INTERP_CUBIC, antialias=False)
    return fn.reshape(fn.squeeze(crop, axes=[2]), layout="ft")
