"""`xkd demo`: the main job, end to end, on a built-in labelled sample set. Makes synthetic videos in
which sound and picture carry the same class (four classes, train and held-out splits, plus inputs
that must be rejected), shards both splits and verifies them, pretrains XKD-tiny on the train split
with `xkd pretrain` (preset xkd_demo: DALI pipeline, DeepSpeed engine, EMA teachers, checkpoints, the
kNN monitor on the held-out split), exports the backbones, extracts features of both splits with
`xkd eval features`, and scores them with `xkd eval svm` (C by cross-validation on train), beside
the same encoders at random initialisation. With --finetune it then fine-tunes the pretrained and the
random-init video backbones end to end with `xkd finetune` (preset ft_demo) and scores both on the
held-out split. Prints the tables and writes demo.png."""
from __future__ import annotations

import os
import sys
import tempfile

from xkd.commands.checks import positive_int, unwritable_folder
from xkd.demo import make_sample_set

PRESET = "xkd_demo"
FINETUNE_PRESET = "ft_demo"
MODALITIES = ("video", "audio")


def register(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="run the pipeline end to end on a small built-in sample set")
    demo.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    demo.add_argument("--workers", type=positive_int, default=2, help="shard-making processes (default: 2)")
    demo.add_argument("--steps", type=positive_int, default=None,
                      help="stop pretraining after this many steps (default: the preset's whole schedule)")
    demo.add_argument("--train-per-class", type=positive_int, default=100, help="training clips per class (default: 100)")
    demo.add_argument("--test-per-class", type=positive_int, default=50, help="held-out clips per class (default: 50)")
    demo.add_argument("--role", choices=["teacher", "student"], default="teacher",
                      help="which pretrained backbones to score (default: teacher)")
    demo.add_argument("--finetune", action="store_true",
                      help="then fine-tune the pretrained and the random-init video backbones (preset ft_demo: about "
                           "2.5 minutes for both on two CPU cores) and score both on the held-out split")
    demo.add_argument("--finetune-epochs", type=positive_int, default=None,
                      help="fine-tuning epochs (default: the ft_demo preset's)")
    demo.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from shards.synthetic import CLIP_CLASSES
    from xkd.commands import main
    from xkd.config import load_config
    from xkd.finetune.config import load_finetune_config

    problem = args.out and unwritable_folder(args.out)
    if problem:
        print(f"xkd demo: --out {problem}", file=sys.stderr)
        return 2
    folder = args.out or tempfile.mkdtemp(prefix="xkd-demo-")
    print(f"[demo] making the built-in sample set in {folder}")
    manifest = make_sample_set(folder, args.train_per_class, args.test_per_class, workers=args.workers)
    shard_dir = os.path.join(folder, "shards")
    train_shards, test_shards = os.path.join(shard_dir, "train"), os.path.join(shard_dir, "test")
    run_dir, backbones = os.path.join(folder, "run"), os.path.join(folder, "backbones")
    train_clips = args.train_per_class * len(CLIP_CLASSES)
    pretrain = ["pretrain", "--config", PRESET, "--shards", train_shards, "--out", run_dir, "--resume", "auto"]
    if args.steps:
        pretrain += ["--set", f"train.max_steps={args.steps}"]
    if train_clips < load_config(PRESET).data.batch_size:  # a small set still makes a whole batch
        pretrain += ["--set", f"data.batch_size={train_clips}"]
    knn_every = max(1, load_config(PRESET).train.epochs // 3)  # three readings over the schedule
    pretrain += ["--set", f"train.knn_every_epochs={knn_every}", "--set", f"train.knn_train_shards={train_shards}",
                 "--set", f"train.knn_test_shards={test_shards}"]
    workers = ["--workers", str(args.workers)]
    steps = [
        ["shards", "create", manifest, train_shards, "--split", "train", "--samples-per-shard", "100", *workers],
        ["shards", "create", manifest, test_shards, "--split", "test", "--samples-per-shard", "100", *workers],
        ["shards", "verify", train_shards, *workers],
        ["shards", "verify", test_shards, *workers],
        pretrain,
        ["export", run_dir, backbones],
    ]
    features = os.path.join(folder, "features")
    results = os.path.join(folder, "results")
    # (the backbone, if any, then the options): `xkd eval features` takes its paths together
    sources = {"pretrained": ([backbones], ["--role", args.role]), "random-init": ([], ["--random-init", PRESET])}
    for name, (backbone, options) in sources.items():
        for split, shards in (("train", train_shards), ("test", test_shards)):
            steps.append(["eval", "features", *backbone, shards, os.path.join(features, name, split), *options,
                          "--config", PRESET])
        for modality in MODALITIES:
            steps.append(["eval", "svm", os.path.join(features, name, "train"), os.path.join(features, name, "test"),
                          "--modality", modality, "--dataset", "demo", "--out",
                          os.path.join(results, f"{name}_{modality}.json")])
    trainings = {tuple(pretrain): run_dir}  # the steps that train, and their run folders
    finetuned = {}  # the result file of each fine-tuning run
    if args.finetune:
        tuning = load_finetune_config(FINETUNE_PRESET)
        epochs = args.finetune_epochs or tuning.train.epochs
        for name, (backbone, options) in sources.items():
            out = os.path.join(folder, "finetune", name)
            finetuned[name] = os.path.join(out, "result.json")
            if _finetuned(finetuned[name], epochs):  # (`--resume auto` would test a finished run again)
                print(f"[demo] {out}: already complete")
                continue
            # validated after the last epoch only: the classifier kept is not chosen on the held-out split
            finetune = ["finetune", "--config", FINETUNE_PRESET, *[f"--backbone={path}" for path in backbone],
                        *options, "--train", train_shards, "--val", test_shards, "--out", out, "--dataset", "demo",
                        "--resume", "auto", "--set", f"train.epochs={epochs}",
                        "--set", f"train.eval_every_epochs={epochs}"]
            if train_clips < tuning.data.batch_size:
                finetune += ["--set", f"data.batch_size={train_clips}"]
            steps.append(finetune)
            trainings[tuple(finetune)] = out
    for step in steps:
        print(f"[demo] xkd {' '.join(step)}", flush=True)
        status = main(step)
        if status:
            print(f"[demo] step failed with exit code {status}", file=sys.stderr)
            return status
        if tuple(step) in trainings and _stopped_by_signal(trainings[tuple(step)]):  # a checkpoint is saved
            stage = {"pretrain": "pretraining", "finetune": "fine-tuning"}[step[0]]
            print(f"[demo] {stage} was stopped by a signal; `xkd demo --out {folder}"
                  f"{' --finetune' if args.finetune else ''}` continues it", file=sys.stderr)
            return 143
    return _summary(folder, run_dir, results, len(CLIP_CLASSES), finetuned)


def _stopped_by_signal(run_dir: str) -> bool:
    """Whether the run's last event is a stop (SIGTERM: `xkd pretrain` saves a checkpoint and exits 0)."""
    import json

    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        events = [json.loads(line).get("event") for line in handle if '"event"' in line]
    return bool(events) and events[-1] == "stopped"


def _finetuned(result: str, epochs: int) -> bool:
    """Whether a fine-tuning run has written its result after training for `epochs` epochs."""
    from xkd.eval.results import read_results

    return os.path.exists(result) and read_results(result)[0].settings["epochs"] == epochs


def _summary(folder: str, run_dir: str, results: str, classes: int, finetuned: dict[str, str]) -> int:
    from xkd.demo_report import accuracy_table, read_metrics, write_figure
    from xkd.eval.results import read_results

    losses, knn = read_metrics(run_dir)
    first, last = losses[0], losses[-1]
    print(f"[demo] pretraining: loss {first['loss']:.3f} at step {first['step']} -> {last['loss']:.3f} at step "
          f"{last['step']} (recon {last['loss_recon']:.3f}, kd {last['loss_kd']:.3f}, align {last['loss_align']:.3f})")
    for record in knn:
        print(f"[demo] kNN top-1 on the held-out split at step {record['step']}: video "
              f"{record['knn_top1_video']:.1f}%, audio {record['knn_top1_audio']:.1f}%")
    accuracies = {name: {m: next(r.top1 for r in read_results(os.path.join(results, f"{name}_{m}.json"))
                                 if r.protocol == "svm-cv") for m in MODALITIES}
                  for name in ("random-init", "pretrained")}
    print("[demo] held-out SVM top-1 (C by cross-validation on the train split; chance "
          f"{100 / classes:.0f}%):\n{accuracy_table(accuracies)}")
    tuned = {name: {"video": read_results(result)[0].top1} for name, result in finetuned.items()}
    if tuned:
        print(f"[demo] held-out top-1 after fine-tuning (video; chance {100 / classes:.0f}%):\n"
              f"{accuracy_table(tuned, ('video',))}")
    figure = write_figure(os.path.join(folder, "demo.png"), run_dir, accuracies, 100 / classes, tuned)
    print(f"[demo] figure: {figure}")
    print(f"[demo] done: everything is in {folder}")
    return 0
