"""`xkd bench`: one run measures every stage through the benchmark scripts' functions and writes
report.json, report.md and charts; a stage that fails is reported while the others run; `compare`
gives the change per figure; refusals are usage errors (exit 2)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.suite import stages as bench_stages
from benchmarks.suite.figures import StageResult, summarise
from benchmarks.suite.output import write_report
from benchmarks.suite.run import run_bench
from benchmarks.suite.settings import BenchSettings

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def settings(tmp_path, stages, **changes) -> BenchSettings:
    values = dict(device="cpu", preset="tiny", stages=tuple(stages), out=tmp_path / "out", repeats=2, threads=2,
                  quick=True)
    return BenchSettings(**{**values, **changes})


def fixed_stage(figures: dict[str, tuple[list[float], bool]]):
    """A stage function that 'measures' the given samples: {name: (samples, higher_is_better)}."""
    def measure(_context) -> StageResult:
        result = StageResult()
        for name, (samples, higher) in figures.items():
            unit = "ratio" if name.startswith("ratio") else "ms" if name.endswith("_ms") else "clips/s"
            result.add(name, name.replace("_", " "), unit, samples, higher)
        return result

    return measure


def test_a_figure_is_the_median_and_spread_of_its_repeats():
    samples = [4.0, 1.0, 3.0, 10.0, 2.0]
    figure = summarise(samples)
    q1, median, q3 = np.percentile(samples, [25, 50, 75])  # numpy's default (linear) is the inclusive method
    assert (figure["median"], figure["q1"], figure["q3"]) == (median, q1, q3)
    assert (figure["min"], figure["max"], figure["n"], figure["samples"]) == (1.0, 10.0, 5, samples)
    assert summarise([7.0]) == {"median": 7.0, "min": 7.0, "max": 7.0, "q1": 7.0, "q3": 7.0, "n": 1, "samples": [7.0]}
    with pytest.raises(ValueError):
        summarise([])


@pytest.mark.slow
def test_a_quick_cpu_bench_writes_a_complete_report(tmp_path):
    """Every stage on the tiny preset with the smallest workloads, as a user runs it (a process of its own:
    the train stage starts torch.distributed)."""
    out, history = tmp_path / "out", tmp_path / "history.jsonl"
    command = [sys.executable, "-m", "xkd", "bench", "--device", "cpu", "--preset", "tiny", "--quick",
               "--repeats", "2", "--threads", "2", "--out", str(out), "--record", "--history", str(history)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    for stage in ("shards", "pipeline", "model", "train", "eval"):  # progress, stage by stage
        assert f"[bench {stage}] stage" in done.stdout

    report = json.loads((out / "report.json").read_text())
    assert report["command"].startswith(
        "xkd bench --device cpu --preset tiny --stages shards,pipeline,model,train,eval --repeats 2")
    assert len(report["commit"]["sha"]) == 40
    assert report["machine"]["cores"] and report["machine"]["cpu"] and "torch" in report["machine"]["libraries"]
    expected = {"shards": {"realtime_factor_per_worker", "bare_transcode_realtime_factor", "share_of_bare_transcode"},
                "pipeline": {"dali_clips_per_s", "reference_clips_per_s", "ratio_dali_reference"},
                "model": {"clips_per_s", "gflops_per_clip", "tflops_per_s"},
                "train": {"e2e_clips_per_s", "model_only_clips_per_s", "ratio_e2e_model_only", "data_wait_share"},
                "eval": {"clips_per_s", "videos_per_s"}}
    for stage, names in expected.items():
        entry = report["stages"][stage]
        assert entry["status"] == "ok", entry
        assert set(entry["figures"]) == names
        for figure in entry["figures"].values():
            assert figure["min"] <= figure["q1"] <= figure["median"] <= figure["q3"] <= figure["max"]
            assert figure["min"] > 0 and figure["n"] == len(figure["samples"])
    for stage, ratio, top, bottom in (("shards", "share_of_bare_transcode", "realtime_factor_per_worker",
                                       "bare_transcode_realtime_factor"),
                                      ("pipeline", "ratio_dali_reference", "dali_clips_per_s", "reference_clips_per_s"),
                                      ("train", "ratio_e2e_model_only", "e2e_clips_per_s", "model_only_clips_per_s")):
        figures = report["stages"][stage]["figures"]  # a ratio is taken within each repeat, not of the medians
        assert figures[ratio]["n"] == 2
        assert figures[ratio]["samples"] == pytest.approx(
            [a / b for a, b in zip(figures[top]["samples"], figures[bottom]["samples"])], rel=1e-4)
    model = report["stages"]["model"]
    assert model["figures"]["tflops_per_s"]["samples"] == pytest.approx(
        [model["figures"]["gflops_per_clip"]["median"] * c / 1e3 for c in model["figures"]["clips_per_s"]["samples"]],
        rel=1e-4)
    assert [p["batch_size"] for p in model["series"]["clips_per_s_by_batch"]["points"]] == [1, 2]
    assert set(model["not_measured"]) == {"bf16_matmul_peak_tflops", "share_of_bf16_peak"}
    assert all("no GPU" in m["why"] for m in model["not_measured"].values())
    features = report["stages"]["eval"]["figures"]  # 2 clips per video with --quick, 1 crop each
    assert features["clips_per_s"]["samples"] == pytest.approx(
        [2 * videos for videos in features["videos_per_s"]["samples"]], rel=1e-4)
    assert [goal["verdict"] for goal in report["goals"]] == ["not judged"] * 3

    markdown = (out / "report.md").read_text()
    assert report["command"] in markdown
    for entry in report["stages"].values():
        for figure in entry.get("figures", {}).values():
            assert f"| {figure['label']} |" in markdown
    charts = report["charts"]
    assert set(charts) == {"throughput", "batch_size", "e2e_vs_model"}
    for chart in charts.values():
        assert (out / chart["file"]).read_bytes().startswith(PNG)
        assert f"]({chart['file']})" in markdown
    assert [json.loads(line) for line in history.read_text().splitlines()] == [report]


def test_a_failing_stage_is_reported_and_the_others_still_run(tmp_path, run_cli, capsys, monkeypatch):
    def broken(_context):
        raise RuntimeError("disk on fire")

    def stopped(_context):
        raise SystemExit("could not make the benchmark shards")  # how the benchmark scripts stop

    monkeypatch.setitem(bench_stages.STAGE_FUNCTIONS, "shards", broken)
    monkeypatch.setitem(bench_stages.STAGE_FUNCTIONS, "pipeline", stopped)
    monkeypatch.setitem(bench_stages.STAGE_FUNCTIONS, "model", fixed_stage({"clips_per_s": ([3.0, 5.0], True)}))
    monkeypatch.setitem(sys.modules, "xkd.eval.extract", None)  # eval: 'not available', at once
    out = tmp_path / "out"
    status = run_cli("bench", "--device", "cpu", "--quick", "--repeats", "2", "--out", out,
                     "--stages", "shards,pipeline,model,eval")
    assert status == 1
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["shards", "pipeline", "model", "eval"]
    assert stages["shards"]["status"] == "failed" and stages["shards"]["error"] == "RuntimeError: disk on fire"
    assert any("disk on fire" in line for line in stages["shards"]["traceback"])
    assert stages["pipeline"]["error"] == "SystemExit: could not make the benchmark shards"
    assert stages["model"]["status"] == "ok" and stages["model"]["figures"]["clips_per_s"]["median"] == 4.0
    assert stages["eval"]["status"] == "not available"  # the real stage, after the failures
    markdown = (out / "report.md").read_text()
    assert "failed: RuntimeError: disk on fire" in markdown and "| model | clips per s | 4 | 3 – 5 |" in markdown
    assert "FAILED" in capsys.readouterr().out


def test_shards_that_cannot_be_made_fail_each_stage_that_reads_them_once(tmp_path, monkeypatch):
    calls = []

    def cannot(*args):
        calls.append(args)
        raise SystemExit("could not make the benchmark shards")

    monkeypatch.setattr("benchmarks.bench_pipeline.make_shards", cannot)
    report = run_bench(settings(tmp_path, ["pipeline", "train"]), say=lambda message: None)
    assert len(calls) == 1  # the second stage is told at once, not after a second attempt
    assert report["stages"]["pipeline"]["error"] == "SystemExit: could not make the benchmark shards"
    assert report["stages"]["train"]["error"] == ("RuntimeError: no shard set: SystemExit: could not make the "
                                                  "benchmark shards")


def test_without_feature_extraction_the_eval_stage_says_it_is_not_available(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "xkd.eval.extract", None)  # as in a version of xkd without it
    entry = run_bench(settings(tmp_path, ["eval"]), say=lambda message: None)["stages"]["eval"]
    assert entry["status"] == "not available" and "xkd.eval.extract" in entry["reason"]


def test_goals_are_judged_on_a_gpu_run_where_they_apply():
    from benchmarks.suite.goals import judge

    stages = {"pipeline": {"status": "ok", "figures": {"dali_clips_per_s": {"median": 1500.0}}},
              "model": {"status": "ok", "figures": {"share_of_bf16_peak": {"median": 0.5}}},
              "train": {"status": "failed", "error": "RuntimeError: NCCL timeout"}}
    rows = judge({"settings": {"device": "cuda", "preset": "base"}, "stages": stages})
    assert [(r["verdict"], r.get("median")) for r in rows] == [("missed", 1500.0), ("met", 0.5), ("not judged", None)]
    assert rows[2]["why"] == "stage train: failed: RuntimeError: NCCL timeout"
    rows = judge({"settings": {"device": "cuda", "preset": "tiny"}, "stages": stages})
    assert [r["verdict"] for r in rows] == ["missed", "not judged", "not judged"] and "ViT-B" in rows[1]["why"]
    rows = judge({"settings": {"device": "cpu", "preset": "base"}, "stages": stages})
    assert {r["verdict"] for r in rows} == {"not judged"} and "per GPU" in rows[0]["why"]


def report_pair(tmp_path) -> tuple[Path, Path]:
    """Two reports from stages with fixed samples, written as the command writes them."""
    a = run_bench(settings(tmp_path, ["pipeline", "model"]), say=lambda message: None, stage_functions={
        "pipeline": fixed_stage({"dali_clips_per_s": ([100.0, 90.0, 110.0], True),
                                 "ratio_dali_reference": ([2.0, 2.1, 1.9], True)}),
        "model": fixed_stage({"clips_per_s": ([10.0, 9.0, 11.0], True), "step_ms": ([100.0, 99.0, 101.0], False)})})

    def broken(_context):
        raise RuntimeError("out of memory")

    b = run_bench(settings(tmp_path, ["pipeline", "model", "train"]), say=lambda message: None, stage_functions={
        "pipeline": fixed_stage({"dali_clips_per_s": ([150.0, 140.0, 160.0], True),
                                 "ratio_dali_reference": ([2.05, 2.0, 2.2], True)}),
        "model": fixed_stage({"clips_per_s": ([8.0, 7.5, 8.5], True), "step_ms": ([125.0, 124.0, 126.0], False)}),
        "train": broken})
    write_report(a, tmp_path / "a")
    write_report(b, tmp_path / "b")
    return tmp_path / "a", tmp_path / "b" / "report.json"


def table_rows(printed: str) -> dict[str, list[str]]:
    """The rows of compare's table, by their first word."""
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("figure"))
    return {line.split()[0]: line.split()[1:] for line in lines[start + 1:] if line.strip()}


