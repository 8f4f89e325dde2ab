"""What each step returns: a typed record per step (issue 10, point 3).

Every step (`loff_core.steps`) returns one of these instead of a string-keyed dict.
`to_json()` is exactly the document `loff STEP --json` prints (docs/cli.md; the keys are a
contract, tests/test_cli*.py check them); `to_dict()` is what the short human summary is
written from (the same, plus what only the summary shows for cv / tune). Torch-free.

The engine-internal results they are made from have other names: `cache.Extraction` (one
extraction's counts) and `training.TrainedHead` (a trained head in memory); the records here
are what a front end gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

#: the keys `metrics.evaluate_predictions` returns, in its order
EVALUATION_KEYS = ("metrics", "ci", "per_class", "per_class_auc", "confusion_matrix", "roc")


class StepResult:
    """A step's record: `to_json()` for `--json`, `to_dict()` for the summary."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return self.to_json()


@dataclass
class ImportResult(StepResult):
    project: str
    imported: int
    labelled: int
    failed: list[dict[str, str]]
    warnings: list[str]
    classes: list[str]
    splits: dict[str, int]
    per_class: dict[str, int]
    split_source: Optional[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"imported": self.imported, "labelled": self.labelled, "warnings": self.warnings,
                "classes": self.classes, "splits": self.splits, "per_class": self.per_class, "failed": self.failed,
                "project": self.project, "split_source": self.split_source}


@dataclass
class ExtractResult(StepResult):
    """A finished (or stopped) extraction as rank 0 reports it; under torchrun the other
    ranks report only `rank`, `world_size` and `extracted`."""

    extracted: int
    world_size: int = 1
    rank: int = 0
    cache: str = ""  # relative to the project
    fingerprint: str = ""
    backbone: dict[str, Any] = field(default_factory=dict)
    images: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    bytes_per_image: int = 0
    notes: list[str] = field(default_factory=list)
    stopped: Any = False

    def to_json(self) -> dict[str, Any]:
        if self.rank != 0:
            return {"rank": self.rank, "world_size": self.world_size, "extracted": self.extracted}
        return {"cache": self.cache, "fingerprint": self.fingerprint, "backbone": self.backbone, "images": self.images,
                "extracted": self.extracted, "skipped": self.skipped, "failed": self.failed, "seconds": self.seconds,
                "bytes_per_image": self.bytes_per_image, "notes": self.notes, "stopped": self.stopped,
                "world_size": self.world_size}


@dataclass
class TrainResult(StepResult):
    run: str
    head: str
    task: str
    classes: list[str]
    best_epoch: int
    monitor: str
    best_score: Optional[float]
    stopped: str
    epochs: int
    n_train: int
    n_val: int
    notes: list[str]
    decision: str = ""  # which rule decides the run's predictions, in one line (calibration.decision_line)

    @classmethod
    def from_record(cls, record: dict[str, Any], run_id: str) -> "TrainResult":
        """From a run's run.json (`decision`: the caller's, calibration.decision_line)."""
        r = record
        return cls(run=run_id, head=r["head_config"]["kind"], task=r["task"], classes=list(r["classes"]),
                   best_epoch=r["best_epoch"], monitor=r["monitor"], best_score=r["best_score"], stopped=r["stopped"],
                   epochs=len(r["history"]), n_train=r["n_train"], n_val=r["n_val"], notes=list(r.get("notes", [])))

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "head": self.head, "task": self.task, "classes": self.classes,
                "best_epoch": self.best_epoch, "monitor": self.monitor, "best_score": self.best_score,
                "stopped": self.stopped, "epochs": self.epochs, "n_train": self.n_train, "n_val": self.n_val,
                "notes": self.notes}

    def to_dict(self) -> dict[str, Any]:
        return {**self.to_json(), "decision": self.decision}


