"""Every user-facing setting of the engine, declared once: its default, range, unit and one
line of help. torch-free, so `loff --help` and the window's forms can import it cheaply.

`loff`'s options are built from these declarations (`add_options`), the window reads the
same defaults, ranges and help, and `run.json` / exported cards are written from the
dataclasses themselves (`dataclasses.asdict`). A new training setting is one field in
`TrainConfig`: it then appears in `loff train --help`, in the run record and, through
`field_info`, in any form that lists the fields.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Any, Iterable, Optional

#: compact heads, the default first (docs/benchmarks.md, section 4: attention ties the linear
#: probe on mini-MIAS and is far better on the demo's masking levels)
HEAD_KINDS: dict[str, str] = {
    "attention": "attention pooling over the token grid (default; as accurate as the others on mini-MIAS, "
                 "far better than linear on the demo)",
    "linear": "a probe on the CLS embedding: 10x cheaper, good for global properties",
    "vit": "a small ViT over the token grid (LOFF-TA's compact classifier), 2-3x the attention head's cost",
}
#: what a head predicts: unordered classes, or ordered levels (masking 1-8, density A-D)
TASKS: dict[str, str] = {
    "classification": "unordered classes",
    "ordinal": "ordered levels (rank-consistent cumulative head; adds Kendall's tau and AMAE)",
}
DEVICE_HELP = "auto, cpu, cuda or cuda:N"
#: the input size range (pixels), checked wherever a size comes from: the CLI and the window
#: (ExtractSettings.image_size below), the registry, a downloaded preprocessor_config.json,
#: a backbone card, an exported head's card (`input_size_problem`)
INPUT_SIZE_MIN, INPUT_SIZE_MAX = 16, 4096

#: forward engines of extraction (loff_core/engines.py, which reads this table)
ENGINES: dict[str, str] = {
    "auto": "onnxruntime on the CPU when the backbone exports to ONNX, else torch",
    "torch": "PyTorch (channels_last for CNNs; bf16 autocast on CUDA)",
    "onnxruntime": "ONNX Runtime on the CPU (the backbone exported to ONNX in memory first)",
}


#: what the preprocessing cuts before the resize (loff_core/crop.py does it)
CROPS: dict[str, str] = {
    "none": "the whole image, its aspect kept, centred on a black square (caches made before 2026-12-03)",
    "body": "cut to the body (the largest bright region: the breast, the chest; labels and markers outside it "
            "dropped), its aspect kept",
    "body-fill": "cut to the body, then stretched to fill the square (a mammogram's breast is about twice as high "
                 "as wide: this doubles the pixels across it)",
}


def _block() -> Any:
    """`--block`: which of the cache's blocks a head is trained on (train, cv, tune: one
    declaration); recorded in the run, its fingerprint'd backbone record and the exported card."""
    return setting(None, "which of the cache's blocks to train on (a cache extracted with --layers -2,last holds "
                   "two; default: its first)", optional=True)


def setting(default: Any = MISSING, help: str = "", *, kind: type = str, unit: str = "",
            low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
            choices: Optional[Iterable[str]] = None, option: Optional[str] = "", default_factory: Any = MISSING,
            optional: bool = False) -> Any:
    """A dataclass field that carries what a front end needs to show and check it.

    kind: int, float, str, bool, or object (not checked: a value only scripts and the front
    ends' own options give); low / high: inclusive bounds (low_open: low excluded);
    option: the `loff` option name ("" derives --field-name, None: not a command-line option);
    optional: None is allowed (meaning "automatic", said in the help)."""
    meta = {"help": help, "kind": kind, "unit": unit, "low": low, "high": high, "low_open": low_open,
            "choices": tuple(choices) if choices is not None else None, "option": option, "optional": optional}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FieldInfo:
    """One declared setting, as a front end sees it."""

    name: str
    default: Any
    help: str
    kind: type
    unit: str
    low: Optional[float]
    high: Optional[float]
    low_open: bool
    choices: Optional[tuple[str, ...]]
    option: Optional[str]
    optional: bool

    def check(self, value: Any) -> Any:
        """`value` converted to the field's kind and checked against its range; ValueError
        with a reason a user can act on."""
        if self.optional and (value is None or (self.kind is str and str(value).strip() == "")):
            return None  # an empty text field of an optional setting: automatic
        if self.kind is bool:
            return bool(value)
        if self.kind in (int, float):
            try:
                number = self.kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"{value!r} is not {'an integer' if self.kind is int else 'a number'}") from None
            if isinstance(number, float) and not math.isfinite(number):
                raise ValueError(f"{value} is not a finite number")
            if self.low is not None and (number <= self.low if self.low_open else number < self.low):
                raise ValueError(f"{value} is too small ({'greater than' if self.low_open else 'at least'} {self.low})")
            if self.high is not None and number > self.high:
                raise ValueError(f"{value} is too large (at most {self.high})")
            return number
        text = str(value)
        if self.choices is not None and text not in self.choices:
            raise ValueError(f"{text!r} is not one of {', '.join(self.choices)}")
        return text


