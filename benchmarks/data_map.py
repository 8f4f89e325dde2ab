"""Data map smoothness (issue 22, point 2): build the map's scatter with N points (default
20,000, in 6 coloured clusters, as app/pages/data_map_page.py draws it: one pyqtgraph
ScatterPlotItem per colour, pxMode) and time drawing it, panning it and a rectangle
selection. Each pan is one translateBy of the view and a full render of the widget
(QWidget.grab), so the figure is a frame time. Runs under QT_QPA_PLATFORM=offscreen.

    nice -n 5 python benchmarks/data_map.py [--points 20000] [--pans 30] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--pans", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="2,000 points, 5 pans")
    args = parser.parse_args()
    if args.smoke:
        args.points, args.pans = 2000, 5

    import numpy as np
    from PySide6.QtCore import QPointF, QRectF
    from PySide6.QtWidgets import QApplication

    from app.pages.data_map_page import MapPlot

    app = QApplication.instance() or QApplication([])
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (6, 2))
    which = rng.integers(0, 6, args.points)
    xy = (centres[which] + rng.normal(0, 1, (args.points, 2))).astype(np.float32)
    categories = [f"class {c}" for c in which]
    plot = MapPlot()
    plot.resize(800, 600)
    plot.show()
    app.processEvents()
    t = time.perf_counter()
    plot.set_points(xy, categories)
    plot.grab()
    build = time.perf_counter() - t
    frames = []
    for i in range(args.pans):
        t = time.perf_counter()
        plot.view.translateBy(x=0.2 if i % 2 == 0 else -0.2, y=0.1)
        app.processEvents()
        plot.grab()
        frames.append(time.perf_counter() - t)
    t = time.perf_counter()
    picked = []
    plot.selected.connect(picked.append)
    plot._rect(QRectF(QPointF(-2, -2), QPointF(2, 2)))
    select = time.perf_counter() - t
    t = time.perf_counter()
    plot.nearest(QPointF(0.0, 0.0))
    click = time.perf_counter() - t
    print(f"data map, {args.points} points in 6 colours, one ScatterPlotItem per colour (pxMode), 800 x 600, "
          f"offscreen")
    print()
    print("| points | draw (s) | pan frame median (ms) | pan frame max (ms) | rectangle select (ms) | click (ms) |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.points} | {build:.2f} | {1000 * statistics.median(frames):.1f} | {1000 * max(frames):.1f} | "
          f"{1000 * select:.1f} ({len(picked[0])} points) | {1000 * click:.2f} |")
    plot.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