@dataclass
class EvaluateResult(StepResult):
    run: str
    split: str
    task: str
    classes: list[str]
    n: int
    stale: list[str]
    operating_point: Optional[dict[str, Any]]
    evaluation: dict[str, Any]  # metrics, ci, per_class, per_class_auc, confusion_matrix, roc
    warnings: list[str]
    predictions: list[dict[str, Any]]  # image_id, path (relative to the project), label, predicted, probabilities

    @property
    def metrics(self) -> dict[str, Optional[float]]:
        return self.evaluation["metrics"]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvaluateResult":
        """From what `Project.evaluate` returns (its dict form, kept for scripts)."""
        return cls(run=data["run"], split=data["split"], task=data["task"], classes=list(data["classes"]),
                   n=data["n"], stale=list(data["stale"]), operating_point=data.get("operating_point"),
                   evaluation={k: data[k] for k in data if k not in _EVALUATE_OWN},
                   warnings=list(data.get("warnings", [])), predictions=data["predictions"])

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "split": self.split, "task": self.task, "classes": self.classes, "n": self.n,
                "stale": self.stale, "operating_point": self.operating_point, **self.evaluation,
                "warnings": self.warnings, "predictions": self.predictions}


_EVALUATE_OWN = frozenset(("run", "split", "task", "classes", "n", "stale", "operating_point", "warnings",
                           "predictions"))


@dataclass
class ExportResult(StepResult):
    run: str
    out_dir: str
    files: dict[str, str]  # head, card (, onnx, report) -> path
    card: dict[str, Any] = field(repr=False)
    warnings: list[str] = field(default_factory=list)  # e.g. why report.html is missing (summary only)

    @property
    def onnx(self) -> Optional[dict[str, Any]]:
        return self.card.get("onnx")

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "out_dir": self.out_dir, "files": self.files, "onnx": self.onnx}

    def to_dict(self) -> dict[str, Any]:
        return {**self.to_json(), "warnings": list(self.warnings)}


@dataclass
class PredictResult(StepResult):
    head: str  # the exported head folder, or the project run's folder
    classes: list[str]
    task: str
    predictions: list[dict[str, Any]]  # path, predicted, probabilities (, label)
    failed: list[dict[str, str]]
    run: Optional[str] = None  # predicted with a project's run
    labelled: Optional[int] = None  # files that came with a label (None: labels not looked for)
    evaluation: Optional[dict[str, Any]] = None  # as `evaluate`'s, over the labelled files
    n: Optional[int] = None
    model: Optional[dict[str, Any]] = None  # which model made them: `model_of(card)`
    # each prediction's "out_of_distribution" is its reason or None; `ood` says why there are
    # no such flags ("no OOD summary in this head"); head_run: the run the head was trained as
    ood: Optional[str] = None
    head_run: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"head": self.head, "classes": self.classes, "task": self.task,
                               "predictions": self.predictions, "failed": self.failed, "ood": self.ood,
                               "head_run": self.head_run}
        if self.model is not None:
            out["model"] = self.model
        if self.run is not None:
            out["run"] = self.run
        if self.labelled is not None:
            out["labelled"] = self.labelled
        if self.evaluation is not None:
            out |= {"n": self.n, **self.evaluation}
        return out


@dataclass
class ExplainResult(StepResult):
    """A run's view of some images (the viewer's): per image, in the order asked, the class
    probabilities (after the run's calibration), the class its operating point decides, and
    the head's attention over the token grid (`attention`, [h, w], max 1) and on the image's
    own aspect (`heat`)."""

    run: str
    image_ids: list[str]
    classes: list[str]
    task: str
    probabilities: Any  # numpy [N, K] float
    predicted: list[str]
    attention: Any  # numpy [N, h, w]
    heat: list[Any]  # numpy arrays, one per image
    operating_point: Optional[dict[str, Any]] = None
    # per image: why it is out of distribution for the run (loff_core/ood.py), or None
    out_of_distribution: list[Optional[str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "image_ids": self.image_ids, "classes": self.classes, "task": self.task,
                "probabilities": [[float(p) for p in row] for row in self.probabilities],
                "predicted": self.predicted, "operating_point": self.operating_point}


@dataclass
class CVResult(StepResult):
    """`loff cv`: `to_json()` is exactly the documented document; the rest (fold sizes,
    stopped, ...) is in `details` and in groups/GROUP/group.json."""

    group: str
    folds: int
    metrics: dict[str, dict[str, Any]]
    details: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CVResult":
        return cls(group=data["group"], folds=data["folds"], metrics=data["metrics"], details=data)

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "folds": self.folds, "metrics": self.metrics}

    def to_dict(self) -> dict[str, Any]:
        return dict(self.details)