def field_info(cls: type, name: str) -> FieldInfo:
    for f in fields(cls):
        if f.name == name:
            default = f.default if f.default is not MISSING else (
                f.default_factory() if f.default_factory is not MISSING else None)  # type: ignore[misc]
            m = f.metadata
            return FieldInfo(f.name, default, m.get("help", ""), m.get("kind", str), m.get("unit", ""), m.get("low"),
                             m.get("high"), m.get("low_open", False), m.get("choices"), m.get("option", ""),
                             m.get("optional", False))
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def all_fields(cls: type) -> list[FieldInfo]:
    return [field_info(cls, f.name) for f in fields(cls)]


class Checked:
    """A settings dataclass whose every declared setting is checked against its declaration
    (kind, range, choices) when an object is built, by any front end or script: an
    out-of-range value is a `SettingError` naming the setting, never a surprise deep in a
    step (so the steps hold no hand checks of their own)."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            if "kind" not in f.metadata:
                continue
            value = getattr(self, f.name)
            if is_dataclass(value):
                continue  # a nested settings object checks itself
            info = field_info(type(self), f.name)
            for item in value if isinstance(value, (tuple, list)) else [value]:
                _check_one(type(self), info, item)


def _check_one(cls: type, info: FieldInfo, value: Any) -> None:
    from .errors import SettingError

    if info.kind is object:
        return
    try:
        if info.kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value} is not an integer")
        if info.kind is str and info.choices is None and value is not None and not isinstance(value, str):
            raise ValueError(f"{value!r} is not text")
        info.check(value)
    except ValueError as exc:
        raise SettingError(f"{cls.__name__}.{info.name}: {exc}") from None


# -- the settings ------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentConfig(Checked):
    """Which tensor augmentations training applies to cached token grids, and how strongly
    (`loff train --augment NAME=VALUE`; 0 turns one off)."""

    enabled: bool = setting(True, "master switch; AugmentConfig.off() disables every augmentation", kind=bool,
                            option=None)
    hflip: float = setting(0.5, "probability of a horizontal flip of the token grid", kind=float, low=0, high=1)
    crop_prob: float = setting(0.5, "probability of a random resized crop of the grid", kind=float, low=0, high=1)
    crop_scale: tuple[float, float] = setting((0.6, 1.0), "area range of that crop (LOW,HIGH; the box is "
                                              "resized back to the full grid)", kind=float, low=0, high=1,
                                              low_open=True)
    noise_std: float = setting(0.05, "std of Gaussian noise added to the tokens (in units of their std)",
                               kind=float, low=0, high=1)
    token_dropout: float = setting(0.1, "share of grid tokens zeroed", kind=float, low=0, high=1)
    mixup_alpha: float = setting(0.2, "Beta(alpha, alpha) of mixup (0: no mixup)", kind=float, low=0)
    mixup_prob: float = setting(0.5, "probability that a batch is mixed", kind=float, low=0, high=1)

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(enabled=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["crop_scale"] = list(self.crop_scale)
        return data


@dataclass(frozen=True)
class TrainConfig(Checked):
    """How a compact head is trained on the cache (`loff train`, the Train page, run.json)."""

    head: str = setting("attention", "the compact head: " + "; ".join(f"{k}: {v}" for k, v in HEAD_KINDS.items()),
                        choices=HEAD_KINDS)
    task: str = setting("classification", "classification (unordered classes) or ordinal (ordered levels); "
                        "default: the project's task", choices=TASKS)
    epochs: int = setting(30, "training epochs at most (early stopping may end sooner)", kind=int, low=1)
    batch_size: int = setting(32, "images per training step (halved automatically after a GPU out-of-memory)",
                              kind=int, low=1, unit="images")
    lr: float = setting(5e-4, "peak learning rate (AdamW; warm-up, then cosine to min_lr)", kind=float, low=0,
                        low_open=True, high=1)
    weight_decay: float = setting(0.05, "AdamW weight decay", kind=float, low=0, option=None)
    warmup_steps: Optional[int] = setting(None, "warm-up steps (default: 5% of all steps)", kind=int, low=0,
                                          optional=True, option=None)
    min_lr: float = setting(1e-6, "learning rate at the end of the cosine schedule", kind=float, low=0, option=None)
    patience: int = setting(8, "early-stopping patience: epochs without a better validation score", kind=int,
                            low=1, unit="epochs")
    grad_clip: float = setting(1.0, "gradient-norm clip", kind=float, low=0, option=None)
    seed: int = setting(0, "random seed (training is deterministic on the CPU)", kind=int)
    device: str = setting("auto", DEVICE_HELP)
    augment: AugmentConfig = setting(help="tensor augmentations", default_factory=AugmentConfig, option=None)
    class_weights: bool = setting(True, "weight the loss by inverse class frequency", kind=bool, option=None)
    width: int = setting(192, "width of the attention / ViT head", kind=int, low=8, option=None)
    depth: int = setting(2, "blocks of the ViT head", kind=int, low=1, option=None)
    block: Optional[str] = _block()


#: how a binary classification head decides by default: the criterion of the threshold that
#: `train` (on the validation split) and `tune` (on the out-of-fold predictions) fit; `loff
#: calibrate --criterion` and the Results page change a run's. Multi-class and ordinal heads
#: always decide by argmax / ordinal decode.
DECISION_RULES = {
    "argmax": "the positive class when its probability is at least 0.5 (the heads are trained with class "
              "weights, so 0.5 already balances the classes)",
    "youden": "the threshold with the best balanced accuracy (Youden's J) on the held-out images",
}
DEFAULT_DECISION = "argmax"
#: why, in one line (docs/benchmarks.md, "The decision rule"; benchmarks/defaults_evidence.py)
DEFAULT_DECISION_WHY = ("on the outer folds of both real data sets (mini-MIAS dense vs not, pediatric chest "
                        "X-rays) a Youden threshold fitted on validation lowered accuracy (-0.022, -0.009) and did "
                        "not raise balanced accuracy (-0.001, +0.003)")


#: `--layers default`: the blocks the default extraction stores (docs/benchmarks.md, "Which
#: layer"): for CNNs the second-to-last stage first (the attention head's best on mini-MIAS:
#: Lite0 and Lite2 AUC 0.864 vs 0.835 / 0.830 from `last`), then the network's output (the
#: linear probe's best: 0.836 / 0.849 vs 0.716 / 0.758); ViTs: their output only (no evidence yet)
DEFAULT_LAYERS = {"cnn": "-2,last", "vit": "last"}


@dataclass(frozen=True)
class ExtractSettings(Checked):
    """How the frozen backbone is run over the images (`loff extract`, the Cache page)."""

    layers: str = setting("default", "which block(s) give the tokens: last (the model's output), -K (the K-th "
                          "block from the end; for EfficientNets a feature stage), N (block N) or -K: (the mean of "
                          "the last K); several separated by commas (e.g. -2,last) are stored together from one "
                          "forward pass, the first is the default block training uses; default: for CNNs -2,last "
                          "(the attention head's best stage, then the linear probe's), for ViTs last; part of the "
                          "cache's fingerprint, and the chosen block of the exported card")
    image_size: Optional[int] = setting(None, "input size in pixels (default: the model's own)", kind=int,
                                        low=INPUT_SIZE_MIN, high=INPUT_SIZE_MAX, unit="px", optional=True)
    grid: int = setting(16, "average-pool the token grid to at most GRID x GRID (LOFF-TA's high-resolution route)",
                        kind=int, low=1, unit="tokens")
    crop: str = setting("body-fill", "what is cut before the resize: " + "; ".join(f"{k}: {v}" for k, v in CROPS.items())
                        + " (part of the cache's fingerprint; an image with no clear background, e.g. a chest "
                          "radiograph filled edge to edge, is never cut); default from nested CV on mini-MIAS "
                          "(docs/benchmarks.md section 11)", choices=CROPS)
    batch_size: int = setting(16, "images per backbone forward pass", kind=int, low=1, unit="images")
    workers: Optional[int] = setting(None, "decode worker processes (default: one per core beside the "
                                     "forward's, up to 8 on a CPU, 4 with a GPU; 1 on 2 cores)",
                                     kind=int, low=0, optional=True)
    device: str = setting("auto", DEVICE_HELP)
    engine: str = setting("auto", "who runs the backbone: " + "; ".join(f"{k}: {v}" for k, v in ENGINES.items())
                          + " (the features are the same within float16; the cache records the engine)",
                          choices=ENGINES)


def _bootstrap() -> Any:
    """`--bootstrap` of `loff evaluate` and `loff predict` (one declaration, two commands)."""
    return setting(1000, "bootstrap resamples for the 95% intervals (0: none)", kind=int, low=0)


@dataclass(frozen=True)
class EvaluateSettings(Checked):
    """How a run is evaluated (`loff evaluate`, the Results page)."""

    bootstrap: int = _bootstrap()


#: what an import does when the given split puts a patient on two sides (default: stop and report)
PATIENT_OVERLAP_ACTIONS = ("keep", "resplit")


@dataclass(frozen=True)
class ImportSettings(Checked):
    """How images and labels are read into the catalog (`loff import`, the Import page); the
    image folder is the step's input. A column left None is found by its usual names."""

    labels_csv: Any = setting(None, "one labels CSV, or a list of CSVs and (split, CSV) pairs (split None: the "
                              "CSV's own split column, or none)", kind=object, option=None, optional=True)
    label_column: Optional[str] = setting(None, "label column of the labels CSV (default: a column named label, or "
                                          "the only column left)", optional=True)
    file_column: Optional[str] = setting(None, "file column of the labels CSV (default: a column named file, "
                                         "filename, path, image, ...)", optional=True)
    patient_column: Optional[str] = setting(None, "default: a column named patient_id, patient, subject, woman, ...",
                                            optional=True)
    split_column: Optional[str] = setting(None, "take the split from this CSV column (train / val / test, any case; "
                                          "validation accepted); a split without val gets one carved from train",
                                          optional=True)
    patient_from_name: Optional[str] = setting(None, "the patient from the file name: a regular expression with one "
                                               "capture group, e.g. '^(\\d+)_' for NIH ChestX-ray14's "
                                               "PATIENT_FOLLOWUP.png", optional=True)
    on_patient_overlap: Optional[str] = setting(None, "when the given split puts a patient on two sides: keep it as "
                                                "given, or re-split by patient (default: stop and report the counts)",
                                                choices=PATIENT_OVERLAP_ACTIONS, optional=True)
    classes: Optional[tuple[str, ...]] = setting(None, "class order (low to high for ordinal labels), e.g. F,G,D",
                                                 option=None, optional=True)
    task: Optional[str] = setting(None, "the project's default task: " + "; ".join(f"{k}: {v}" for k, v in
                                                                                 TASKS.items()),
                                  choices=TASKS, optional=True)


