"""`xkd eval features`: pooled features of every clip and crop, equal to a direct forward pass,
identical on re-runs, resumable by chunk; backbones that do not fit are refused with exit 2."""
import json

import numpy as np
import pytest
import torch

from dali_pipelines.evaluation import eval_loader
from shards.synthetic import write_clip
from xkd.backbone_io import save_backbone
from xkd.config import load_config
from xkd.eval.backbones import resolve_backbones
from xkd.eval.extract import FeatureExtraction
from xkd.eval.feature_file import load_features
from xkd.models.encoders import build_encoder

MICRO = ["--config", "xkd_micro", "--set", "data.eval_size=32", "--clips", "2", "--crops", "3", "--batch-size", "2",
         "--chunk-videos", "3"]


@pytest.fixture(scope="module")
def eval_shards(tmp_path_factory):
    """6 labelled clips (two classes) in 3 shards of 2, video and audio, 32 px."""
    from xkd.commands import main

    root = tmp_path_factory.mktemp("eval-features")
    for index in range(6):
        label = "tick" if index % 2 else "tock"
        (root / "videos" / label).mkdir(parents=True, exist_ok=True)
        write_clip(root / "videos" / label / f"clip{index}.mp4", seconds=2.5, seed=index, width=96, height=64)
    shards = root / "shards"
    assert main(["shards", "create", str(root / "videos"), str(shards), "--samples-per-shard", "2",
                 "--short-side", "32", "--quiet", "--workers", "1"]) == 0
    return shards


@pytest.fixture(scope="module")
def micro_export(tmp_path_factory):
    """An export folder with the micro preset's four backbones (seeded random weights)."""
    folder = tmp_path_factory.mktemp("export")
    model = load_config("xkd_micro").model
    for seed, (modality, role) in enumerate([(m, r) for m in ("video", "audio") for r in ("student", "teacher")]):
        torch.manual_seed(100 + seed)
        save_backbone(folder / f"{modality}_{role}", build_encoder(modality, model), modality, model)
    return folder


def test_features_equal_a_direct_forward_pass_and_repeat_exactly(eval_shards, micro_export, run_cli, tmp_path):
    assert run_cli("eval", "features", micro_export, eval_shards, tmp_path / "a", *MICRO) == 0
    assert run_cli("eval", "features", micro_export, eval_shards, tmp_path / "b", *MICRO) == 0
    meta = json.loads((tmp_path / "a" / "features.json").read_text())
    assert meta["modalities"] == ["video", "audio"] and meta["videos"] == 6 and meta["classes"] == ["tick", "tock"]
    assert meta["backbones"]["video"]["role"] == "teacher"

    cfg = load_config("xkd_micro", ["data.eval_size=32", "data.eval_clips=2", "data.eval_crops=3",
                                    "data.batch_size=2"])
    video_encoder, audio_encoder = (b.encoder for b in resolve_backbones(str(micro_export), "both", cfg))
    expected_video, expected_audio, keys = [], [], []
    with torch.no_grad():
        for batch in eval_loader(str(eval_shards), cfg.data):
            for clips in batch.video_clips:  # (N, crops, 3, T, S, S): each clip and crop on its own
                for clip in clips:
                    for crop in clip:
                        tokens = video_encoder(crop[None])
                        expected_video.append(tokens[0, 1:].mean(0))
            for clips in batch.audio_clips:
                for clip in clips:
                    expected_audio.append(audio_encoder(clip[None])[0, 1:].mean(0))
            keys += batch.key

    for modality, expected in (("video", expected_video), ("audio", expected_audio)):
        first, second = load_features(tmp_path / "a", modality), load_features(tmp_path / "b", modality)
        assert np.array_equal(first.features, second.features)  # bit for bit on a re-run
        np.testing.assert_allclose(first.features, torch.stack(expected).numpy(), rtol=1e-4, atol=1e-5)
        assert list(first.keys) == keys
        crops = 3 if modality == "video" else 1
        assert list(first.video_index) == [v for v in range(6) for _ in range(2 * crops)]
        assert list(first.clip_index) == [c for _ in range(6) for c in range(2) for _ in range(crops)]
        assert list(first.crop_index) == [k for _ in range(12) for k in range(crops)]
        names = {key: label for key, label in zip(first.keys, first.labels)}
        assert all(names[key] == (0 if key.startswith("tick") else 1) for key in names)


