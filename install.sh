#!/usr/bin/env bash
# Sets up .venv with the pinned stack and installs this project into it (editable).
#   ./install.sh          runtime dependencies
#   ./install.sh --test   runtime + test dependencies
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch first: DeepSpeed's build imports it, hence --no-build-isolation below.
"${pip[@]}" "setuptools>=68" wheel torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0
"${pip[@]}" --no-build-isolation -e ".${extras}"
.venv/bin/xkd --version