def test_compare_prints_the_change_of_every_figure(tmp_path, run_cli, capsys):
    a, b = report_pair(tmp_path)
    assert run_cli("bench", "compare", a, b) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["pipeline.dali_clips_per_s"] == ["100", "150", "+50.0%", "(better)"]
    assert rows["pipeline.ratio_dali_reference"] == ["200.0%", "205.0%", "+2.5%", "(within", "spread)"]
    assert rows["model.clips_per_s"] == ["10", "8", "-20.0%", "(worse)"]
    assert rows["model.step_ms"] == ["100", "125", "+25.0%", "(worse)"]  # lower is better
    assert rows["train"] == ["(stage)", "not", "run", "failed"]


def test_a_chart_that_cannot_be_drawn_costs_no_figure(tmp_path, monkeypatch):
    def broken(report, path):
        raise ValueError("no such font")

    monkeypatch.setattr("benchmarks.suite.charts.throughput_chart", broken)
    a, _ = report_pair(tmp_path)
    report = json.loads((a / "report.json").read_text())
    assert report["charts"]["throughput"] == {"not_drawn": "drawing failed: ValueError: no such font"}
    assert report["charts"]["batch_size"] == {"not_drawn": "the model stage measured no batch size"}
    assert report["stages"]["pipeline"]["figures"]["dali_clips_per_s"]["median"] == 100.0
    assert "not drawn: drawing failed: ValueError: no such font" in (a / "report.md").read_text()
    assert not (a / "throughput.png").exists()


