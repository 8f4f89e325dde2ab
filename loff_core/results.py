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
    files: dict[str, str]  # head, card (, onnx) -> path
    card: dict[str, Any] = field(repr=False)

    @property
    def onnx(self) -> Optional[dict[str, Any]]:
        return self.card.get("onnx")

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "out_dir": self.out_dir, "files": self.files, "onnx": self.onnx}


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

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"head": self.head, "classes": self.classes, "task": self.task,
                               "predictions": self.predictions, "failed": self.failed}
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
    """`loff tune`: the leaderboard (best first), the winner retrained as `run`, its single
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
        return {"leaderboard": [{"config": e["config"], "cv": e["cv"]} for e in self.leaderboard],
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

    def to_json(self) -> dict[str, Any]:
        return {"duplicates": self.duplicates[:self.top], "label_suspects": self.label_suspects[:self.top],
                "outliers": self.outliers[:self.top], "shift": self.shift}

    def to_dict(self) -> dict[str, Any]:
        return {**self.to_json(), "cache": self.cache, "images": self.images, "leaks": self.leaks,
                "n_duplicates": len(self.duplicates), "n_label_suspects": len(self.label_suspects),
                "saved": list(self.saved), "date": self.date}
