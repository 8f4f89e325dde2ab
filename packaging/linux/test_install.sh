#!/usr/bin/env bash
# Install and uninstall a release artefact under a temporary HOME, and check what lands where:
#   packaging/linux/test_install.sh dist/loff-studio-<version>-linux-<arch>.tar.gz
# Checks: the installed `loff --version` and `loff-studio --help` run; the menu entry is valid
# and points at the installed program; the icons are in the hicolor theme; uninstall leaves
# HOME exactly as it was (same file list) and keeps a file the user put there meanwhile.
set -euo pipefail
tarball=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
work=$(mktemp -d "${TMPDIR:-/tmp}/loff-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
export HOME="$work/home"
unset XDG_DATA_HOME
mkdir -p "$HOME/.local/share/applications" "$work/unpacked"
echo "keep" > "$HOME/.local/share/applications/someone-else.desktop"
(cd "$HOME" && find . | sort) > "$work/before"
tar -C "$work/unpacked" -xzf "$tarball"
release=$(ls -d "$work"/unpacked/loff-studio-*)
bash "$release/install.sh"
app="$HOME/.local/lib/loff-studio"
desktop="$HOME/.local/share/applications/org.loff.Studio.desktop"
"$HOME/.local/bin/loff" --version
"$HOME/.local/bin/loff-studio" --help | grep -q "usage: loff-studio"
grep -qx "Exec=\"$app/loff-studio\" %f" "$desktop" || { echo "test_install: wrong Exec line in $desktop" >&2; exit 1; }
if command -v desktop-file-validate >/dev/null; then desktop-file-validate "$desktop"; fi
for size in 16x16 32x32 48x48 256x256 512x512; do
    [ -s "$HOME/.local/share/icons/hicolor/$size/apps/org.loff.Studio.png" ] || { echo "test_install: no $size icon" >&2; exit 1; }
done
[ -s "$HOME/.local/share/icons/hicolor/scalable/apps/org.loff.Studio.svg" ]
[ -s "$HOME/.local/share/metainfo/org.loff.Studio.metainfo.xml" ]
# installing again upgrades in place
bash "$release/install.sh" > /dev/null
rm -rf "$release"  # the release folder may be gone: the installed copy of uninstall.sh is used
bash "$app/uninstall.sh"
(cd "$HOME" && find . | sort) > "$work/after"
diff "$work/before" "$work/after" || { echo "test_install: uninstall did not restore HOME" >&2; exit 1; }
echo "test_install: install, upgrade and uninstall under a temporary HOME: ok"