def test_compare_reads_a_line_of_a_history_file_and_refuses_what_is_not_a_report(tmp_path, run_cli, capsys):
    a, b = report_pair(tmp_path)
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps(json.loads(path.read_text())) + "\n" for path in (a / "report.json", b)))
    assert run_cli("bench", "compare", f"{history}:1", f"{history}:-1") == 0
    assert table_rows(capsys.readouterr().out)["pipeline.dali_clips_per_s"][:2] == ["100", "150"]
    assert run_cli("bench", "compare", f"{history}:2", f"{history}:-2") == 0  # the other way round
    assert table_rows(capsys.readouterr().out)["pipeline.dali_clips_per_s"][:2] == ["150", "100"]
    (tmp_path / "other.json").write_text('{"dali_clips_per_s": 50}')
    for spec, problem in ((f"{history}:3", "has 2 line(s), no line 3"), (str(history), "name one of its lines"),
                          (str(tmp_path / "other.json"), "not an `xkd bench` report"),
                          (str(tmp_path / "none"), "no such report file")):
        assert run_cli("bench", "compare", spec, b) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and problem in err and spec.split(":")[0] in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")
def test_cuda_without_a_gpu_is_refused(tmp_path, run_cli, capsys):
    assert run_cli("bench", "--device", "cuda", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda" in err and "--device cpu" in err
    assert not (tmp_path / "out").exists()


def test_usage_errors_are_refused_before_any_work(tmp_path, run_cli, capsys):
    (tmp_path / "file").write_text("")
    for args, problem in ((["--shards", tmp_path / "missing"], str(tmp_path / "missing")),
                          (["--out", tmp_path / "file"], "exists and is not a folder"),
                          (["--history", tmp_path / "h.jsonl"], "give --record too")):
        assert run_cli("bench", "--device", "cpu", "--stages", "model", *args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and problem in err, err
    with pytest.raises(SystemExit) as stop:
        run_cli("bench", "--stages", "model,nonsense")
    assert stop.value.code == 2 and "unknown stage(s) nonsense" in capsys.readouterr().err
