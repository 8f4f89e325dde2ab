"""Honest validation in the window (issue 13), as panels the pages embed with a hook line.

- `ValidationPanel` (Train page): "Cross-validate" (K patient-grouped folds over train +
  val with the page's head settings) and "Find the best head" (`loff tune`), each a job of
  the page's job runner with live progress and Stop (keeps the finished folds / trials);
  a leaderboard table fills as trials finish; the result of a CV is mean ± SD per metric.
- `ResultsExtras` (Results page): the fold spread of the latest cross-validation beside the
  metrics (or the tune group the run came from), the evaluation's warnings (test split too
  small), the run's operating point, and "Save operating point" for the threshold on the
  page's slider (binary runs).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from PySide6.QtWidgets import (QGroupBox, QHBoxLayout, QLabel, QPushButton, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from loff_core.progress import format_duration

from .remedies import window_text
from .state import AppState
from .widgets import ProgressStrip, enable, form_row
from .workers import wire

#: what each metric name means (tooltips; the same words as `loff evaluate --help`)
METRIC_TIPS = {
    "accuracy": "share of images whose predicted class is right",
    "balanced_accuracy": "mean recall over the classes (not fooled by imbalance)",
    "auc": "area under the ROC curve; macro one-vs-rest over classes",
    "kendall_tau": "Kendall's tau-b between the true and the predicted level (ordinal)",
    "kendall_tau_score": "Kendall's tau-b between the true level and the expected level, a continuous score "
                         "(no ties from rounding to a level)",
    "amae": "mean absolute error of the level per true level, averaged over levels (CSAW-M)",
    "mae": "mean absolute error of the predicted level",
    "accuracy_within_1": "share of images whose predicted level is at most one off",
}


def spread_text(metrics: dict[str, Any]) -> str:
    """{name: {"mean", "sd", ...}} -> "accuracy 0.652 ± 0.045, auc ..."."""
    parts = []
    for name, m in metrics.items():
        if m.get("mean") is None:
            continue
        parts.append(f"{name.replace('_', ' ')} {m['mean']:.3f}" + (f" ± {m['sd']:.3f}" if m.get("sd") is not None else ""))
    return ", ".join(parts)


def config_text(config: dict[str, Any]) -> str:
    from loff_core.results import config_head_name  # "logistic regression", as in the run list

    return ", ".join(f"{k} {config_head_name(v) if k == 'head' else v}" for k, v in config.items())


class ValidationPanel(QGroupBox):
    """Cross-validate / Find the best head, with a leaderboard (see the module docstring)."""

    def __init__(self, state: AppState, settings: Callable[[], dict[str, Any]], parent: Optional[QWidget] = None):
        super().__init__("Validate honestly: patient-grouped cross-validation on train + val (the test split is "
                         "not used)", parent)
        self.state = state
        self.settings = settings  # the Train page's head / task / epochs / lr / seed / augment
        from loff_core.settings import TuneSettings

        from .forms import control_for, duration_control

        self.folds = control_for(TuneSettings, "folds", high=20)  # declared once with `loff cv / tune --folds`
        from loff_core.settings import DEFAULT_TUNE_BUDGET, DEFAULT_TUNE_TRIALS

        self.trials = control_for(TuneSettings, "trials", high=100)
        self.trials.setValue(DEFAULT_TUNE_TRIALS)  # the declaration's None: this many without a budget
        # a plain `loff tune` stops starting trials after DEFAULT_TUNE_BUDGET: the window's default does too;
        # emptied, the trials alone decide
        self.budget = duration_control(TuneSettings, "budget", default=DEFAULT_TUNE_BUDGET)
        self.budget.setMaximumWidth(80)
        self.cv_button = QPushButton("Cross-validate")
        self.cv_button.setToolTip("train the head above once per fold and report each metric as mean ± SD")
        self.cv_button.clicked.connect(self.start_cv)
        self.tune_button = QPushButton("Find the best head")
        self.tune_button.setToolTip("search the cache's blocks, head kinds, learning rates, augmentation and length "
                                    "(the epochs above, or twice them) by cross-validation (Optuna); keep the "
                                    "winner's fold heads, averaged, and evaluate them once on test")
        self.tune_button.clicked.connect(self.start_tune)
        self.strip = ProgressStrip()
        self.strip.stop_clicked.connect(self.state.runner.stop)
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.board = QTableWidget(0, 5)
        self.board.setHorizontalHeaderLabels(["configuration", "accuracy", "balanced acc.", "AUC / tau", "folds"])
        self.board.horizontalHeader().setStretchLastSection(True)
        self.board.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.entries: list[dict[str, Any]] = []
        self.plan = ""
        layout = QVBoxLayout(self)
        # the progress strip on a line of its own, while a job runs: beside the controls it made the
        # row wider than the panel at 1280 x 720 (a horizontal scroll bar, Stop off-screen)
        layout.addWidget(form_row(QLabel("folds"), self.folds, self.cv_button, QLabel("trials"), self.trials,
                                  QLabel("budget"), self.budget, self.tune_button))
        layout.addWidget(self.strip)
        layout.addWidget(self.result)
        layout.addWidget(self.board)
        state.busy_changed.connect(self._busy)
        state.project_state.reset.connect(lambda _: self.forget())
        state.cache_changed.connect(lambda: self._busy(self.state.busy))
        state.catalog_changed.connect(lambda: self._busy(self.state.busy))
        self._busy(state.busy)

    def forget(self) -> None:
        """Another project: no result, trial or progress of the previous one stays."""
        self.entries = []
        self.board.setRowCount(0)
        self.result.setText("")
        self.strip.clear()
        self._busy(self.state.busy)

    def _busy(self, busy: bool) -> None:
        project = self.state.project
        ready = (project is not None and project.has_catalog() and bool(project.settings.active_cache)
                 and not project.cache_partial())  # the engine refuses a partial cache
        why = ("a job is running" if busy else "import images first" if project is None or not project.has_catalog()
               else "extract features first (Cache page)" if not project.settings.active_cache
               else "the feature cache is partial: Extract again on the Cache page to finish it")
        enable(self.cv_button, ready and not busy, why)
        enable(self.tune_button, ready and not busy, why)
        job = self.state.runner.job
        running = busy and job is not None and job.name in ("cross-validate", "find the best head")
        self.strip.set_running(running)
        # shown while its job runs: the outcome is the result line (the leaderboard keeps its rows at 1280 x 720)
        self.strip.setVisible(running)

    # -- cross-validation ---------------------------------------------------------------
    def cv_config(self) -> Any:
        """The Train page's TrainConfig, More settings included (its one builder)."""
        from .forms import train_config

        return train_config(self.settings())

    def start_cv(self) -> None:
        project = self.state.project
        if project is None:
            return
        from loff_core.settings import CVSettings

        config = self.cv_config()
        folds = self.folds.value()
        settings = CVSettings(folds=folds, head=config.head, train=config)

        def work(progress: Any) -> Any:
            from loff_core import steps

            return steps.cross_validate(project, settings, progress=progress).to_dict()
        job = self.state.start("cross-validate", work)
        if job is not None:
            job.on_close = "stop"
            self.result.setText(f"cross-validating {config.head} over {folds} folds ...")
            wire(job, strip=self.strip, done=self.show_cv, partial={"fold": self.show_fold})

    def show_fold(self, fold: dict[str, Any]) -> None:
        """A finished fold while the others run: its scores under the running line."""
        scores = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in fold["metrics"].items()
                           if k in ("accuracy", "auc", "kendall_tau") and v is not None)
        head = self.result.text().split("<br>")[0]
        self.result.setText(f"{head}<br>fold {fold['fold']}/{fold['folds']} done: {scores}")

    def show_cv(self, record: dict[str, Any]) -> None:
        done = f"{record['completed']} of {record['folds']} folds" + (" (stopped)" if record.get("stopped") else "")
        self.result.setText(f"<b>cross-validation {record['group']}</b> ({done}, {record['n_images']} images of "
                            f"{record['n_patients']} patients): {spread_text(record['metrics'])}")
        self.result.setToolTip("\n".join(f"{k}: {v}" for k, v in METRIC_TIPS.items()))
        self.strip.report(1, 1, "cross-validation done")
        self.state.message.emit("info", f"cross-validation {record['group']}: {spread_text(record['metrics'])}")
        self.state.runs_changed.emit()  # the Results page shows the new fold spread

    # -- tuning ----------------------------------------------------------------------------
    def start_tune(self) -> None:
        project = self.state.project
        if project is None:
            return
        from loff_core.settings import TuneSettings

        from .forms import duration_value

        trials, folds = self.trials.value(), self.folds.value()
        try:
            budget = duration_value(self.budget)
        except ValueError as exc:
            self.result.setText(f"budget: {exc}")
            self.state.message.emit("error", f"Find the best head: budget {exc}")
            return
        # the page's task, seed, epochs (the search's base length: it tries them and twice them),
        # device, batch size, ...: the engine keeps what the search does not vary (search.tune_base)
        config = self.cv_config()
        settings = TuneSettings(trials=trials, folds=folds, budget=budget, train=config)
        self.entries = []
        self.board.setRowCount(0)
        def work(progress: Any) -> Any:
            from loff_core import steps

            return steps.tune(project, settings, progress=progress).to_dict()  # each scored trial comes as a partial
        job = self.state.start("find the best head", work)
        if job is not None:
            job.on_close = "stop"
            within = f", no new one after {format_duration(budget)}" if budget else ""
            self.plan = (f"trying {trials} head configurations ({config.epochs} or {2 * config.epochs} epochs) after a "
                         f"logistic regression, {folds} folds each{within}; Stop keeps the best so far")
            self.result.setText(self.plan)
            job.notice.connect(self.show_notice)
            job.info.connect(self.show_notice)
            wire(job, strip=self.strip, partial={"trial": self.add_entry}, done=self.show_tune)

    def show_notice(self, text: str) -> None:
        """The search's one-line description and its estimate, under the running line."""
        self.plan = f"{self.plan}<br>{text}"
        self.result.setText(self.plan)

    def add_entry(self, entry: dict[str, Any]) -> None:
        """One scored configuration: the table is kept sorted best first, pruned ones last."""
        self.entries.append(entry)
        primary = "auc" if "kendall_tau" not in entry["cv"] else "kendall_tau"
        self.entries.sort(key=lambda e: (bool(e.get("pruned")), -((e["cv"].get(primary) or {}).get("mean") or -1e9)))
        self.board.setRowCount(0)
        for e in self.entries:
            row = self.board.rowCount()
            self.board.insertRow(row)
            cv = e["cv"]

            def cell(name: str) -> str:
                m = cv.get(name) or {}
                if m.get("mean") is None:
                    return "n/a"
                return f"{m['mean']:.3f}" + (f" ± {m['sd']:.3f}" if m.get("sd") is not None else "")
            folds = len(next(iter(e.get("per_fold", {}).values()), [])) or ""
            if e.get("pruned"):
                folds = f"{folds} (pruned)"
            shown = {k: v for k, v in e["config"].items() if not (k == "block" and v is None)}
            for col, text in enumerate([config_text(shown), cell("accuracy"), cell("balanced_accuracy"),
                                        cell(primary), str(folds)]):
                item = QTableWidgetItem(text)
                if e.get("pruned"):
                    item.setToolTip("pruned: clearly behind the best configuration after its first folds; "
                                    "never chosen")
                self.board.setItem(row, col, item)
        self.board.resizeColumnsToContents()

    def show_tune(self, out: dict[str, Any]) -> None:
        test = out.get("test") or {}
        shown = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in test.items() if v is not None)
        search = out.get("search") or {}
        done = (f"{search.get('trials_run', 0) + search.get('resumed', 0)} trials"
                + (f", {search['pruned']} pruned" if search.get("pruned") else "")
                + (", stopped: best so far" if out.get("stopped") else "")) if search else ""
        final = out.get("final") or {}
        kept = (f"its {final.get('members')} fold heads averaged" if final.get("model") == "fold-heads"
                else "retrained on train + val")
        self.result.setText(f"<b>best: {config_text(out['best']['config'])}</b> (cross-validation "
                            f"{spread_text(out['best']['cv'])}{'; ' + done if done else ''}); {kept} as run "
                            f"<b>{out['run']}</b>" + (f"; on the test split, once: {shown}" if shown else ""))
        self.strip.finish(f"best head: run {out['run']}")
        self.state.message.emit("info", f"best head: run {out['run']}")
        self.state.runs_changed.emit()


