#!/usr/bin/env bash
# Set up LOFF Studio in ./.venv: Python packages (torch, timm, pydicom, Qt...) and the app.
# Idempotent: re-running after a pull only reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "setup: LOFF Studio needs Python 3.10 or newer ($PY is $("$PY" --version 2>&1))" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.loff-setup-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then
    exit 0
fi
echo "setup: installing into .venv (first time takes a few minutes: torch is large)" >&2
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# timm needs torchvision; these two releases load together (a CUDA build that also runs on CPU).
pip install "torch==2.14.1" "torchvision==0.29.1"
pip install -e ".[dev]"
rm -f .venv/.loff-setup-*
touch "$stamp"
