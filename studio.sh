#!/usr/bin/env bash
# Set up everything (./.venv) and launch LOFF Studio on PROJECT (default: the demo project).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec .venv/bin/loff-studio "$@"