class ResultsExtras(QWidget):
    """Fold spread, warnings and the operating point under the Results page's summary."""

    def __init__(self, state: AppState, page: Any, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.state = state
        self.page = page  # the Results page: its result, threshold slider and positive-class box
        self.spread = QLabel("")
        self.spread.setWordWrap(True)
        self.spread.setToolTip("\n".join(f"{k}: {v}" for k, v in METRIC_TIPS.items()))
        self.warnings = QLabel("")
        self.warnings.setWordWrap(True)
        from .theme import warning_label

        warning_label(self.warnings)  # the theme's red, readable in the dark theme too
        self.operating = QLabel("")
        self.operating.setWordWrap(True)
        self.save_button = QPushButton("Save operating point")
        self.save_button.setToolTip("use the threshold on the slider for this run's decisions (evaluate, export, "
                                    "predict, viewer)")
        self.save_button.clicked.connect(self.save_threshold)
        enable(self.save_button, False, "evaluate a run first (binary classification runs only)")
        row = QHBoxLayout()
        row.addWidget(self.operating, 1)
        row.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.spread)
        layout.addWidget(self.warnings)
        layout.addLayout(row)

    def clear_result(self) -> None:
        """No evaluation shown (another run or project): no warning, decision or operating point
        of another run or project, and nothing to save an operating point of."""
        self.operating.setText("")
        self.warnings.setText("")
        enable(self.save_button, False, "evaluate a run first (binary classification runs only)")

    def show_result(self, result: dict[str, Any]) -> None:
        """The evaluation's warnings and decision, each naming its run (and split)."""
        from loff_core.calibration import describe

        where = f"run {result.get('run')}, {result.get('split')} split"
        self.warnings.setText("<br>".join(f"warning ({where}): {w}" for w in result.get("warnings", [])))
        self.operating.setText(f"decision: {describe(result.get('operating_point'))} (run {result.get('run')})")
        binary = result.get("task") == "classification" and len(result.get("classes", [])) == 2
        why = "" if binary else (
            f"a decision threshold is saved only for two-class runs; this run has {len(result.get('classes', []))} "
            f"classes ({result.get('task')}): it decides by the highest probability")
        enable(self.save_button, binary, why)
        if why:
            self.operating.setText(f"{self.operating.text()} <i>(Save operating point: {why})</i>")
        self.show_run(result.get("run") or "")

    def show_run(self, run_id: str) -> None:
        """The fold spread of the selected run (the project state's), or none."""
        self.spread.setText(self.spread_for(self.state.project_state, run_id) if run_id else "")

    @staticmethod
    def spread_for(ps: Any, run_id: Optional[str]) -> str:
        """The fold spread to show beside run `run_id` (`ps`: the window's ProjectState): the
        tune group that made it, else a cross-validation of exactly its settings; never
        another run's group (issue 23: a linear head's CV was shown beside an attention run)."""
        if not ps.groups:
            return "no cross-validation yet: a single split's metrics can be noise; Cross-validate on the Train page"
        mine = ps.groups_of(run_id) if run_id else []
        if not mine:
            return (f"no cross-validation of run {run_id}'s settings: a single split's metrics can be noise; "
                    f"Cross-validate with them on the Train page")
        rec = mine[0]
        if rec.get("kind") != "cv":
            return (f"fold spread (tune group {rec['group']}, {rec['folds']} folds, winner = run {run_id}): "
                    f"{spread_text(rec['best']['cv'])}")
        return (f"fold spread (cross-validation {rec['group']} of run {run_id}'s settings, "
                f"{(rec.get('config') or {}).get('head')}, {rec['completed']} folds): {spread_text(rec['metrics'])}")

    def save_threshold(self) -> None:
        from loff_core.calibration import describe, set_threshold

        project, result = self.state.project, self.page.result
        if project is None or result is None:
            self.state.message.emit("warning", "evaluate a run first: the operating point is saved for the run shown")
            return
        value = self.page.threshold.value() / 1000.0
        if self.page.positive.currentIndex() == 0:  # the slider thresholds P(first class): convert
            value = 1.0 - value
        try:
            with project.lock():
                op = set_threshold(project, result["run"], value)
        except Exception as exc:  # noqa: BLE001 - a message, not a crash
            self.state.message.emit("error", window_text(exc))
            return
        self.operating.setText(f"decision: {describe(op)} (saved; evaluate again to see its metrics)")
        self.state.message.emit("info", f"run {result['run']}: threshold {value:.3f} saved")


