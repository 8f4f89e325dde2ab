#!/usr/bin/env bash
# Build the frozen one-folder LOFF Studio: dist/loff-studio/ with `loff-studio` (window) and
# `loff` (command), sharing one bundle. Run from anywhere, after the README's set-up
# (./test.sh or scripts/setup.sh made .venv). Options:
#   --tar    also write dist/loff-studio-<version>-linux-<arch>.tar.gz (the release artefact)
# Environment: LOFF_KEEP_TRITON=1 keeps triton in the bundle (left out by default; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
tar=0
for arg in "$@"; do
    case "$arg" in
        --tar) tar=1 ;;
        -h|--help) sed -n 2,7p "$0"; exit 0 ;;
        *) echo "build.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done
bash scripts/setup.sh
PY=.venv/bin/python
# PyInstaller and its community hooks: the `packaging` extra of pyproject.toml
"$PY" -m pip --disable-pip-version-check -q install -e ".[packaging]"
"$PY" packaging/make_icons.py --check
version=$("$PY" -c 'import importlib.metadata as m; print(m.version("loff-studio"))')
start=$(date +%s)
LOFF_VERSION=$version "$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/loff-studio.spec
secs=$(( $(date +%s) - start ))
size=$(du -sm dist/loff-studio | cut -f1)
echo "build.sh: dist/loff-studio built in ${secs} s, ${size} MB" >&2
if [ "$tar" = 1 ]; then
    bash packaging/make_release.sh dist/loff-studio "$version"
fi
