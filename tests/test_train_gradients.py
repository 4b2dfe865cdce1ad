"""Per-parameter clipping reads and scales the full reduced gradient of each parameter however
DeepSpeed holds it: two processes under torchrun build a small model under ZeRO-0, 1, 2 and 3 in turn
(layers sized so that parameters straddle the two ranks' partitions), clip, and compare every clipped
gradient with the clipping of the all-rank mean gradient computed without DeepSpeed."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SCRIPT = r"""
import json, sys, torch
from xkd.train.distributed import finish_process, start_process
process = start_process()
import deepspeed
from deepspeed.utils import safe_get_full_grad
from xkd.train import gradients
from xkd.train.gradients import check_and_clip


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 5), torch.nn.Linear(5, 3))


def inputs(rank):
    generator = torch.Generator().manual_seed(rank)
    return torch.randn(2, 7, generator=generator), torch.randn(2, 3, generator=generator)


def loss(net, rank):
    x, y = inputs(rank)
    return (net(x) - y).pow(2).mean()


# the reference: the mean of both ranks' gradients, each parameter clipped on its own
reference = model()
(sum(loss(reference, rank) for rank in range(process.world_size)) / process.world_size).backward()
grads = [p.grad.clone() for p in reference.parameters()]
norms = torch.stack([g.norm() for g in grads])
max_norm = norms.sort().values[1].item() * 1.001  # all but the two smallest are over the limit
flags = [i != 2 for i in range(len(grads))]  # and one is left alone whatever its norm
expected = [g * min(1.0, max_norm / (n.item() + 1e-6)) if flag else g for g, n, flag in zip(grads, norms, flags)]

results = {}
for stage in (0, 1, 2, 3):
    net = model()
    groups = [{"params": [p for p in net.parameters() if p.ndim > 1], "weight_decay": 0.1},
              {"params": [p for p in net.parameters() if p.ndim == 1], "weight_decay": 0.0}]
    order = [p for group in groups for p in group["params"]]
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
              "zero_optimization": {"stage": stage}, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=net, optimizer=torch.optim.AdamW(groups, lr=0.0), config=config,
                                      dist_init_required=False)
    engine.backward(loss(engine, process.rank))
    params = list(engine.module.parameters())
    check = check_and_clip(params, flags, max_norm)
    worst = max(((safe_get_full_grad(p).float() - e).abs().max() / e.abs().max()).item()
                for p, e in zip(params, expected))
    results[stage] = {"layout": check.layout, "finite": check.finite, "clipped": check.clipped,
                      "worst_relative_error": worst}
    engine.step()
    engine.destroy()
# ranks that hold their gradients differently learn it from the same all-reduce, on every rank
pieces = [torch.ones(3), None]
_, same = gradients._global_norms(pieces, "full" if process.rank == 0 else "zero3", torch.device("cpu"))
_, same_again = gradients._global_norms(pieces, "zero3", torch.device("cpu"))
results["disagreement_found"] = not bool(same) and bool(same_again)
if process.rank == 0:
    print(json.dumps({"results": results, "expected_clipped": sum(
        flag and n.item() > max_norm for n, flag in zip(norms, flags))}))
finish_process()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_every_zero_stage_clips_the_full_reduced_gradient_of_each_parameter(tmp_path):
    script = tmp_path / "clip.py"
    script.write_text(SCRIPT)
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env = {**inherited, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                           str(script)], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"results"')))
    assert report["results"].pop("disagreement_found") is True
    results = {int(stage): r for stage, r in report["results"].items()}
    assert {stage: r["layout"] for stage, r in results.items()} == {0: "full", 1: "fragments", 2: "fragments",
                                                                     3: "zero3"}
    assert report["expected_clipped"] >= 2
    for stage, result in results.items():
        assert result["finite"] and result["clipped"] == report["expected_clipped"], (stage, result)
        assert result["worst_relative_error"] < 1e-5, (stage, result)