class ImportExtras(QWidget):
    """Import page: where the split and the patients come from (given split column, a
    second labels CSV for the official test split, patient from the file name, what to do
    with patients on two sides), and how the last import assigned them."""

    OVERLAP = (("stop and tell me", None), ("keep the given split", "keep"), ("re-split by patient", "resplit"))

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        from PySide6.QtWidgets import QComboBox, QLineEdit

        self.split_column = QComboBox()
        self.split_column.setToolTip("a CSV column saying train / val / test (any case; validation accepted); "
                                     "none: folders named train/val/test give the split, else a random split "
                                     "by patient")
        self.test_csv = QLineEdit()
        self.test_csv.setPlaceholderText("optional: labels CSV of the official test split (e.g. CSAW-M_test.csv)")
        self.test_csv.setToolTip("when set, the labels CSV above defines the train split and this one the test "
                                 "split; val is carved from train by patient")
        self.patient_regex = QLineEdit()
        self.patient_regex.setPlaceholderText(r"optional: patient from the file name, e.g. ^(\d+)_")
        self.patient_regex.setToolTip("a regular expression with one capture group, searched in each file name")
        self.overlap = QComboBox()
        for text, value in self.OVERLAP:
            self.overlap.addItem(text, value)
        self.overlap.setToolTip("when the given split puts one patient on two sides")
        self.assigned = QLabel("")
        self.assigned.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(form_row(QLabel("split column"), self.split_column, QLabel("test CSV"), self.test_csv,
                                  stretch_last=True))
        layout.addWidget(form_row(QLabel("patient from file name"), self.patient_regex,
                                  QLabel("patient on two sides"), self.overlap, stretch_last=True))

    def set_columns(self, columns: list[str]) -> None:
        self.split_column.clear()
        self.split_column.addItem("(none)", None)
        for c in columns:
            self.split_column.addItem(c, c)
        for i, c in enumerate(columns):
            if c.strip().lower() in ("split", "subset", "partition"):
                self.split_column.setCurrentIndex(i + 1)
                break

    def import_kwargs(self, labels_csv: Optional[str]) -> dict[str, Any]:
        """What to add to / change in `Project.import_images`' arguments."""
        from pathlib import Path

        out: dict[str, Any] = {"split_column": self.split_column.currentData(),
                               "patient_from_name": self.patient_regex.text().strip() or None,
                               "on_patient_overlap": self.overlap.currentData()}
        test = self.test_csv.text().strip()
        if test and labels_csv:
            out["labels_csv"] = [("train", Path(labels_csv)), ("test", Path(test))]
        return out

    def show_project(self, project: Any) -> None:
        from loff_core.splits import describe_split_source

        source = project.settings.split_source if project is not None else None
        self.assigned.setText("<br>".join(describe_split_source(source)))
