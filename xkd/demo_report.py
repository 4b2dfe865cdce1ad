"""What `xkd demo` shows at its end: the held-out SVM accuracies of the pretrained backbones beside
the same backbones at random initialisation (and, with --finetune, their held-out accuracies after
fine-tuning), as tables and as a PNG with the pretraining curves (loss terms and, when the monitor
ran, kNN top-1) next to the accuracies."""
from __future__ import annotations

import json
from pathlib import Path

MODALITIES = ("video", "audio")


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(loss records, kNN monitor records) of a run's metrics.jsonl."""
    losses, knn = [], []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses.append(record)
        elif "knn_top1_video" in record or "knn_top1_audio" in record:
            knn.append(record)
    return losses, knn


def accuracy_table(accuracies: dict[str, dict[str, float]], modalities: tuple[str, ...] = MODALITIES) -> str:
    """accuracies[backbone][modality] -> top-1 (percent); backbones 'random-init' and 'pretrained'."""
    lines = [f"{'modality':<9} {'random init':>12} {'pretrained':>11} {'gain':>7}"]
    for modality in modalities:
        random, trained = accuracies["random-init"][modality], accuracies["pretrained"][modality]
        lines.append(f"{modality:<9} {random:>11.1f}% {trained:>10.1f}% {trained - random:>+6.1f}")
    return "\n".join(lines)


def write_figure(path: str | Path, run_dir: str | Path, accuracies: dict[str, dict[str, float]],
                 chance: float, finetuned: dict[str, dict[str, float]] | None = None) -> Path:
    """A PNG: the loss terms over steps, kNN top-1 over steps (if any), held-out SVM top-1 bars and,
    when given, held-out top-1 bars after fine-tuning (finetuned[backbone]['video'])."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    losses, knn = read_metrics(run_dir)
    panels = 2 + bool(knn) + bool(finetuned)
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), layout="constrained")
    steps = [r["step"] for r in losses]
    for term in ("loss", "loss_recon", "loss_kd", "loss_align"):
        axes[0].plot(steps, [r[term] for r in losses], marker=".", label=term)
    axes[0].set(title="pretraining losses", xlabel="step", yscale="log")  # the KD term is ~10x the others
    axes[0].legend()
    if knn:
        for modality in MODALITIES:
            axes[1].plot([r["step"] for r in knn], [r[f"knn_top1_{modality}"] for r in knn], marker="o", label=modality)
        axes[1].axhline(chance, color="grey", linestyle=":", label="chance")
        axes[1].set(title="kNN top-1 on the held-out split (%)", xlabel="step")
        axes[1].legend()
    _bars(axes[1 + bool(knn)], accuracies, MODALITIES, chance, "held-out SVM top-1 (%, C by cross-validation)")
    if finetuned:
        _bars(axes[-1], finetuned, ("video",), chance, "held-out top-1 after fine-tuning (%)")
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _bars(axis, accuracies: dict[str, dict[str, float]], modalities: tuple[str, ...], chance: float,
          title: str) -> None:
    """Random-init and pretrained top-1 side by side for each modality, with the chance level."""
    width = 0.38
    for offset, backbone in ((-width / 2, "random-init"), (width / 2, "pretrained")):
        values = [accuracies[backbone][m] for m in modalities]
        drawn = axis.bar([i + offset for i in range(len(modalities))], values, width, label=backbone)
        axis.bar_label(drawn, fmt="%.1f")
    axis.axhline(chance, color="grey", linestyle=":", label="chance")
    axis.set_xticks(range(len(modalities)), modalities)
    axis.set(title=title, ylim=(0, 105))
    axis.legend(loc="upper left")
