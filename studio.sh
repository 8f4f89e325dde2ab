#!/usr/bin/env bash
# Set up everything (./.venv) and launch LOFF Studio on PROJECT (default: the demo project).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# Qt 6.5+ on X11 needs libxcb-cursor0, a system library pip cannot install: say so plainly.
if [ "$(uname -s)" = Linux ] && [ -z "${QT_QPA_PLATFORM:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ] \
        && command -v ldconfig >/dev/null && ! ldconfig -p | grep 'libxcb-cursor\.so\.0' >/dev/null; then
    # (not grep -q: under pipefail its early exit makes ldconfig die of SIGPIPE, a false alarm)
    echo "studio: Qt needs the system library libxcb-cursor0 to open a window on X11;" >&2
    echo "        install it (Debian / Ubuntu: sudo apt install libxcb-cursor0) and run ./studio.sh again" >&2
    exit 1
fi
# the other X11 libraries Qt's xcb plugin links to (a minimal system lacks some, e.g. libxcb-icccm4)
if [ "$(uname -s)" = Linux ] && [ -z "${QT_QPA_PLATFORM:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ] && command -v ldd >/dev/null; then
    plugin=$(.venv/bin/python -c 'import os, PySide6; print(os.path.join(os.path.dirname(PySide6.__file__), "Qt", "plugins", "platforms", "libqxcb.so"))')
    missing=$(ldd "$plugin" 2>/dev/null | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
    if [ -n "$missing" ]; then
        echo "studio: Qt cannot open a window on X11: these system libraries are missing: $missing" >&2
        echo "        (Debian / Ubuntu: sudo apt install libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxkbcommon-x11-0 libxcb-shape0)" >&2
        exit 1
    fi
fi
exec .venv/bin/loff-studio "$@"
