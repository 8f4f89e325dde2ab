#!/usr/bin/env bash
# Smoke test of the frozen build: packaging/smoke.sh [DIST_DIR]   (default dist/loff-studio)
# Runs the FROZEN programs (never the source) through the whole story, headless, and compares
# their predictions with the source install's (.venv) on the same files:
#   loff --help / --version; loff demo; extract (real EfficientNet-Lite weights (the CPU default) from the
#   bundle); train; evaluate; export; predict on the demo images and on one DICOM per
#   compressed transfer syntax (predictions equal to .venv's loff predict, numerically);
#   loff-studio started offscreen on the demo project, quitting cleanly by itself.
# Needs .venv (the README's set-up) for the comparison. Exit 0 only when every step passed.
set -euo pipefail
cd "$(dirname "$0")/.."
DIST=$(cd "${1:-dist/loff-studio}" && pwd)
LOFF="$DIST/loff"
STUDIO="$DIST/loff-studio"
PY=.venv/bin/python
SRC_LOFF=.venv/bin/loff
for f in "$LOFF" "$STUDIO" "$PY" "$SRC_LOFF"; do
    [ -x "$f" ] || { echo "smoke: $f is missing (build with packaging/build.sh, set up with ./test.sh)" >&2; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/tmp}/loff-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
# nothing from the user's own settings, no network, no display
export LOFF_STUDIO_CONFIG_DIR="$work/config" HF_HUB_OFFLINE=1 QT_QPA_PLATFORM=offscreen
export XDG_DATA_HOME="$work/data" XDG_CACHE_HOME="$work/cache"
t0=$(date +%s)
step() { echo "smoke: $*" >&2; }
json() { "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {'d': d}))" "$@"; }

step "frozen loff --help / --version"
"$LOFF" --help | grep -q "COMMAND"
"$LOFF" --version

step "frozen loff demo"
"$LOFF" demo "$work/demo" --patients 16 --json --quiet > "$work/demo.json"
json "$work/demo.json" "d['imported']"

step "frozen loff extract (the default CPU backbone, EfficientNet-Lite2, with the weights shipped in the bundle)"
"$LOFF" extract "$work/demo" --device cpu --json --quiet > "$work/extract.json"
json "$work/extract.json" "(d['backbone'], d['images'], d['extracted'], len(d['failed']))"
[ "$(json "$work/extract.json" "len(d['failed'])")" = 0 ] || { step "extract failed on some files"; exit 1; }
[ "$(json "$work/extract.json" "d['extracted'] == d['images'] > 0")" = True ]

step "frozen loff train / evaluate / export"
"$LOFF" train "$work/demo" --epochs 3 --device cpu --json --quiet > "$work/train.json"
"$LOFF" evaluate "$work/demo" --bootstrap 50 --json --quiet > "$work/evaluate.json"
"$LOFF" export "$work/demo" "$work/export" --onnx --json --quiet > "$work/export.json"  # ONNX checked against torch
[ -s "$work/export/model.onnx" ] || { step "no model.onnx"; exit 1; }
# the model report beside the card: the bundle carries its template (loff_core/templates) and matplotlib
grep -q '<section id="claim">' "$work/export/report.html" || { step "no report.html in the export"; exit 1; }
ls "$work/export"
"$LOFF" info "$work/demo" --json > /dev/null

step "predict the demo images: frozen vs source install"
mapfile -t demo_files < <(find "$work/demo" -name '*.dcm' | sort | head -24)
"$LOFF" predict "$work/export" "${demo_files[@]}" --device cpu --json --quiet --csv "$work/frozen.csv" \
    > "$work/frozen-demo.json"
"$SRC_LOFF" predict "$work/export" "${demo_files[@]}" --device cpu --json --quiet > "$work/source-demo.json"
"$PY" packaging/compare_predictions.py "$work/frozen-demo.json" "$work/source-demo.json" --min 12
[ -s "$work/frozen.csv" ]

step "one DICOM per compressed transfer syntax: decoded by the frozen build, equal to the source install"
"$PY" packaging/make_syntax_dicoms.py "$work/syntaxes"
n=$(ls "$work/syntaxes" | wc -l)
"$LOFF" predict "$work/export" "$work/syntaxes" --device cpu --json --quiet > "$work/frozen-syntax.json"
"$SRC_LOFF" predict "$work/export" "$work/syntaxes" --device cpu --json --quiet > "$work/source-syntax.json"
"$PY" packaging/compare_predictions.py "$work/frozen-syntax.json" "$work/source-syntax.json" --min "$n"

step "frozen loff-studio: the window on the demo project, offscreen, quitting by itself"
out=$(timeout 180 "$STUDIO" "$work/demo" --quit-after 8000 2>"$work/studio.err") || {
    rc=$?; cat "$work/studio.err" >&2; step "loff-studio exited with $rc"; exit 1; }
echo "$out"
echo "$out" | grep -q "SYNTHETIC" || { step "the window did not open the demo project"; cat "$work/studio.err" >&2; exit 1; }
echo "$out" | grep -q "icon: yes" || { step "the window has no icon"; exit 1; }
if grep -iE "Traceback|Error" "$work/studio.err"; then step "the window wrote errors"; exit 1; fi
# the window imports the engine (torch, timm, pydicom...) in a background thread at start;
# a module the bundle lacks is logged as "engine warm-up: X not imported"
log="$LOFF_STUDIO_CONFIG_DIR/logs/loff-studio.log"
[ -s "$log" ] || { step "no log file at $log"; exit 1; }
if grep -E "not imported|Traceback|ERROR" "$log"; then step "the window logged problems ($log)"; exit 1; fi

step "passed in $(( $(date +%s) - t0 )) s"
