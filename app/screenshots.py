"""Screenshots of every page: `python -m app.screenshots PROJECT [--out docs/screenshots]`.

Opens the window on PROJECT and drives it like a user: the steps the project still lacks
(feature cache, a training run) are done through the Cache and Train pages, then the
Results page evaluates the newest run, the fullest off-diagonal (else diagonal)
confusion-matrix cell is opened in the Viewer, and each page is saved as
OUT/<page>.png with `window.grab()`. Works headless (QT_QPA_PLATFORM=offscreen).

    --quick          extract with a random-init vit_tiny at 32 px (no weights needed; for
                     trying the script on the synthetic demo, the pictures mean nothing)
    --backbone NAME  backbone for a missing cache (default: the Cache page's default)
    --image-size PX  input size for a missing cache (default: the model's, as the Cache page
                     advises on a CPU)
    --size WxH       window size (default 1280x720, the smallest screen the window is made for)
    --theme NAME     light (default) or dark

Also saves OUT/viewer-exam.png: the Viewer's exam view of the first image's patient.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

PAGES = ["import", "cache", "train", "results", "viewer", "predict"]  # + viewer-exam


def _wait(app: Any, condition: Callable[[], bool], timeout_s: float = 3600) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
    return True


def _settle(app: Any, seconds: float = 0.5) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("project")
    parser.add_argument("--out", default="docs/screenshots")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--theme", default="light")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from PySide6.QtWidgets import QApplication

    from .main import MainWindow
    from .state import setup_logging

    app = QApplication.instance() or QApplication([sys.argv[0]])
    setup_logging()
    w = MainWindow()
    w.confirm_close = True
    width, height = (int(v) for v in args.size.lower().split("x"))
    w.resize(width, height)
    w.show()
    w.set_theme(args.theme)
    if not w.open_project(args.project):
        print(f"cannot open {args.project}", file=sys.stderr)
        return 1
    _fill_project(app, w, args)
    _save_pages(app, w, Path(args.out))
    w.close()
    return 0


def _fill_project(app: Any, w: Any, args: argparse.Namespace) -> None:
    """Do what the project still lacks through the pages, as a user would: extract, train,
    evaluate (and open the fullest confusion cell in the Viewer), predict a few test images."""
    project = w.state.project
    idle = lambda: not w.state.busy  # noqa: E731

    if project.has_catalog() and not project.settings.active_cache:
        page = w.cache_page
        if args.quick:
            page.backbone.setCurrentText("vit_tiny_patch16_224")
            page.random_init.setChecked(True)
            page.image_size.setValue(32)
            page.grid.setValue(2)
        elif args.backbone:
            page.backbone.setCurrentText(args.backbone)
        if args.image_size:
            page.image_size.setValue(args.image_size)
        w.tabs.setCurrentWidget(page)
        page.start_extract()
        _wait(app, idle)
    if project.settings.active_cache and not project.runs():
        page = w.train_page
        if args.epochs or args.quick:
            page.epochs.setValue(args.epochs or 8)
        w.tabs.setCurrentWidget(page)
        page.start_training()
        _wait(app, idle)
    elif project.runs():
        w.train_page.show_history(project.runs()[-1].record.get("history", []))
    if project.runs():
        _evaluate_and_browse(app, w, idle)
    if project.runs() and project.has_catalog():
        predict = w.predict_page
        test = [str(project.image_path(e)) for e in project.catalog().in_split("test")[:8]]
        if test:
            predict.files.setText(";".join(test))
            predict.start_predict()
            _wait(app, idle, 600)
    import_page = w.import_page
    if import_page.model.rowCount():
        import_page.table.selectRow(0)
        import_page.table.setCurrentIndex(import_page.model.index(0, 0))


def _evaluate_and_browse(app: Any, w: Any, idle: Callable[[], bool]) -> None:
    """Evaluate the best run on the Results page and open its fullest off-diagonal (else
    diagonal) confusion-matrix cell in the Viewer."""
    results = w.results_page
    results.refresh()  # the best run is chosen by default
    results.start_evaluate()
    _wait(app, idle)
    r = results.result
    if r is None:
        return
    cm = r["confusion_matrix"]
    n = len(cm)
    cells = [(i, j) for i in range(n) for j in range(n) if cm[i][j]]
    off = [c for c in cells if c[0] != c[1]]
    if cells:
        i, j = max(off or cells, key=lambda c: cm[c[0]][c[1]])
        results.confusion.setCurrentCell(i, j)
        results.select_cell(i, j)
        results._browse_cell()
        viewer = w.viewer_page
        _wait(app, lambda: bool(viewer.ids) and viewer.ids[0] in viewer.explained, 600)
        _wait(app, idle)


def _save_pages(app: Any, w: Any, out: Path) -> None:
    """Each page as OUT/<page>.png, then the Viewer's exam view as OUT/viewer-exam.png."""
    out.mkdir(parents=True, exist_ok=True)
    pages = [w.import_page, w.cache_page, w.train_page, w.results_page, w.viewer_page, w.predict_page]
    for name, page in zip(PAGES, pages):
        w.tabs.setCurrentWidget(page)
        _settle(app, 1.0)
        path = out / f"{name}.png"
        w.grab().save(str(path), "PNG", 9)
        kb = path.stat().st_size / 1024
        print(f"{path}  {kb:.0f} KB" + ("  (over 300 KB: do not commit)" if kb > 300 else ""))
    viewer = w.viewer_page
    if viewer.ids:
        w.tabs.setCurrentWidget(viewer)
        viewer.exam_button.setChecked(True)
        _wait(app, lambda: all(p.pixels is not None for p in viewer.exam_panels.values()), 120)
        _wait(app, lambda: all(p.exam_heat is not None for p in viewer.exam_panels.values()), 600)
        _settle(app, 1.0)
        path = out / "viewer-exam.png"
        w.grab().save(str(path), "PNG", 9)
        print(f"{path}  {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    sys.exit(main())
