"""fp32 islands under autocast: the losses and the teachers' attention refinement run with autocast
off on fp32 inputs, since their softmaxes and distances lose too much precision in half precision."""
from __future__ import annotations

import torch


def in_fp32(fn):
    """Run `fn` with autocast off and its floating-point tensor arguments in fp32."""

    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        converted = {}  # by id, so that f(x, x) still receives one tensor twice

        def to_fp32(a):
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                return converted.setdefault(id(a), a.float())
            return a

        with torch.autocast(device_type=device, enabled=False):
            return fn(*[to_fp32(a) for a in args], **kwargs)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper
