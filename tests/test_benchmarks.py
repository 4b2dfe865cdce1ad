"""Every benchmark runs end to end (here with tiny sizes) and ends with its JSON line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # each benchmark script end to end

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "bench_shards.py": (["--files", "2", "--copies", "1", "--runs", "1"],
                        {"realtime_factor_per_worker", "speedup_2_workers"}),
    "bench_pipeline.py": (["--clips", "6", "--threads", "2", "--batch-size", "2", "--repeat", "1", "--warmup", "1",
                           "--batches", "4", "--memory-rebuilds", "2"],
                          {"dali_clips_per_s", "reference_clips_per_s", "ratio", "device", "dali_rebuilds",
                           "memory_rebuilds", "memory_dali_rss_after_warmup_mib", "command", "date", "machine"}),
    "bench_pipeline_stages.py": (["--clips", "4", "--batch-size", "2", "--warmup", "1", "--batches", "1"],
                                 {"read_ms_per_sample", "flac_ms_per_sample", "log_mel_ms_per_sample",
                                  "video_ms_per_sample", "full_ms_per_sample"}),
    "bench_model.py": (["--variants", "xkd", "--iters", "1", "--warmup", "1", "--batch-size", "2",
                        "--attention-batch", "2"],
                       {"clips_per_s", "gflops_per_clip", "tflops_per_s", "sdpa_speedup_attention",
                        "sdpa_speedup_step", "device", "preset", "command"}),
    "mmd_diagonal.py": (["--preset", "xkd_micro", "--batch-size", "2"], {"student", "teacher", "command"}),
    "bench_video_decode.py": (["--clips", "8", "--batch-size", "2", "--pipelines", "1,2", "--warmup", "1",
                               "--batches", "2"], {"best_clips_per_s", "results", "device", "command"}),
    "bench_preflight.py": (["--shards", "20", "--samples-per-shard", "3", "--runs", "1"],
                           {"shards", "per_shard_us"}),
    "bench_eval.py": (["--videos", "2", "--passes", "1", "--clips", "1", "--batch-size", "2"],
                      {"features_clips_per_s", "features_videos_per_s", "device", "preset"}),
    "bench_finetune.py": (["--clips", "4", "--steps", "2", "--warmup", "1", "--batch-size", "2"],
                          {"clips_per_s", "step_ms", "device", "preset", "backbone_preset"}),
    "bench_train.py": (["--clips", "4", "--steps", "2", "--warmup", "1", "--batch-size", "2", "--profile", "2"],
                       {"e2e_clips_per_s", "model_only_clips_per_s", "data_wait_fraction", "device", "preset",
                        "model_only_profile"}),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_prints_its_json_last(script):
    args, keys = CASES[script]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert keys <= set(last), sorted(keys - set(last))
    assert all(last[k] > 0 for k in keys if isinstance(last[k], (int, float)))
    if script == "bench_train.py":  # the profiled steps, split into the loop's phases
        profile = last["model_only_profile"]
        phases = {name: times["host_ms"] for name, times in profile["phases"].items()}
        assert {"to_device", "forward", "loss_check", "backward", "gradient_check", "optimizer_step", "after_step",
                "bookkeeping"} == set(phases)
        assert phases["forward"] > 0 and phases["backward"] > 0
        assert sum(phases.values()) <= profile["step_ms"] * 1.01  # the phases do not overlap



def test_bench_model_with_compiled_blocks_counts_the_eager_flops(tmp_path):
    """--compile: the step's FLOPs, which its TFLOP/s and share of the peak rest on, are those of the
    eager model (the counter sees the matrix products inside the compiled blocks too)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_model import build, count_flops
    from xkd.models.synthetic import synthetic_batch

    out = tmp_path / "compiled.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_model.py"), "--variants", "xkd",
                           "--iters", "1", "--warmup", "1", "--batch-size", "2", "--compile", "default",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    compiled = json.loads(out.read_text())
    assert compiled["compile"] == "default" and "sdpa_speedup_step" not in compiled  # eager-only comparison
    cfg, model, _ = build("tiny", "xkd", torch.device("cpu"))
    eager_gflops = count_flops(model, synthetic_batch(cfg.data, 2), torch.device("cpu")) / 2 / 1e9
    assert compiled["gflops_per_clip"] == pytest.approx(eager_gflops, rel=1e-3)
