"""Speed of one full XKD training step, and of fused (SDPA) vs explicit-softmax attention.

    python benchmarks/bench_model.py                       # tiny preset, all variants, this machine's device
    python benchmarks/bench_model.py --preset base --batch-size 32 --variants xkd

A step is everything the training loop does per iteration on synthetic batch-dict inputs: student
MAE + local views, teachers with CLS attention and refinement, DINO heads, all losses, backward,
AdamW step and the EMA update (bf16 autocast on CUDA, fp32 on CPU). Reported per variant: clips/s,
FLOPs per clip (matmul FLOPs of forward + backward, torch.utils.flop_counter, counted on the
explicit-attention path because the CPU SDPA kernel has no FLOP formula), peak memory (CUDA: max
allocated; CPU: the process's peak RSS). Then fused vs explicit attention: the op alone, forward +
backward at the decoder sequence lengths (393 and 561 tokens) and width, with q/k/v laid out as in
the model (views of one qkv projection), for 32 clips (the paper's per-GPU batch;
`sdpa_speedup_attention`) and for the step's batch (`sdpa_speedup_attention_at_step_batch`);
and the whole step both ways (`sdpa_speedup_step`). `--compile MODE` compiles every transformer
block first (`train.compile`, xkd.models.compile_blocks; the warm-up steps compile, and the
step-level fused/explicit comparison is left out: the explicit path would recompile). Fused and explicit runs
alternate, and every time is the best of its runs (timeit style), so that load from other
processes on a shared machine distorts the numbers as little as possible.
The last line printed is one JSON object. On CUDA the result is also written to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script from a checkout: its packages (benchmarks/ too) without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import report  # noqa: E402
from xkd.config import load_config  # noqa: E402
from xkd.models import COMPILE_MODES, build_xkd, compile_blocks, set_fused_attention  # noqa: E402
from xkd.models.synthetic import synthetic_batch  # noqa: E402
from xkd.models.transformer import explicit_attention  # noqa: E402

PRESETS = {"xkd": "xkd_{}", "xkd_mas": "xkd_mas_{}", "xkd_mats": "xkd_mats_{}"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def preset_name(preset: str, variant: str) -> str:
    return PRESETS[variant].format(preset)


def build(preset: str, variant: str, device: torch.device, compile_mode: str = "none"):
    cfg = load_config(preset_name(preset, variant), [f"model.variant={variant}"])
    model = build_xkd(cfg).to(device).train()
    compile_blocks(model, compile_mode)
    optimizer = torch.optim.AdamW(model.param_groups(0.3), lr=1e-4, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    return cfg, model, optimizer


def make_step(model, optimizer, device):
    def step(batch) -> torch.Tensor:
        with autocast(device):
            loss = model(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.follow_students(0.997)
        return loss

    return step


def prepare_device(device: torch.device) -> None:
    """TF32 for the fp32 matrix products left outside bf16 autocast on a GPU (as training runs them)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def call_seconds(fn, warmup: int, iters: int, device: torch.device) -> list[float]:
    """Seconds of each of `iters` calls after `warmup` untimed ones, the device synchronised."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def time_calls(fn, warmup: int, iters: int, device: torch.device) -> float:
    """Best (minimum) seconds per call: on a shared machine, other processes only ever add time."""
    return min(call_seconds(fn, warmup, iters, device))


def time_interleaved(fn_a, fn_b, warmup: int, iters: int, device: torch.device) -> tuple[float, float]:
    """Best seconds per call of two functions timed alternately, so that load from other processes
    on a shared machine hits both alike."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    synchronize(device)
    times_a, times_b = [], []
    for _ in range(iters):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return min(times_a), min(times_b)