@dataclass(frozen=True)
class PredictSettings(Checked):
    """How files are predicted (`loff predict`, the Predict page); the head (an exported head
    folder or a project) and the files are the step's inputs."""

    run: Optional[str] = setting(None, "with a project folder: the run to predict with (default: the latest)",
                                 optional=True)
    labels: Optional[str] = setting(None, "labels CSV for the files: metrics are reported as by evaluate (without "
                                    "it, class sub-folders of a given folder are the labels)", optional=True)
    label_column: str = setting("label", "label column of the labels CSV")
    file_column: Optional[str] = setting(None, "file column of the labels CSV (default: file, filename, path or "
                                         "image)", optional=True)
    bootstrap: int = _bootstrap()
    weights: Optional[str] = setting(None, "local weights file of the backbone (default: the card's)", option=None,
                                     optional=True)
    random_init: Optional[bool] = setting(None, "seeded random backbone weights (tests)", kind=bool, option=None,
                                          optional=True)
    device: str = setting("auto", DEVICE_HELP)
    batch_size: int = setting(8, "images per backbone forward pass", kind=int, low=1, unit="images")
    require_predictions: bool = setting(True, "no readable file is an error (else a result listing the failures)",
                                        kind=bool, option=None)


#: heads cross-validation can score: the compact heads and a logistic regression
CV_HEADS: dict[str, str] = {**HEAD_KINDS, "logreg": "scikit-learn logistic regression on the pooled embedding, "
                                                    "C chosen by inner CV (classification only)"}