@dataclass
class TuneResult(StepResult):
    """`loff tune`: the leaderboard (best first), the final model (the winner's fold heads, or
    retrained: `details["final"]`) as `run`, its single
    test evaluation; the rest in `details` and groups/GROUP/group.json."""

    leaderboard: list[dict[str, Any]]
    best: dict[str, Any]
    run: Optional[str]
    test: Optional[dict[str, Any]]
    details: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TuneResult":
        return cls(leaderboard=data["leaderboard"], best=data["best"], run=data["run"], test=data["test"],
                   details=data)

    def to_json(self) -> dict[str, Any]:
        return {"leaderboard": [{"config": e["config"], "cv": e["cv"], **({"pruned": True} if e.get("pruned") else {})}
                                for e in self.leaderboard],
                "best": {"config": self.best["config"], "cv": self.best["cv"]}, "run": self.run, "test": self.test}

    def to_dict(self) -> dict[str, Any]:
        return dict(self.details)


@dataclass
class AuditResult(StepResult):
    """`loff audit`: each list most suspicious first, images named by the catalog's image_id;
    `to_json()` shows at most `top` of each (the CSVs in audit/ hold them all)."""

    duplicates: list[dict[str, Any]]
    label_suspects: list[dict[str, Any]]
    outliers: list[dict[str, Any]]
    shift: dict[str, Any]
    cache: str = ""
    images: int = 0
    leaks: int = 0
    top: int = 50
    date: str = ""
    saved: list[str] = field(default_factory=list)
    # where the label check's out-of-fold probabilities came from: {"block", "group" (a cv /
    # tune group whose oof.npz was reused, or None), "from_group", "from_probe"}
    label_source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"duplicates": self.duplicates[:self.top], "label_suspects": self.label_suspects[:self.top],
                "outliers": self.outliers[:self.top], "shift": self.shift}

    def to_dict(self) -> dict[str, Any]:
        return {**self.to_json(), "cache": self.cache, "images": self.images, "leaks": self.leaks,
                "n_duplicates": len(self.duplicates), "n_label_suspects": len(self.label_suspects),
                "saved": list(self.saved), "date": self.date, "label_source": dict(self.label_source)}


# -- what a run is called and what its score is (issue 23, item 4) ------------------------------
#: the tuned logistic regression: a `linear` head in its head_config, "logistic_regression" in
#: its train_config; shown by this name everywhere (run list, summaries, CSV, card readers)
LOGREG_NAME = "logistic regression"


def head_name(record: dict[str, Any]) -> str:
    """A run's head as every front end names it: "logistic regression" for `loff tune`'s
    fitted logistic regression (stored as a linear head), else the head kind, with "x5" for
    tune's five fold heads averaged ("attention x5")."""
    config = record.get("train_config") or {}
    if config.get("head") == "logistic_regression":
        return LOGREG_NAME
    head = record.get("head_config") or {}
    members = head.get("members") or 1
    return str(head.get("kind", "?")) + (f" x{members}" if isinstance(members, int) and members > 1 else "")


def config_head_name(head: Any) -> str:
    """A search configuration's head ("logistic_regression" -> "logistic regression")."""
    return LOGREG_NAME if head == "logistic_regression" else str(head)


def score_kind(record: dict[str, Any]) -> str:
    """What a run's best_score is: "cv" (mean over cross-validation folds: a `loff tune`
    winner), "val" (the validation split) or "train" (no validation images: minus the
    training loss). Scores of different kinds are never compared."""
    monitor = str(record.get("monitor") or "")
    if monitor.startswith("cv_"):
        return "cv"
    if monitor.startswith("val_"):
        return "val"
    return "train"