def test_an_interrupted_extraction_resumes_where_it_stopped(eval_shards, micro_export, tmp_path, monkeypatch):
    cfg = load_config("xkd_micro", ["data.eval_size=32", "data.eval_clips=2", "data.eval_crops=1",
                                    "data.batch_size=2"])
    backbones = resolve_backbones(str(micro_export), "both", cfg)

    def extraction(out):
        return FeatureExtraction(backbones, str(eval_shards), cfg, out, device=torch.device("cpu"), chunk_videos=2,
                                 log=lambda _: None)

    extraction(tmp_path / "whole").run()
    chunks_seen = []
    original = FeatureExtraction._extract_chunk

    def dies_on_the_third_chunk(self, chunk, progress):
        chunks_seen.append(chunk.tars)
        if len(chunks_seen) == 3:
            raise KeyboardInterrupt  # as a kill between chunks would
        return original(self, chunk, progress)

    monkeypatch.setattr(FeatureExtraction, "_extract_chunk", dies_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        extraction(tmp_path / "resumed").run()
    assert not (tmp_path / "resumed" / "features.json").exists()  # nothing final is written before the end
    chunks_seen.clear()
    monkeypatch.setattr(FeatureExtraction, "_extract_chunk", original)
    resumed = FeatureExtraction._extract_chunk
    monkeypatch.setattr(FeatureExtraction, "_extract_chunk",
                        lambda self, chunk, progress: chunks_seen.append(chunk.tars) or resumed(self, chunk, progress))
    extraction(tmp_path / "resumed").run()
    assert len(chunks_seen) == 1  # only the chunk that had not finished is decoded again
    assert not (tmp_path / "resumed" / ".partial").exists()
    for modality in ("video", "audio"):
        whole, resumed_set = load_features(tmp_path / "whole", modality), load_features(tmp_path / "resumed", modality)
        for name in ("features", "video_index", "clip_index", "crop_index", "keys", "labels"):
            assert np.array_equal(getattr(whole, name), getattr(resumed_set, name)), name


def test_random_init_is_the_presets_encoders_and_is_recorded(eval_shards, run_cli, tmp_path):
    assert run_cli("eval", "features", "--random-init", "xkd_micro", eval_shards, tmp_path / "r", "--seed", "3",
                   *MICRO[2:]) == 0
    meta = json.loads((tmp_path / "r" / "features.json").read_text())
    assert meta["backbone"] == "random-init xkd_micro (seed 3)"
    assert meta["backbones"]["audio"]["kind"] == "random-init" and meta["dim"] == {"video": 64, "audio": 64}
    # a re-run with the same inputs finds the work done; another seed into the same folder is refused
    assert run_cli("eval", "features", "--random-init", "xkd_micro", eval_shards, tmp_path / "r", "--seed", "3",
                   *MICRO[2:]) == 0
    assert run_cli("eval", "features", "--random-init", "xkd_micro", eval_shards, tmp_path / "r", "--seed", "4",
                   *MICRO[2:]) == 2


@pytest.mark.parametrize("case", ["wrong_modality", "wrong_size", "missing", "other_extraction", "no_backbone",
                                  "video_from_audio_only"])
def test_refusals_name_the_problem_with_exit_2(case, eval_shards, micro_export, run_cli, tmp_path, capsys):
    tiny = load_config("xkd_tiny").model
    save_backbone(tmp_path / "tiny_video", build_encoder("video", tiny), "video", tiny)
    args = {
        "wrong_modality": [micro_export / "audio_teacher.safetensors", eval_shards, tmp_path / "o", "--modality", "video"],
        "wrong_size": [tmp_path / "tiny_video.safetensors", eval_shards, tmp_path / "o"],
        "missing": [tmp_path / "nothing.safetensors", eval_shards, tmp_path / "o"],
        "other_extraction": [micro_export, eval_shards, tmp_path / "o", "--role", "student"],
        "no_backbone": [eval_shards, tmp_path / "o"],
        "video_from_audio_only": [micro_export, tmp_path / "no-shards-here", tmp_path / "o"],
    }[case]
    expected = {
        "wrong_modality": "an audio backbone, but --modality is video",
        "wrong_size": "encoder embed_dim is 96 in the backbone but 64 in config xkd_micro",
        "missing": "nothing.safetensors: backbone file not found",
        "other_extraction": "holds features of another extraction",
        "no_backbone": "expected BACKBONE SHARDS OUT, got 2 path(s)",
        "video_from_audio_only": "no-shards-here",
    }[case]
    if case == "other_extraction":
        assert run_cli("eval", "features", micro_export, eval_shards, tmp_path / "o", *MICRO) == 0
    capsys.readouterr()
    assert run_cli("eval", "features", *args, *MICRO) == 2
    err = capsys.readouterr().err
    assert err.startswith("xkd eval features: ") and expected in err, err


@pytest.mark.gpu
def test_gpu_features_under_bf16_autocast_match_the_cpu_ones(eval_shards, micro_export, run_cli, tmp_path):
    assert run_cli("eval", "features", micro_export, eval_shards, tmp_path / "cpu", *MICRO, "--device", "cpu") == 0
    assert run_cli("eval", "features", micro_export, eval_shards, tmp_path / "gpu", *MICRO, "--device", "cuda") == 0
    assert json.loads((tmp_path / "gpu" / "features.json").read_text())["dtype"] == "bfloat16 autocast"
    for modality in ("video", "audio"):
        cpu, gpu = load_features(tmp_path / "cpu", modality), load_features(tmp_path / "gpu", modality)
        assert list(cpu.keys) == list(gpu.keys)
        cosine = (cpu.features * gpu.features).sum(1) / np.linalg.norm(cpu.features, axis=1) / np.linalg.norm(
            gpu.features, axis=1)
        assert cosine.min() > 0.99, (modality, cosine.min())  # NVDEC frames and bf16 differ a little, no more
