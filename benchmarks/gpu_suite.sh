#!/usr/bin/env bash
# The GPU suite in one command (issue 26; docs/benchmarks.md "GPU suite", README "GPU suite").
#
#   bash benchmarks/gpu_suite.sh OUT            # on an NVIDIA GPU machine: ~6-7 min of GPU time
#   bash benchmarks/gpu_suite.sh OUT --smoke    # on a CPU: tiny ViT, every code path, < 2 min
#
# Step 0 installs, offline, the wheels of .whl/ (benchmarks/gpu_wheels.sh fetched them on a
# connected machine) that this Python lacks, into .gpu-site/, and the checkout --no-deps; with
# --smoke it only decides what it would install. Then benchmarks/gpu_suite.py runs the sections
# and writes OUT/suite.md, OUT/suite.json and one .md/.json/.log per section. Exit 0 when every
# section ran to the end.
set -uo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: benchmarks/gpu_suite.sh OUT [--smoke]" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$1
shift
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
SMOKE=()
for a in "$@"; do
    case "$a" in
        --smoke) SMOKE=(--smoke) ;;
        *) echo "gpu_suite: unknown argument $a" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=$(command -v python3 || command -v python); fi
fi
SITE=${LOFF_SUITE_SITE:-$ROOT/.gpu-site}
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
export HF_HUB_OFFLINE=1 QT_QPA_PLATFORM=offscreen MPLBACKEND=Agg PYTHONUNBUFFERED=1
DRY=()
[ ${#SMOKE[@]} -gt 0 ] && DRY=(--dry-run)
echo "gpu_suite: $("$PY" --version 2>&1) at $PY; out $OUT" >&2
"$PY" "$ROOT/benchmarks/offline_install.py" "$ROOT/.whl" "$SITE" --json "$OUT/install.json" "${DRY[@]}" \
    || { echo "gpu_suite: installing .whl/ failed" >&2; exit 1; }
exec "$PY" "$ROOT/benchmarks/gpu_suite.py" "$OUT" "${SMOKE[@]}"
