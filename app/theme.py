"""Light and dark themes from `resources/themes/` (a palette JSON + a small stylesheet);
the plots follow: pyqtgraph's background and axis colours are set on every plot."""

from __future__ import annotations

import json
from typing import Any

import pyqtgraph as pg
from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication, QWidget

from .resources import resource_path

THEMES = ("light", "dark")
_current = {"name": "light"}


def warning_colour(name: str | None = None) -> str:
    """The colour of warning text (a stale run, SYNTHETIC, a warning line) in a theme (None:
    the one applied): red readable on that theme's window and base, contrast >= 4.5:1
    (WCAG AA; tests/test_window_items.py checks it). Labels use `warning_label`; rich
    text uses this colour in a span."""
    return theme_colours(name or _current["name"])["warning_text"]


def warning_label(label: QWidget) -> QWidget:
    """Mark a label as warning text: the theme's stylesheet colours it (QLabel[warning="true"])."""
    label.setProperty("warning", True)
    return label


def contrast_ratio(foreground: str, background: str) -> float:
    """WCAG 2 contrast ratio of two "#rrggbb" colours (1 to 21)."""
    def luminance(colour: str) -> float:
        rgb = [int(colour.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
        lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def theme_colours(name: str) -> dict[str, str]:
    return json.loads(resource_path("themes", f"{name}.json").read_text(encoding="utf-8"))


def icon(name: str) -> QIcon:
    """An action icon from resources/icons (an empty icon if it is missing)."""
    path = resource_path("icons", f"{name}.svg")
    return QIcon(str(path)) if path.exists() else QIcon()


def apply_theme(name: str, root: QWidget) -> dict[str, str]:
    """Palette + stylesheet for the application, and the colours of every plot under `root`."""
    if name not in THEMES:
        name = "light"
    c = theme_colours(name)
    _current["name"] = name
    app = QApplication.instance()
    palette = QPalette()
    for role, key in ((QPalette.ColorRole.Window, "window"), (QPalette.ColorRole.Base, "base"),
                      (QPalette.ColorRole.AlternateBase, "window"), (QPalette.ColorRole.Text, "text"),
                      (QPalette.ColorRole.WindowText, "text"), (QPalette.ColorRole.ButtonText, "text"),
                      (QPalette.ColorRole.Button, "button"), (QPalette.ColorRole.Highlight, "highlight"),
                      (QPalette.ColorRole.HighlightedText, "highlighted_text"), (QPalette.ColorRole.Mid, "mid"),
                      (QPalette.ColorRole.ToolTipBase, "base"), (QPalette.ColorRole.ToolTipText, "text")):
        palette.setColor(role, QColor(c[key]))
    # a disabled control must look disabled (setColor above sets every group alike: a disabled
    # Save operating point looked enabled and did nothing, issue 23 item 7)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(c["disabled_text"]))
    palette.setColor(QPalette.ColorRole.PlaceholderText, QColor(c["disabled_text"]))  # hints readable on base
    app.setPalette(palette)
    app.setStyleSheet(resource_path("themes", f"{name}.qss").read_text(encoding="utf-8"))
    pg.setConfigOption("background", c["plot_background"])
    pg.setConfigOption("foreground", c["plot_foreground"])
    for plot in root.findChildren(pg.PlotWidget) + root.findChildren(pg.ImageView):
        style_plot(plot, c)
    return c


def style_plot(plot: Any, c: dict[str, str]) -> None:
    if isinstance(plot, pg.ImageView):
        plot.getView()  # the image view keeps its black background (images are read on black)
        return
    plot.setBackground(c["plot_background"])
    item = plot.getPlotItem()
    for name in ("left", "bottom", "right", "top"):
        axis = item.getAxis(name)
        axis.setPen(pg.mkPen(c["plot_foreground"]))
        axis.setTextPen(pg.mkPen(c["plot_foreground"]))
    title = item.titleLabel
    if title is not None and title.text:
        title.setText(title.text, color=c["plot_foreground"])
