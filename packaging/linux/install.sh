#!/usr/bin/env bash
# Install LOFF Studio for this user, from the unpacked release folder (this script's folder):
#   ./install.sh
# Puts, under ~/.local (XDG_DATA_HOME when set, for the share/ parts):
#   ~/.local/lib/loff-studio/                        the frozen application (loff-studio, loff)
#   ~/.local/bin/loff-studio, ~/.local/bin/loff      links to its two programs
#   ~/.local/share/applications/org.loff.Studio.desktop   the application-menu entry
#   ~/.local/share/metainfo/org.loff.Studio.metainfo.xml  AppStream metadata (software centres)
#   ~/.local/share/icons/hicolor/*/apps/org.loff.Studio.{png,svg}
# and a list of exactly these (and of the folders it had to create) in
# ~/.local/lib/loff-studio.manifest, which uninstall.sh removes (and nothing else: projects,
# settings and logs stay). Re-running upgrades in place.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src="$here/loff-studio"
[ -x "$src/loff-studio" ] && [ -x "$src/loff" ] \
    || { echo "install: $src/loff-studio not found: run install.sh from the unpacked release folder" >&2; exit 1; }
: "${HOME:?install: HOME is not set}"
lib="$HOME/.local/lib"
bin="$HOME/.local/bin"
share="${XDG_DATA_HOME:-$HOME/.local/share}"
app="$lib/loff-studio"
manifest="$lib/loff-studio.manifest"
if [ -f "$manifest" ]; then
    echo "install: replacing the LOFF Studio installed at $app" >&2
    bash "$here/uninstall.sh" --quiet
fi
created=()  # everything written, in order; the manifest
dirs=()     # folders that did not exist before (removed again by uninstall when empty)
mkdirs() {
    local d missing=()
    for d in "$@"; do
        while [ ! -d "$d" ]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
    done
    for d in "${missing[@]}"; do [ -d "$d" ] || { mkdir "$d"; dirs+=("$d"); }; done
}
place() {  # place SRC DEST: refuse to overwrite a file that another program owns
    if [ -e "$2" ] || [ -L "$2" ]; then
        echo "install: $2 already exists and was not installed by LOFF Studio; move it away and run install.sh again" >&2
        exit 1
    fi
    mkdirs "$(dirname "$2")"
    cp -a "$1" "$2"
    created+=("$2")
}
if [ -e "$app" ]; then
    echo "install: $app already exists and was not installed by this script; move it away first" >&2
    exit 1
fi
mkdirs "$lib"
rm -rf "$app.partial"
cp -a "$src" "$app.partial"
cp "$here/uninstall.sh" "$app.partial/uninstall.sh"  # so the release folder may be deleted
mv "$app.partial" "$app"
created+=("$app")
for prog in loff-studio loff; do
    if [ -e "$bin/$prog" ] || [ -L "$bin/$prog" ]; then
        echo "install: $bin/$prog already exists; not linked (run $app/$prog)" >&2
        continue
    fi
    mkdirs "$bin"
    ln -s "$app/$prog" "$bin/$prog"
    created+=("$bin/$prog")
done
desktop="$share/applications/org.loff.Studio.desktop"
tmp=$(mktemp)
# the menu entry runs the installed program by its full path (quoted: the path may hold spaces)
sed -e "s|^Exec=loff-studio |Exec=\"$app/loff-studio\" |" -e "/^Exec=/a TryExec=$app/loff-studio" \
    "$here/org.loff.Studio.desktop" > "$tmp"
place "$tmp" "$desktop"
rm -f "$tmp"
chmod 644 "$desktop"
place "$here/org.loff.Studio.metainfo.xml" "$share/metainfo/org.loff.Studio.metainfo.xml"
for icon in "$here"/icons/hicolor/*/apps/org.loff.Studio.*; do
    size=$(basename "$(dirname "$(dirname "$icon")")")
    place "$icon" "$share/icons/hicolor/$size/apps/$(basename "$icon")"
done
{ printf 'file\t%s\n' "${created[@]}"; [ ${#dirs[@]} = 0 ] || printf 'dir\t%s\n' "${dirs[@]}"; } > "$manifest"
# refresh caches only where the desktop already keeps one (never leave files we did not list)
if [ -f "$share/icons/hicolor/icon-theme.cache" ] && command -v gtk-update-icon-cache >/dev/null; then
    gtk-update-icon-cache -q -t "$share/icons/hicolor" || true
fi
if [ -f "$share/applications/mimeinfo.cache" ] && command -v update-desktop-database >/dev/null; then
    update-desktop-database -q "$share/applications" || true
fi
echo "install: LOFF Studio installed in $app (${#created[@]} entries, listed in $manifest)"
echo "install: open it from the application menu, or run $bin/loff-studio; to remove it: $app/uninstall.sh"
case ":$PATH:" in *":$bin:"*) ;; *) echo "install: note: $bin is not on PATH; add it to run 'loff' in a terminal" ;; esac
