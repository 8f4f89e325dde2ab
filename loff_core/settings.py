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
from dataclasses import MISSING, asdict, dataclass, field, fields
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


def setting(default: Any = MISSING, help: str = "", *, kind: type = str, unit: str = "",
            low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
            choices: Optional[Iterable[str]] = None, option: Optional[str] = "", default_factory: Any = MISSING,
            optional: bool = False) -> Any:
    """A dataclass field that carries what a front end needs to show and check it.

    kind: int, float, str or bool; low / high: inclusive bounds (low_open: low excluded);
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
        if value is None and self.optional:
            return None
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


# -- the settings ------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentConfig:
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
class TrainConfig:
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


@dataclass(frozen=True)
class ExtractSettings:
    """How the frozen backbone is run over the images (`loff extract`, the Cache page)."""

    layers: str = setting("last", "which block(s) give the tokens: last (the model's output), -K (the K-th block "
                          "from the end; for EfficientNets a feature stage), N (block N) or -K: (the mean of the "
                          "last K); part of the cache's fingerprint and of the exported card")
    image_size: Optional[int] = setting(None, "input size in pixels (default: the model's own)", kind=int, low=16,
                                        unit="px", optional=True)
    grid: int = setting(16, "average-pool the token grid to at most GRID x GRID (LOFF-TA's high-resolution route)",
                        kind=int, low=1, unit="tokens")
    batch_size: int = setting(16, "images per backbone forward pass", kind=int, low=1, unit="images")
    workers: Optional[int] = setting(None, "decode worker processes (default: up to 4)", kind=int, low=0,
                                     optional=True)
    device: str = setting("auto", DEVICE_HELP)


@dataclass(frozen=True)
class EvaluateSettings:
    """How a run is evaluated (`loff evaluate`, `loff predict` with labels, the Results page)."""

    bootstrap: int = setting(1000, "bootstrap resamples for the 95% intervals (0: none)", kind=int, low=0)


#: heads cross-validation can score: the compact heads and a logistic regression
CV_HEADS: dict[str, str] = {**HEAD_KINDS, "logreg": "scikit-learn logistic regression on the pooled embedding, "
                                                    "C chosen by inner CV (classification only)"}


def _folds() -> Any:
    """`--folds` of `loff cv` and `loff tune` (one declaration, two commands)."""
    return setting(5, "patient-grouped, label-stratified folds over train + val", kind=int, low=2)


@dataclass(frozen=True)
class CVSettings:
    """How `loff cv` (and the Train page's Cross-validate) splits and what it scores; the
    training settings are TrainConfig's."""

    folds: int = _folds()
    head: str = setting(next(iter(HEAD_KINDS)), f"the head to score: {', '.join(HEAD_KINDS)} (as `loff train "
                        f"--head`) or logreg: {CV_HEADS['logreg']}", choices=CV_HEADS)


@dataclass(frozen=True)
class TuneSettings:
    """How `loff tune` (and the Train page's Tune) searches."""

    trials: int = setting(8, "head configurations to try (plus a logistic regression for classification)",
                          kind=int, low=1)
    folds: int = _folds()


@dataclass(frozen=True)
class AuditSettings:
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
