"""How far our MMD (exact zero diagonal, docs/method.md B4) reads from the authors' formula at initialisation.

    python benchmarks/mmd_diagonal.py                    # ViT-B (xkd_base), batch 4, fp32, this machine
    python benchmarks/mmd_diagonal.py --preset xkd_tiny --batch-size 8

The authors expand ||x - y||^2 = ||x||^2 + ||y||^2 - 2 x.y and keep whatever the expansion leaves on
the diagonal of a set's distances to itself. On 8192-d LayerNorm-ed logits (||x||^2 ~ 8192) that is
rounding noise of a few 1e-3 in fp32, which exp(-1000 d) and exp(-100 d) turn into lost kernel mass:
their MMD reads lower than the exact V-statistic. Reported for the student and the teacher logits of
a freshly built model on normal-noise views: the diagonal noise and both MMD values. The last line
printed is one JSON object."""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script from a checkout: its packages (benchmarks/ too) without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xkd.config import load_config  # noqa: E402
from xkd.losses import gaussian_kernel_sum, mmd  # noqa: E402
from xkd.models import build_xkd  # noqa: E402
from xkd.models.synthetic import synthetic_batch  # noqa: E402


def self_distance_diagonal(x: torch.Tensor) -> torch.Tensor:
    """What the expansion leaves where the distance is exactly zero."""
    norms = x.pow(2).sum(-1, keepdim=True)
    return (norms + norms.T - 2.0 * x @ x.T).diagonal()


def authors_mmd(x: torch.Tensor, y: torch.Tensor, gammas) -> torch.Tensor:
    """Our kernel without its zeroed diagonal (it zeroes only when both arguments are one tensor):
    the authors' formula, expansion noise and all."""
    return (gaussian_kernel_sum(x, x.clone(), gammas).mean() + gaussian_kernel_sum(y, y.clone(), gammas).mean()
            - 2.0 * gaussian_kernel_sum(x, y, gammas).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="xkd_base")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    cfg = load_config(args.preset)
    model = build_xkd(cfg).eval()
    batch = synthetic_batch(cfg.data, args.batch_size, generator=torch.Generator().manual_seed(args.seed))
    gammas = cfg.loss.mmd_gammas
    with torch.no_grad():
        students = model.students(batch.video, batch.audio)
        index = cfg.model.teacher_view
        teachers = model.teachers(batch.video[index], batch.audio[index])
    result = {"command": shlex.join(["python", "benchmarks/mmd_diagonal.py", *(sys.argv[1:] if argv is None else argv)]),
              "preset": args.preset, "batch_size": args.batch_size, "dtype": "float32",
              "machine": platform.machine(), "torch": torch.__version__}
    for name, out in (("student", students), ("teacher", teachers)):
        x, y = out["video_logits"].float(), out["audio_logits"].float()
        noise = torch.cat([self_distance_diagonal(x), self_distance_diagonal(y)]).abs()
        ours, theirs = mmd(x, y, gammas).item(), authors_mmd(x, y, gammas).item()
        result[name] = {"rows": [len(x), len(y)], "dim": x.shape[1],
                        "mean_squared_norm": round(x.pow(2).sum(-1).mean().item(), 1),
                        "diagonal_noise_mean": round(noise.mean().item(), 6),
                        "diagonal_noise_max": round(noise.max().item(), 6),
                        "mmd_ours": round(ours, 4), "mmd_authors_formula": round(theirs, 4),
                        "ours_over_authors": round(ours / theirs, 4)}
        print(f"{name}: {result[name]}", flush=True)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
