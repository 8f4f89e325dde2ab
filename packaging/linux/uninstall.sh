#!/usr/bin/env bash
# Remove what install.sh installed for this user: exactly the entries listed in
# ~/.local/lib/loff-studio.manifest, then the manifest, then the folders install.sh created
# when they are empty again. Projects, settings and logs are kept.
#   ./uninstall.sh [--quiet]
set -euo pipefail
: "${HOME:?uninstall: HOME is not set}"
manifest="$HOME/.local/lib/loff-studio.manifest"
quiet=0; [ "${1:-}" = --quiet ] && quiet=1
if [ ! -f "$manifest" ]; then
    echo "uninstall: LOFF Studio is not installed for ${USER:-this user} (no $manifest)" >&2
    exit 1
fi
n=0
folders=()
while IFS=$'\t' read -r kind entry; do
    [ -n "$entry" ] || continue
    case "$entry" in
        "$HOME"/.local/*|"${XDG_DATA_HOME:-$HOME/.local/share}"/*) ;;
        *) echo "uninstall: skipping $entry (not under $HOME/.local)" >&2; continue ;;
    esac
    if [ "$kind" = dir ]; then
        folders=("$entry" "${folders[@]}")  # deepest last in the manifest: remove in reverse
        continue
    fi
    if [ -L "$entry" ] || [ -f "$entry" ]; then
        rm -f "$entry"
    elif [ -d "$entry" ]; then
        rm -rf "$entry"
    fi
    n=$((n + 1))
done < "$manifest"
rm -f "$manifest"
for folder in "${folders[@]}"; do rmdir "$folder" 2>/dev/null || true; done  # only when empty
[ "$quiet" = 1 ] || echo "uninstall: removed LOFF Studio ($n entries); your projects and settings are kept"