def score_text(record: dict[str, Any]) -> str:
    """A run's best score with its kind: "CV auc 0.840", "val auc 0.836", "train loss 0.312"."""
    score, monitor = record.get("best_score"), str(record.get("monitor") or "")
    kind = score_kind(record)
    if score is None:
        return "n/a"
    if kind == "train":
        return f"train loss {-float(score):.3f} (no validation images)"
    name = monitor.split("_", 1)[1].replace("_", " ")
    return f"{'CV' if kind == 'cv' else 'val'} {name} {float(score):.3f}"


def epochs_text(record: dict[str, Any]) -> str:
    """A run's epochs as the run list shows them: "19 (best 11), early stop"; a fitted
    logistic regression has none; a `tune` winner was trained a fixed number of epochs."""
    stopped = {"user_stop": "stopped by user", "early_stopping": "early stop"}.get(
        record.get("stopped", ""), str(record.get("stopped", "")))
    if head_name(record) == LOGREG_NAME:
        return "none (fitted, not trained by epochs)"
    history = record.get("history") or []
    members = (record.get("head_config") or {}).get("members") or 1
    if isinstance(members, int) and members > 1:
        return f"{members} fold heads, each early-stopped (median best epoch {record.get('best_epoch')})"
    if score_kind(record) == "cv":
        return f"{len(history)} (fixed: the folds' median best epoch)"
    return f"{len(history)} (best {record.get('best_epoch')}), {stopped}"


def choose_run(project: Any, runs: Optional[list[Any]] = None) -> tuple[Optional[str], str]:
    """The run a front end shows first, and the rule that chose it (said beside it). Only
    runs that are up to date (the active cache, the current labels) are candidates: the
    latest `loff tune` winner (chosen by cross-validation), else the best validation score
    among the runs with the same monitor as the newest one (a validation AUC is never
    compared with a CV AUC or a balanced accuracy); else the newest. When no run is up to
    date, the same rule over all runs (the rule's text says so)."""
    runs = list(project.runs() if runs is None else runs)
    if not runs:
        return None, ""
    fresh = [r for r in runs if not project.stale_reasons(r)]
    among = "the up-to-date runs on the active cache" if fresh else \
        "the runs (none is up to date with the active cache and labels)"
    candidates = fresh or runs
    tuned = [r for r in candidates if score_kind(r.record) == "cv"]
    if tuned:
        return tuned[-1].run_id, f"the latest Find-the-best-head winner (chosen by cross-validation) among {among}"
    val = [r for r in candidates if score_kind(r.record) == "val" and r.record.get("best_score") is not None]
    if val:
        monitor = val[-1].record["monitor"]
        same = [(r.record["best_score"], i, r) for i, r in enumerate(val) if r.record["monitor"] == monitor]
        best = max(same, key=lambda t: (t[0], t[1]))[2]
        return best.run_id, f"the best {monitor.replace('_', ' ')} among {among}"
    return candidates[-1].run_id, f"the newest of {among} (none has a validation score)"


def model_of(card: dict[str, Any]) -> dict[str, Any]:
    """Which model a head is, from its card (an export's card.json, or the card a project's
    run is described by): {"run", "backbone", "image_size", "head", "text"}; "text" names it
    in one phrase ("attention head on tf_efficientnet_lite0 at 224 px"), as the predictions
    CSV and the window name it."""
    backbone = card.get("backbone") or {}
    head = head_name({"train_config": (card.get("training") or {}).get("config"), "head_config": card.get("head")})
    size = backbone.get("image_size")
    text = (f"{head}{'' if head == LOGREG_NAME else ' head'} on {backbone.get('name', '?')}"
            + (f" at {size} px" if size else ""))
    return {"run": card.get("run"), "backbone": backbone.get("name"), "image_size": size, "head": head, "text": text}