#: `loff tune` when neither --trials nor --budget is given: this many trials, no new one once
#: this many seconds are spent (the default tune fits in 3 minutes on a 2-core CPU;
#: docs/validation.md says why)
DEFAULT_TUNE_TRIALS = 8
DEFAULT_TUNE_BUDGET = 150.0


def _folds() -> Any:
    """`--folds` of `loff cv` and `loff tune` (one declaration, two commands)."""
    return setting(5, "patient-grouped, label-stratified folds over train + val", kind=int, low=2)


@dataclass(frozen=True)
class CVSettings(Checked):
    """How `loff cv` (and the Train page's Cross-validate) splits and what it scores. `train`:
    how each fold's head is trained (its seed also shuffles the folds; its head is replaced
    by `head`); None: TrainConfig's defaults with the project's task."""

    folds: int = _folds()
    head: str = setting(next(iter(HEAD_KINDS)), f"the head to score: {', '.join(HEAD_KINDS)} (as `loff train "
                        f"--head`) or logreg: {CV_HEADS['logreg']}", choices=CV_HEADS)
    train: Optional[TrainConfig] = setting(None, "how each fold's head is trained", kind=object, option=None,
                                           optional=True)


#: what `loff tune` keeps of its winner (docs/validation.md; the evidence: docs/benchmarks.md,
#: "Which final model")
FINAL_MODELS: dict[str, str] = {
    "fold-heads": "the winner's K cross-validation heads, their probabilities averaged (no retraining)",
    "retrain": "one head of the winner retrained on train + val",
}