def count_flops(model, batch, device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    set_fused_attention(model, False)
    try:
        with FlopCounterMode(display=False) as counter:
            with autocast(device):
                loss = model(batch)["loss"]
            loss.backward()
    finally:
        set_fused_attention(model, True)
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def matmul_peak_tflops(device: torch.device, size: int = 8192, warmup: int = 3, iters: int = 10) -> float:
    """The GPU's dense bf16 rate as a large matrix product on random data reaches it: the ceiling
    that a step's achieved TFLOP/s is read against."""
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(warmup):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    synchronize(device)
    return 2 * size**3 * iters / (time.perf_counter() - start) / 1e12


def top_kernels(step, batch, device: torch.device, steps: int = 3, rows: int = 15) -> list[dict]:
    """Where a step's GPU time goes: the kernels with the most CUDA time over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(batch)
        synchronize(device)
    return kernel_summary(prof, steps, rows)


def kernel_summary(prof, steps: int, rows: int = 15) -> list[dict]:
    """The `rows` GPU kernels of a finished profile with the most device time, per step of `steps`,
    then the kernel count and the GPU's busy time per step (also printed as torch's table)."""
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events) or 1.0
    events.sort(key=lambda e: -e.self_device_time_total)
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows), flush=True)
    return [{"kernel": e.key[:120], "ms_per_step": round(e.self_device_time_total / 1e3 / steps, 3),
             "share": round(e.self_device_time_total / total, 4), "calls_per_step": e.count // steps}
            for e in events[:rows]] + [{"kernels_per_step": sum(e.count for e in events) // steps,
                                        "gpu_busy_ms_per_step": round(total / 1e3 / steps, 3)}]


def bench_attention(cfg, batch_size: int, device: torch.device, warmup: int, iters: int) -> dict:
    """Forward + backward of the attention op alone at the decoder sequence lengths."""
    heads, dim = cfg.model.decoder.num_heads, cfg.model.decoder.embed_dim
    head_dim = dim // heads
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = {}
    v, a = cfg.model.video, cfg.model.audio
    video_tokens = 1 + (v.num_frames // v.tubelet_size) * (v.image_size // v.patch_size) ** 2  # 393
    audio_tokens = 1 + (a.mel_bins // a.patch_freq) * (a.num_frames // a.patch_time)  # 561
    for tokens in (video_tokens, audio_tokens):
        # q, k, v as the model makes them: strided views of one qkv projection output
        qkv = torch.randn(batch_size, tokens, 3, heads, head_dim, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn(batch_size, heads, tokens, head_dim, device=device, dtype=dtype)

        def fused():
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            torch.nn.functional.scaled_dot_product_attention(q, k, v).backward(grad)

        def explicit():
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            explicit_attention(q, k, v, head_dim**-0.5).backward(grad)

        t_fused, t_explicit = time_interleaved(fused, explicit, warmup, iters, device)
        out[tokens] = {"fused_ms": 1e3 * t_fused, "explicit_ms": 1e3 * t_explicit, "speedup": t_explicit / t_fused}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--variants", default="xkd,xkd_mas,xkd_mats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device clips (default: 4 CPU, 32 CUDA)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default: 5 CPU, 20 CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 CPU, 5 CUDA)")
    parser.add_argument("--attention-batch", type=int, default=32,
                        help="clips for the attention-op comparison (default: 32, the paper's per-GPU batch)")
    parser.add_argument("--profile", action="store_true",
                        help="CUDA: also list the first variant's largest kernels (torch.profiler)")
    parser.add_argument("--compile", default="none", choices=COMPILE_MODES,
                        help="torch.compile every transformer block in this mode first (default: none)")
    parser.add_argument("--out", default=None, help="also write the JSON here (default on CUDA: benchmarks/results/)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch_size = args.batch_size or (32 if on_gpu else 4)
    iters = args.iters or (20 if on_gpu else 5)
    warmup = args.warmup or (5 if on_gpu else 2)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    prepare_device(device)
    torch.manual_seed(0)

    per_variant = {}
    for variant in variants:
        cfg, model, optimizer = build(args.preset, variant, device, args.compile)
        batch = synthetic_batch(cfg.data, batch_size, video_local_views=1 if variant == "xkd" else 3, device=device)
        step = make_step(model, optimizer, device)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        seconds = time_calls(lambda: step(batch), warmup, iters, device)
        result = {"config": preset_name(args.preset, variant), "step_ms": 1e3 * seconds,
                  "clips_per_s": batch_size / seconds, "peak_memory_mib": peak_memory_mib(device)}
        if variant == variants[0] and args.compile == "none":  # whole step fused and explicit, alternately
            def explicit_step():
                set_fused_attention(model, False)
                step(batch)
                set_fused_attention(model, True)

            fused_seconds, explicit_seconds = time_interleaved(lambda: step(batch), explicit_step, 1, iters, device)
            result["paired_fused_step_ms"] = 1e3 * fused_seconds
            result["paired_explicit_step_ms"] = 1e3 * explicit_seconds
            result["sdpa_speedup_step"] = explicit_seconds / fused_seconds
        if on_gpu and args.profile and variant == variants[0]:
            result["top_kernels"] = top_kernels(step, batch, device)
        result["gflops_per_clip"] = count_flops(model, batch, device) / batch_size / 1e9
        result["tflops_per_s"] = result["gflops_per_clip"] * result["clips_per_s"] / 1e3
        per_variant[variant] = result
        print(f"{variant:9s} {result['config']:14s} {result['clips_per_s']:9.2f} clips/s  "
              f"{result['step_ms']:8.1f} ms/step  {result['gflops_per_clip']:8.2f} GFLOP/clip  "
              f"{result['tflops_per_s']:7.3f} TFLOP/s  peak {result['peak_memory_mib']:.0f} MiB", flush=True)
        del model, optimizer, batch
        if on_gpu:
            torch.cuda.empty_cache()

    attention = {}
    for clips in dict.fromkeys([args.attention_batch, batch_size]):  # also at the step's batch, if different
        attention[clips] = bench_attention(cfg, clips, device, warmup, max(4 * iters, 20))
        for tokens, r in attention[clips].items():
            print(f"attention op, {clips} clips x {tokens} tokens: fused {r['fused_ms']:.2f} ms, "
                  f"explicit {r['explicit_ms']:.2f} ms, x{r['speedup']:.2f}", flush=True)

    def op_speedup(results: dict) -> float:
        return round(sum(r["explicit_ms"] for r in results.values()) / sum(r["fused_ms"] for r in results.values()), 3)

    first = per_variant[variants[0]]
    peak = {}
    if on_gpu:  # the ceiling, measured on this GPU in this run
        peak["bf16_matmul_tflops"] = round(matmul_peak_tflops(device), 1)
        peak["share_of_bf16_matmul"] = round(first["tflops_per_s"] / peak["bf16_matmul_tflops"], 4)
        print(f"bf16 matrix product: {peak['bf16_matmul_tflops']} TFLOP/s; the step reaches "
              f"{100 * peak['share_of_bf16_matmul']:.1f}% of it", flush=True)
    summary = {
        "command": shlex.join(["python", "benchmarks/bench_model.py", *(sys.argv[1:] if argv is None else argv)]),
        "preset": args.preset, "variant": variants[0], "device": torch.cuda.get_device_name(device) if on_gpu else
        f"cpu ({torch.get_num_threads()} threads)", "dtype": "bf16 autocast" if on_gpu else "fp32",
        "batch_size": batch_size, "attention_batch_size": args.attention_batch, "clips_per_s": round(first["clips_per_s"], 3),
        "gflops_per_clip": round(first["gflops_per_clip"], 3),
        "tflops_per_s": float(f"{first['tflops_per_s']:.4g}"),  # 4 significant digits: CPU figures are small
        **peak, "peak_memory_mib": round(first["peak_memory_mib"], 1),
        "sdpa_speedup_attention": op_speedup(attention[args.attention_batch]),
        "sdpa_speedup_attention_at_step_batch": op_speedup(attention[batch_size]),
        **({"sdpa_speedup_step": round(first["sdpa_speedup_step"], 3)} if "sdpa_speedup_step" in first else {}),
        "compile": args.compile,
        "attention": {f"{clips}x{tokens}": {k: round(v, 3) for k, v in r.items()}
                      for clips, per_length in attention.items() for tokens, r in per_length.items()},
        "variants": {k: {kk: (round(vv, 3) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                     for k, v in per_variant.items()},
        "torch": torch.__version__,
    }
    gpu = torch.cuda.get_device_name(device) if on_gpu else None
    compiled = "" if args.compile == "none" else f"_compiled_{args.compile}"
    report(summary, args.out, gpu, stem=f"bench_model_{args.preset}{compiled}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
