"""Make the application icon's raster forms from resources/icons/loff-studio.svg.

    .venv/bin/python packaging/make_icons.py          # (re)write the PNGs, .ico and .icns
    .venv/bin/python packaging/make_icons.py --check  # exit 1 when one is missing

Writes resources/icons/hicolor/<N>x<N>/apps/org.loff.Studio.png for N in 16..512 (the
freedesktop icon-theme layout that packaging/linux/install.sh copies into ~/.local), and
resources/icons/loff-studio.ico (Windows) and loff-studio.icns (macOS), both with Pillow.
The SVG is rendered by Qt's SVG renderer (PySide6, already a dependency), offscreen.
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

ICONS = Path(__file__).resolve().parent.parent / "resources" / "icons"
SVG = ICONS / "loff-studio.svg"
APP_ID = "org.loff.Studio"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def png_path(size: int) -> Path:
    return ICONS / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png"


def outputs() -> list[Path]:
    return [png_path(n) for n in SIZES] + [ICONS / "loff-studio.ico", ICONS / "loff-studio.icns",
                                            ICONS / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg"]


def render(size: int) -> bytes:
    """The SVG drawn at size x size, as PNG bytes."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication(["make_icons"])
    renderer = QSvgRenderer(str(SVG))
    if not renderer.isValid():
        raise SystemExit(f"make_icons: {SVG} is not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    buffer.close()
    return bytes(data.data())


def main(argv: list[str]) -> int:
    if "--check" in argv:
        missing = [str(p) for p in outputs() if not p.is_file()]
        if missing:
            print("make_icons: missing (run packaging/make_icons.py): " + ", ".join(missing), file=sys.stderr)
            return 1
        return 0
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PIL import Image

    images = {}
    for size in SIZES:
        path = png_path(size)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render(size))
        images[size] = Image.open(path).convert("RGBA")
    scalable = ICONS / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg"
    scalable.parent.mkdir(parents=True, exist_ok=True)
    scalable.write_bytes(SVG.read_bytes())
    big = images[512]
    big.save(ICONS / "loff-studio.ico", format="ICO", sizes=[(n, n) for n in (16, 24, 32, 48, 64, 128, 256)])
    big.save(ICONS / "loff-studio.icns", format="ICNS")
    for path in outputs():
        print(path.relative_to(ICONS.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