@dataclass(frozen=True)
class TuneSettings(Checked):
    """How `loff tune` (and the Train page's Find the best head) searches (loff_core/search.py).
    `train`: the task, seed, length (epochs / patience) and the settings the search does not
    vary (device, batch size, ...; `search.tune_base` decides which); None: TrainConfig's
    defaults with the project's task."""

    trials: Optional[int] = setting(None, f"head configurations to try, the defaults first (plus a logistic "
                                    f"regression for classification); default: {DEFAULT_TUNE_TRIALS}, no new one "
                                    f"after {DEFAULT_TUNE_BUDGET:.0f} s; with --budget alone, as many as it allows",
                                    kind=int, low=1, optional=True)
    folds: int = _folds()
    budget: Optional[float] = setting(None, "time budget of the search in seconds (command line: 90s, 3m, 1h); "
                                      "no new trial starts once it is spent", kind=float, unit="s", low=1,
                                      optional=True)
    heads: Optional[tuple[str, ...]] = setting(None, "head kinds searched, e.g. attention,linear (default: "
                                               + ", ".join(HEAD_KINDS) + ")", choices=HEAD_KINDS,
                                               option=None, optional=True)
    final: str = setting("fold-heads", "the model tune keeps: " + "; ".join(f"{k}: {v}" for k, v in FINAL_MODELS.items()),
                         choices=FINAL_MODELS)
    train: Optional[TrainConfig] = setting(None, "the base training settings", kind=object, option=None,
                                           optional=True)


@dataclass(frozen=True)
class AutoSettings(Checked):
    """How `loff auto` (and the window's Build a model) goes from a folder to an exported head:
    the import's columns are ImportSettings', the extraction ExtractSettings' defaults, the
    search TuneSettings' with this budget."""

    budget: float = setting(300.0, "time budget of the head search in seconds (command line: 90s, 5m, 1h); the "
                            "import and the extraction come before it and are not counted", kind=float, unit="s",
                            low=1)


def input_size_problem(value: Any) -> Optional[str]:
    """Why `value` is not an input size in the declared range (ExtractSettings.image_size);
    None when it is. Booleans and fractions are not sizes."""
    info = field_info(ExtractSettings, "image_size")
    if value is None or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        return f"{value!r} is not an input size ({int(info.low)}..{int(info.high)} px)"
    try:
        info.check(value)
    except ValueError:
        return f"{value!r} is outside the input size range {int(info.low)}..{int(info.high)} px"
    return None


