#!/usr/bin/env bash
# Carries the packages an offline GPU machine lacks (DALI, webdataset, DeepSpeed, PyAV, soundfile,
# scikit-video, matplotlib and their small dependencies) in as few transfers as possible, for a
# machine whose python3 (3.12) already holds torch 2.11 (cu130), torchaudio, torchvision, timm, numpy
# and pillow.
#
#   bash benchmarks/gpu_env.sh prepare   # here, with ./install.sh done: writes .gpuenv/p1 .. pN
#   bash benchmarks/gpu_env.sh install   # there, once every part has arrived: unpacks into /tmp/site
#   export PYTHONPATH=/tmp/site:$PWD
#
# Why not the wheels themselves: they are zip (deflate) archives holding every CPython's build of
# DALI's Python bindings. Installing here for CPython 3.12 only, dropping the other CPythons'
# bindings and packing the installed tree with xz makes ~245 MB of wheels ~170 MB, three parts
# of < 60 MiB (one transfer each) instead of five, and installing is one `tar -x` instead of pip.
set -euo pipefail
cd "$(dirname "$0")/.."
part_mib=58  # a transfer carries 64 MiB with the working tree; leave room for the tree
site=/tmp/site
# wheels for the GPU machine's python3 (CPython 3.12, x86-64 Linux), whatever this machine runs
target=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux1_x86_64)

prepare() {
  local venv=.venv/bin/python stage wheels
  [[ -x $venv ]] || { echo "gpu_env: run ./install.sh first (DeepSpeed's wheel is built with its torch)" >&2; exit 2; }
  stage=$(mktemp -d)
  wheels=$stage/wheels
  # Versions as setup.py pins them; the rest are DALI's, DeepSpeed's and soundfile's requirements
  # that the GPU machine's image does not hold (DALI's nvimgcodec / nvcomp are left out: they
  # serve image decoding and compression, which no pipeline here uses).
  local pins
  pins=$("$venv" - <<'EOF'
import re
text = open("setup.py").read()
for name in ("nvidia-dali-cuda130", "webdataset", "av", "soundfile", "scikit-video", "matplotlib"):
    print(re.search(rf'"({re.escape(name)}==[^"]+)"', text).group(1))
EOF
)
  # shellcheck disable=SC2086
  "$venv" -m pip download -q --no-deps "${target[@]}" -d "$wheels" $pins \
    astunparse gast makefun nvtx optree 'libcst~=1.8' braceexpand hjson \
    pydantic pydantic-core annotated-types typing-inspection cffi pycparser \
    contourpy cycler fonttools kiwisolver pyparsing python-dateutil six
  DS_BUILD_OPS=0 "$venv" -m pip wheel -q --no-deps --no-build-isolation -w "$wheels" \
    "$("$venv" -m pip show deepspeed | sed -n 's/^Version: /deepspeed==/p')"
  "$venv" -m pip install -q --no-deps --no-compile "${target[@]}" --target "$stage/site" "$wheels"/*.whl
  # DALI ships its bindings for every CPython (3.10 .. 3.15t); the machine runs 3.12
  find "$stage/site/nvidia/dali" -maxdepth 1 -name '*.cpython-*.so' ! -name '*cpython-312-*' -delete
  rm -rf .gpuenv && mkdir -p .gpuenv
  tar -C "$stage/site" -cf - . | xz -T0 -6 | split -b "${part_mib}M" -d -a 2 - "$stage/site.tar.xz."
  local index=1 piece
  for piece in "$stage"/site.tar.xz.*; do
    mkdir -p ".gpuenv/p$index" && mv "$piece" ".gpuenv/p$index/"
    index=$((index + 1))
  done
  rm -rf "$stage"
  du -sh .gpuenv/p*
}

install() {
  local torch_nvidia
  ls .gpuenv/p*/site.tar.xz.* >/dev/null || { echo "gpu_env: no parts under .gpuenv/" >&2; exit 2; }
  mkdir -p "$site"
  # the pieces in split's order (their suffixes), whichever part folder each travelled in
  printf '%s\n' .gpuenv/p*/site.tar.xz.* | awk -F/ '{print $NF "\t" $0}' | sort | cut -f2 | xargs cat \
    | xz -d -T0 | tar -C "$site" -xf -
  # DALI finds cuFFT & co. through its RUNPATH ($ORIGIN/../cu13/lib): point that at torch's CUDA libraries
  torch_nvidia=$(python3 -c 'import importlib.util as u; print(list(u.find_spec("nvidia").submodule_search_locations)[0])')
  for entry in "$torch_nvidia"/*; do
    [[ -e $site/nvidia/$(basename "$entry") ]] || ln -s "$entry" "$site/nvidia/$(basename "$entry")"
  done
  PYTHONPATH=$site:$PWD python3 - <<'EOF'
import importlib
# triton: torch.compile's GPU kernels (train.compile, the `compiled` stage) come from the machine's own torch
for name in ("nvidia.dali", "webdataset", "deepspeed", "soundfile", "av", "skvideo", "torch", "timm", "torchaudio",
             "triton", "matplotlib", "xkd"):
    try:
        module = importlib.import_module(name)
        print(f"  ok   {name} {getattr(module, '__version__', '')}")
    except Exception as error:  # report every missing piece, not only the first
        print(f"  FAIL {name}: {error}")
EOF
}

case ${1:-} in
  prepare) prepare ;;
  install) install ;;
  *) echo "usage: bash benchmarks/gpu_env.sh prepare|install" >&2; exit 2 ;;
esac
