"""`xkd shards verify`: decode every member of every shard and check it against its JSON, the
DALI index against the tar, and the manifest against the shards."""
from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor

import av
import soundfile

from shards.format import VIDEO_EXTENSIONS, load_manifest, read_index, tar_samples
from shards.options import AUDIO_RATE
from shards.sample import lengths_member


def _check_video(name: str, data: bytes, meta: dict) -> list[str]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        ctx = stream.codec_context
        problems = []
        if frames != meta["frames"]:
            problems.append(f"{name}: {frames} frames decoded, json says {meta['frames']}")
        if (ctx.width, ctx.height) != (meta["width"], meta["height"]):
            problems.append(f"{name}: {ctx.width}x{ctx.height}, json says {meta['width']}x{meta['height']}")
        rate = stream.average_rate or stream.guessed_rate
        if rate is None or abs(float(rate) - meta["fps"]) > 1e-3 * meta["fps"]:
            problems.append(f"{name}: {float(rate or 0):.4f} fps, json says {meta['fps']}")
        return problems


def _check_audio(name: str, data: bytes, meta: dict) -> list[str]:
    audio, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    problems = []
    if rate != AUDIO_RATE or audio.ndim != 1:
        problems.append(f"{name}: {rate} Hz with shape {audio.shape}, expected {AUDIO_RATE} Hz mono")
    if len(audio) != meta["audio_samples"]:
        problems.append(f"{name}: {len(audio)} samples, json says {meta['audio_samples']}")
    return problems


def _check_sample(key: str, members: dict[str, bytes], expected: list[str]) -> list[str]:
    try:
        meta = json.loads(members["json"])
    except (KeyError, ValueError) as exc:
        return [f"{key}.json: missing or not valid JSON: {exc}"]
    labelled = {"cls": meta.get("label_id") is not None, "labels": bool(meta.get("label_ids"))}
    expected = [ext for ext in expected if labelled.get(ext, True)]
    if sorted(members) != sorted(expected):
        return [f"{key}: members {sorted(members)}, expected {sorted(expected)}"]
    problems = [] if meta.get("key") == key else [f"{key}.json: key field is {meta.get('key')!r}"]
    if members["lengths"] != lengths_member(meta["frames"], meta["audio_samples"]):
        problems.append(f"{key}.lengths: does not match the JSON's frames and audio_samples")
    checks = [(ext, _check_video) for ext in expected if ext in VIDEO_EXTENSIONS] + [("flac", _check_audio)]
    for ext, check in checks:
        try:
            problems += check(f"{key}.{ext}", members[ext], meta)
        except Exception as exc:  # any decode failure is a finding, not a crash of verify
            problems.append(f"{key}.{ext}: does not decode: {type(exc).__name__}: {exc}")
    if "cls" in members and members["cls"].decode().strip() != str(meta.get("label_id")):
        problems.append(f"{key}.cls: {members['cls']!r}, json label_id {meta.get('label_id')}")
    if "labels" in members and members["labels"].decode().strip() != ",".join(map(str, meta.get("label_ids", []))):
        problems.append(f"{key}.labels: {members['labels']!r}, json label_ids {meta.get('label_ids')}")
    return problems


def verify_shard(out_dir: str, shard: dict, expected_members: list[str]) -> tuple[int, list[str]]:
    """Returns (samples checked, problems) for one shard of the manifest."""
    tar_path, idx_path = os.path.join(out_dir, shard["tar"]), os.path.join(out_dir, shard["idx"])
    for path in (tar_path, idx_path):
        if not os.path.isfile(path):
            return 0, [f"{os.path.basename(path)}: missing"]
    problems = []
    if os.path.getsize(tar_path) != shard["bytes"]:
        problems.append(f"{shard['tar']}: {os.path.getsize(tar_path)} bytes, manifest says {shard['bytes']}")
    try:
        index = read_index(idx_path)
    except (ValueError, OSError) as exc:
        return 0, problems + [str(exc)]
    samples: dict[str, dict[str, bytes]] = {}
    actual_index = []
    try:
        with tarfile.open(tar_path) as archive:
            for key, members in tar_samples(archive):
                samples[key] = {entry[0]: archive.extractfile(member).read() for member, entry in members}
                actual_index.append([entry for _, entry in members])
    except (tarfile.TarError, OSError, ValueError) as exc:
        return 0, problems + [f"{shard['tar']}: unreadable tar: {exc}"]
    if index != actual_index:
        problems.append(f"{shard['idx']}: does not match the members of {shard['tar']}")
    if len(samples) != shard["samples"]:
        problems.append(f"{shard['tar']}: {len(samples)} samples, manifest says {shard['samples']}")
    for key, members in samples.items():
        problems += [f"{shard['tar']}: {p}" for p in _check_sample(key, members, expected_members)]
    return len(samples), problems


def verify(out_dir: str, workers: int = 1) -> dict:
    try:
        manifest = load_manifest(out_dir)
    except (OSError, ValueError) as exc:
        return {"shards": 0, "samples": 0, "problems": [str(exc)]}
    problems = []
    if not manifest["complete"]:
        problems.append("manifest: incomplete (a run or a --part has not finished)")
    listed = {s["tar"] for s in manifest["shards"]}
    for path in sorted(glob.glob(os.path.join(out_dir, "*.tar"))):
        if os.path.basename(path) not in listed:
            problems.append(f"{os.path.basename(path)}: in the folder but not in the manifest")
    checked = 0
    with ProcessPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(verify_shard, out_dir, shard, manifest["members"]) for shard in manifest["shards"]]
        for future in futures:
            count, found = future.result()
            checked += count
            problems += found
    if checked != manifest["samples"] and not any("missing" in p for p in problems):
        problems.append(f"manifest: {manifest['samples']} samples listed, {checked} found in the shards")
    return {"shards": len(manifest["shards"]), "samples": checked, "problems": problems}


def format_stats(manifest: dict) -> str:
    lines = [
        f"shards:   {len(manifest['shards'])} ({manifest['bytes'] / 1e9:.3f} GB)"
        + ("" if manifest["complete"] else "  [INCOMPLETE]"),
        f"samples:  {manifest['samples']} ({manifest['samples_with_audio']} with audio) of {manifest['inputs']} inputs",
        f"hours:    {manifest['hours']:.3f}",
        f"classes:  {manifest['num_classes']}" + (" (multi-label)" if manifest.get("multi_label") else ""),
        ("video:    none (audio only)" if not manifest.get("has_video", True) else
         f"video:    {manifest['options']['codec']}, {manifest['options']['fps']} fps, "
         f"short side {manifest['options']['short_side']}"),
        f"rejected: {sum(manifest['rejected_counts'].values())}"
        + "".join(f"\n  {category}: {count}" for category, count in manifest["rejected_counts"].items()),
    ]
    return "\n".join(lines)