#: what `loff audit --on-leak` does with near-duplicates across splits (loff_core/audit.py)
ON_LEAK_ACTIONS: dict[str, str] = {
    "drop-from-test": "exclude the val / test copies of each leak (the train copy stays; reversible with --include)",
    "regroup": "join the patients linked by a duplicate group and move each joined group into one split (its "
               "majority; ties to train), recorded in audit/on_leak.json",
    "undo": "undo the last --on-leak action (splits back, excluded copies included again)",
}


@dataclass(frozen=True)
class AuditSettings(Checked):
    """How `loff audit` looks at the cached embeddings (no forward pass): near-duplicates,
    suspected label errors, outliers and the shift between splits."""

    cache: Optional[str] = setting(None, "the cache (fingerprint) to audit (default: the active cache)",
                                   optional=True)
    duplicate_similarity: float = setting(0.90, "cosine similarity of the centred embeddings above which two "
                                          "images are near-duplicates", kind=float, low=0.0, high=1.0)
    neighbours: int = setting(5, "nearest neighbours an image's outlier score averages over", kind=int, low=1)
    folds: int = setting(5, "patient-grouped folds of the logistic-regression probe whose out-of-fold "
                         "predictions rank the suspected label errors", kind=int, low=2)
    shift_warn_auc: float = setting(0.7, "test-vs-train AUC above which the audit warns of a shift between "
                                    "splits", kind=float, low=0.5, high=1.0)
    bootstrap: int = setting(200, "bootstrap resamples of the shift AUC's interval", kind=int, low=0)
    top: int = setting(50, "longest list shown per finding (the CSVs in audit/ hold them all)", kind=int, low=1)
    seed: int = setting(0, "seed of the folds and the bootstrap", kind=int)


#: 2-D projections of the data map (loff_core/datamap.py; the first is the default)
MAP_METHODS: dict[str, str] = {
    "pca": "principal components 1 and 2 (seconds)",
    "tsne": "t-SNE (scikit-learn; neighbourhoods kept, distances between clusters not meaningful; minutes on "
            "20,000 images)",
}
#: what the data map's points can be coloured by
MAP_COLOURS: dict[str, str] = {"label": "the catalog's label", "split": "train / val / test",
                               "prediction": "the latest run's evaluated prediction",
                               "audit": "the audit's flag (leak, duplicate, label suspect, outlier)"}


@dataclass(frozen=True)
class DataMapSettings(Checked):
    """How the window's Data map draws the cached embeddings (app/pages/data_map_page.py)."""

    method: str = setting(next(iter(MAP_METHODS)), "2-D projection: " + "; ".join(f"{k}: {v}" for k, v in
                                                                               MAP_METHODS.items()),
                          choices=MAP_METHODS)
    colour: str = setting("label", "what colours the points: " + "; ".join(f"{k}: {v}" for k, v in
                                                                       MAP_COLOURS.items()), choices=MAP_COLOURS)


# -- command-line options from the declarations ----------------------------------------
def option_name(info: FieldInfo) -> Optional[str]:
    if info.option is None:
        return None
    return info.option or "--" + info.name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls: type, *, names: Optional[Iterable[str]] = None,
                defaults: bool = True) -> None:
    """Add one option per declared setting of `cls` (those with an option name). With
    defaults=False the option defaults to None, for settings whose default depends on
    something else (the project's task)."""
    wanted = set(names) if names is not None else None
    for info in all_fields(cls):
        name = option_name(info)
        if name is None or (wanted is not None and info.name not in wanted) or info.kind is bool:
            continue
        shown = info.help
        if info.default is not None and not info.choices:
            shown += f" (default: {info.default}{' ' + info.unit if info.unit else ''})"
        kwargs: dict[str, Any] = {"help": shown.replace("%", "%%"), "dest": info.name,
                                  "default": info.default if defaults else None}
        if info.choices is not None:
            kwargs["choices"] = list(info.choices)
        else:
            kwargs["type"] = _argparse_type(info)
        parser.add_argument(name, **kwargs)


def _argparse_type(info: FieldInfo) -> Any:
    def parse(text: str) -> Any:
        try:
            return info.check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = info.kind.__name__  # argparse names the type in its messages
    return parse


def config_record(config: Any) -> dict[str, Any]:
    """A settings object as run.json and group.json record it: `asdict`, made JSON-able."""
    return json.loads(json.dumps(asdict(config), default=str))
