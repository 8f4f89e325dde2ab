"""Exported heads: write `head.safetensors` + `card.json` (+ `model.onnx`) and the model
report `report.html` beside them, load them back safely, and predict new images headless.

The card is self-describing (classes, task, head config, backbone name and weights hash,
preprocessing, metrics, versions) and is validated against `CARD_SCHEMA` on load. Loading
never unpickles anything: tensors come from safetensors, the rest from JSON. A head is
only run on features of the backbone it was trained on: the backbone's weights hash and
preprocessing must match the card's, or loading is refused with the reason.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from . import __version__
from .errors import ExportError, Remedy, UnreadableImage
from .fsutil import atomic_path, atomic_write_json, sha256_file
from .progress import Progress
from .settings import CROPS, HEAD_KINDS, TASKS
from . import trust

CARD_FORMAT = "loff-head"
# 2: operating_point (calibration, prevalence, threshold); 3: files.card_sha256 seals the
# card (classes, task, operating point, ... with the head's SHA-256); 4: ood (a summary of the
# training embeddings in ood.safetensors, loff_core/ood.py); 1 to 3 still load (no OOD flags)
CARD_VERSION = 5  # 5: backbone.crop (written as 5 only by a cropped head: older readers refuse it)

CARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["format", "format_version", "task", "classes", "head", "backbone", "preprocessing", "files"],
    "properties": {
        "format": {"const": CARD_FORMAT},
        "format_version": {"type": "integer", "minimum": 1, "maximum": CARD_VERSION},
        "task": {"enum": list(TASKS)},
        "classes": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 200}, "minItems": 2,
                    "maxItems": trust.MAX_CLASSES},
        "head": {
            "type": "object",
            "required": ["kind", "task", "num_classes", "feature_dim", "grid_hw"],
            "properties": {
                "kind": {"enum": list(HEAD_KINDS)},
                "task": {"enum": list(TASKS)},
                "num_classes": {"type": "integer", "minimum": 2, "maximum": trust.MAX_CLASSES},
                "feature_dim": {"type": "integer", "minimum": 1, "maximum": trust.MAX_FEATURE_DIM},
                "grid_hw": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": trust.MAX_GRID_SIDE},
                            "minItems": 2, "maxItems": 2},
                "width": {"type": "integer", "minimum": 1, "maximum": trust.MAX_WIDTH},
                "depth": {"type": "integer", "minimum": 0, "maximum": trust.MAX_DEPTH},
                "num_heads": {"type": "integer", "minimum": 1, "maximum": trust.MAX_HEADS},
                "dropout": {"type": "number", "minimum": 0, "maximum": 1},
                "members": {"type": "integer", "minimum": 1, "maximum": trust.MAX_MEMBERS},
            },
        },
        "backbone": {
            "type": "object",
            "required": ["name", "weights_hash", "image_size", "fingerprint"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "weights_hash": {"type": "string", "minLength": 8},
                "image_size": {"type": "integer", "minimum": 8, "maximum": trust.MAX_IMAGE_SIZE},
                "fingerprint": {"type": "string", "minLength": 8},
                "grid": {"type": ["integer", "null"], "minimum": 1, "maximum": trust.MAX_GRID_SIDE},
                "seed": {"type": "integer"},
                "random_init": {"type": "boolean"},
                "weights_file": {"type": ["string", "null"]},
                "layers": {"type": "string", "pattern": "^(last|-?[0-9]+|-[0-9]+:)$"},
                "crop": {"enum": list(CROPS)},
            },
        },
        "preprocessing": {
            "type": "object",
            "required": ["image_size", "mean", "std"],
            "properties": {
                "image_size": {"type": "integer", "minimum": 8, "maximum": trust.MAX_IMAGE_SIZE},
                "mean": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
                "std": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
            },
        },
        "files": {
            "type": "object",
            "required": ["head", "head_sha256"],
            "properties": {"head": {"const": "head.safetensors"}, "head_sha256": {"type": "string"},
                           "card_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
        },
        "metrics": {"type": "object"},
        "operating_point": {"type": ["object", "null"]},
        "ood": {"type": ["object", "null"], "required": ["file", "sha256", "threshold"],
                "properties": {"file": {"const": "ood.safetensors"}, "threshold": {"type": "number"}}},
    },
}


@dataclass
class LoadedHead:
    """An exported head, checked and ready to run on a backbone's tokens."""

    folder: Path
    card: dict[str, Any]
    head_config: Any
    module: Any  # torch.nn.Module in eval mode
    ood: Any = None  # the out-of-distribution summary's tensors (loff_core/ood.py); None: the head has none

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def task(self) -> str:
        return self.card["task"]


# -- export ------------------------------------------------------------------------------
def export_head(project: Any, out_dir: Path | str, *, run_id: Optional[str] = None, onnx: bool = False,
                progress: Progress = Progress()) -> dict[str, Any]:
    """Write a run's head as a self-describing package; returns what was written.

    The package is built in a hidden folder beside `out_dir` and swapped in whole at the
    end: an interrupted export leaves the previous export as it was, and a `model.onnx`
    never sits beside another run's card."""
    import os
    import shutil

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError("not a folder", out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "card.json").is_file():
        raise ExportError("the folder holds other files and is not an exported head; choose a new or empty folder",
                          out_dir)
    run = project.run(run_id)
    head_config, state = project.load_head(run)
    _evaluate_if_needed(project, run)
    progress.report(0, 3 if onnx else 2, "writing head")
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)  # a read-only location is named here, before any work
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    _clean_killed_exports(out_dir)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, str(staging / "head.safetensors"),
                  metadata={"format": CARD_FORMAT})
        progress.report(1, 3 if onnx else 2, "writing card")
        card = _make_card(project, run, head_config, sha256_file(staging / "head.safetensors"))
        card["ood"] = _write_ood(project, run, staging)
        if onnx:
            progress.check()
            card["onnx"] = export_onnx(staging, card, head_config, state, progress=progress)
        card["files"]["card_sha256"] = card_seal(card)
        validate_card(card, out_dir / "card.json")
        atomic_write_json(staging / "card.json", card)
        warnings: list[str] = []
        report = _write_report(project, run, staging / "report.html", progress, warnings)
        progress.check()
        if out_dir.exists():
            os.replace(out_dir, old)  # (an empty out_dir made above goes the same way)
        try:
            os.replace(staging, out_dir)
        except BaseException:
            if old.exists() and not out_dir.exists():
                os.replace(old, out_dir)  # the previous export back where it was
            raise
    except OSError as exc:  # name the export folder, not the hidden staging folder
        name = os.fsdecode(exc.filename) if exc.filename is not None else None
        if name is not None and Path(name).is_relative_to(staging):
            raise OSError(exc.errno, exc.strerror, str(out_dir / Path(name).relative_to(staging))) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    written = {"head": str(out_dir / "head.safetensors"), "card": str(out_dir / "card.json")}
    if onnx:
        written["onnx"] = str(out_dir / "model.onnx")
    if report:
        written["report"] = str(out_dir / "report.html")
    progress.report(3 if onnx else 2, 3 if onnx else 2, "exported")
    return {"run": run.run_id, "out_dir": str(out_dir), "files": written, "card": card, "warnings": warnings}


def _write_report(project: Any, run: Any, path: Path, progress: Progress, warnings: list[str]) -> bool:
    """The model report (loff_core/report.py) beside the card. A report that cannot be
    written loses nothing of the export: the head and card are exported without it, and
    why is a notice (the window shows it at once) and one of `warnings`."""
    from .errors import one_line
    from .progress import Cancelled
    from .report import write_report

    try:
        write_report(project, run.run_id, path, progress=progress.linked(lambda d, n, m: None))
        return True
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the report: the export goes on
        warnings.append(f"the export has no report.html: {one_line(str(exc))}")
        progress.notice(warnings[-1])
        return False


def _write_ood(project: Any, run: Any, folder: Path) -> Optional[dict[str, Any]]:
    """ood.safetensors in `folder` and the card's `ood` block; None (no summary, the head
    still exports) when the run's training features cannot be read."""
    from . import ood
    from .errors import LoffError

    try:
        model, block = ood.run_summary(project, run)
    except (LoffError, ValueError, OSError, KeyError):
        return None
    path = ood.save(folder, model)
    return {**block, "file": ood.OOD_FILE, "sha256": sha256_file(path)}


def _clean_killed_exports(out_dir: Path) -> None:
    """Tidy what an export killed mid-way (SIGKILL, power loss) left beside `out_dir`: its hidden
    staging folder is deleted, and a previous export it had moved aside (killed between the two
    renames, so `out_dir` is missing) is put back. Folders of a running export are left alone."""
    import os
    import shutil

    from .fsutil import pid_alive

    for kind in ("partial", "old"):
        for path in sorted(out_dir.parent.glob(f".{out_dir.name}.{kind}-*")):
            pid = path.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or pid_alive(int(pid)) or not path.is_dir():
                continue
            if kind == "old" and not out_dir.exists():
                os.replace(path, out_dir)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _evaluate_if_needed(project: Any, run: Any) -> None:
    """A card carries the run's validation and test metrics: splits never evaluated are
    evaluated now (an empty split is left out)."""
    from .errors import ProjectError
    from .evaluation import evaluate_run

    for split in ("val", "test"):
        if not (run.path / f"eval-{split}.json").exists():
            try:
                evaluate_run(project, run.run_id, split)
            except ProjectError:
                pass  # e.g. no labelled images with features in that split


def _make_card(project: Any, run: Any, head_config: Any, head_sha256: str) -> dict[str, Any]:
    record = run.record
    backbone = dict(record["backbone"])
    metrics = {}
    for split in ("val", "test"):
        path = run.path / f"eval-{split}.json"
        if path.exists():
            saved = trust.load_json(path, what="evaluation report")
            metrics[split] = {"n": saved.get("n"), "metrics": saved.get("metrics"), "ci": saved.get("ci")}
    return {
        "format": CARD_FORMAT,
        # a head on uncropped features keeps version 4, which every reader since then opens
        "format_version": CARD_VERSION if backbone.get("crop", "none") != "none" else 4,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": run.run_id,
        "task": record["task"],
        "classes": list(record["classes"]),
        "head": head_config.to_dict(),
        "backbone": backbone,
        "preprocessing": {
            "image_size": backbone["image_size"],
            "mean": list(backbone["mean"]),
            "std": list(backbone["std"]),
            "grid": backbone.get("grid"),
            "decode": "DICOM modality LUT + VOI LUT/window, MONOCHROME1 inverted, scaled to [0, 1]; "
                      "PNG/JPEG grey; multi-frame: central frame",
            "crop": backbone.get("crop", "none"),
            "resize": ("cut to the body (the largest bright region, loff_core/crop.py) first; " if
                       backbone.get("crop", "none") != "none" else "")
                      + ("the cut stretched to image_size x image_size (an image with no clear background: as below)"
                         if backbone.get("crop") == "body-fill" else
                         "aspect-preserving resize of the longer side to image_size, zero-padded to a square"),
            "channels": "grey repeated to 3 channels, then (x - mean) / std",
            "features": "tokens average-pooled to at most grid x grid and rounded to float16, as in the cache",
        },
        "training": {
            "config": record.get("train_config"),
            "best_epoch": record.get("best_epoch"),
            "best_score": record.get("best_score"),
            "monitor": record.get("monitor"),
            "stopped": record.get("stopped"),
            "n_train": record.get("n_train"),
            "n_val": record.get("n_val"),
            "synthetic_data": bool(project.settings.synthetic),
        },
        "metrics": metrics,
        # how probabilities are calibrated / prior-shifted and (binary) thresholded before the
        # decision (loff_core/calibration.py); predict applies it; None: argmax
        "operating_point": record.get("operating_point"),
        "files": {"head": "head.safetensors", "head_sha256": head_sha256},
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    import safetensors
    import timm

    return {
        "loff_studio": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


# -- ONNX --------------------------------------------------------------------------------
def export_onnx(out_dir: Path, card: dict[str, Any], head_config: Any, state: dict[str, Any], *,
                progress: Progress = Progress()) -> dict[str, Any]:
    """Backbone + head in one graph: preprocessed image [B,3,S,S] in, probabilities out.

    Checked against PyTorch on a sample batch with onnxruntime; the largest difference is
    returned (and recorded in the card).
    """
    import numpy as np

    backbone = _backbone_for_card(card, weights=None, random_init=None, device="cpu")
    model = _ImageToProbabilities(backbone.token_module(), _build_head(head_config, state), card["task"]).eval()
    size = int(card["preprocessing"]["image_size"])
    sample = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    path = out_dir / "model.onnx"
    with atomic_path(path) as tmp:
        with torch.no_grad():
            torch.onnx.export(
                model, (sample,), str(tmp), input_names=["image"], output_names=["probabilities"],
                dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=18,
                dynamo=False,
            )
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": sample.numpy()})[0]
    with torch.no_grad():
        want = model(sample).numpy()
    diff = float(np.max(np.abs(got - want)))
    if not diff < 1e-3:
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX output differs from PyTorch by {diff:.2e}; not exported", path)
    return {"file": "model.onnx", "input": "image [batch, 3, %d, %d], preprocessed as in 'preprocessing'" % (size, size),
            "output": "probabilities [batch, %d]" % len(card["classes"]), "max_abs_diff_vs_torch": diff,
            "opset": 18,
            "decision": "the head's raw probabilities: apply card.operating_point (temperature: p^(1/T) renormalised; "
                        "prior: p * target / source renormalised; threshold: positive class when its probability "
                        ">= value), as loff predict does" if card.get("operating_point") else "argmax"}


class _ImageToProbabilities(torch.nn.Module):
    """Image tensor -> backbone tokens -> float16 rounding (as the cache) -> head -> probabilities."""

    def __init__(self, tokens: torch.nn.Module, head: torch.nn.Module, task: str):
        super().__init__()
        self.tokens, self.head, self.task = tokens, head, task

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from .heads import probabilities

        cls, grid = self.tokens(image)
        return probabilities(self.head(cls.half().float(), grid.half().float()), self.task)


# -- load + predict ----------------------------------------------------------------------
def validate_card(card: Any, path: Path | str) -> None:
    import jsonschema

    try:
        jsonschema.validate(card, CARD_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ExportError(f"model card is not valid at {where}: {exc.message}", path) from None
    head = card["head"]
    groups = trust.lookalike_groups(card["classes"])
    if groups or len(set(card["classes"])) != len(card["classes"]):
        raise ExportError("model card's class names repeat or only differ by case, width or invisible characters: "
                          + (trust.describe_lookalikes(groups) or ", ".join(map(repr, card["classes"]))), path)
    if any(c != trust.normalise_label(c) for c in card["classes"]):
        raise ExportError("model card's class names are not normalised (Unicode NFC, no surrounding spaces): "
                          + ", ".join(repr(c) for c in card["classes"] if c != trust.normalise_label(c)), path)
    import math

    pre = card["preprocessing"]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in [*pre["mean"], *pre["std"]]) \
            or not all(v > 0 for v in pre["std"]):
        raise ExportError("model card is not valid at preprocessing: mean and std must be finite, std above 0", path)
    if head["num_classes"] != len(card["classes"]):
        raise ExportError("model card lists %d classes but the head has %d outputs"
                          % (len(card["classes"]), head["num_classes"]), path)
    if head["task"] != card["task"]:
        raise ExportError(f"model card's task is {card['task']} but its head was built for {head['task']}", path)
    if head["kind"] != "linear" and head.get("width", 192) % head.get("num_heads", 4):
        raise ExportError(f"model card is not valid at head: width {head.get('width', 192)} is not divisible by "
                          f"num_heads {head.get('num_heads', 4)}", path)


def card_seal(card: dict[str, Any]) -> str:
    """SHA-256 over the whole card but its own seal (canonical JSON), which includes the
    head file's SHA-256: classes, task, head, backbone, preprocessing and operating point
    (temperature, prevalence, threshold) cannot change without the seal changing."""
    sealed = dict(card, files={k: v for k, v in card["files"].items() if k != "card_sha256"})
    text = json.dumps(sealed, sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check_card_seal(card: dict[str, Any], path: Path | str) -> None:
    """Version 3 cards carry `files.card_sha256`: a card edited after export (its classes
    reordered, its threshold or task changed) is refused. Cards of versions 1 and 2 were
    written before the seal and load as they did (only the head file's checksum)."""
    if card["format_version"] < 3:
        return  # migration: older cards have no seal; nothing to compare
    seal = card["files"].get("card_sha256")
    if seal is None:
        raise ExportError("model card (format 3) has no seal (files.card_sha256); it was edited or not written by "
                          "loff export; export the head again", path)
    if seal != card_seal(card):
        raise ExportError("model card was changed after export (its seal files.card_sha256 does not match: classes, "
                          "task, operating point or another field was edited); its outputs would be mislabelled; "
                          "export the head again", path)


def load_exported_head(folder: Path | str, device: str = "cpu") -> LoadedHead:
    """Load `card.json` + `head.safetensors` from a folder; no pickle is ever read."""
    folder = Path(folder)
    card_path, head_path = folder / "card.json", folder / "head.safetensors"
    if not card_path.is_file() or not head_path.is_file():
        raise ExportError("not an exported head (needs card.json and head.safetensors)", folder)
    card = trust.load_json(card_path, what="card.json", error=ExportError, max_bytes=4 << 20)
    validate_card(card, card_path)
    check_card_seal(card, card_path)
    if sha256_file(head_path) != card["files"]["head_sha256"]:
        raise ExportError("head.safetensors does not match the checksum in card.json (file changed or corrupt)", head_path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .heads import HeadConfig

    try:
        state = load_file(str(head_path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ExportError(f"cannot read head weights ({exc})", head_path) from None
    problem = trust.state_problem(state)
    if problem is not None:
        raise ExportError(f"head weights refused: {problem}", head_path)
    head_config = HeadConfig.from_dict(card["head"])
    try:
        module = _build_head(head_config, state)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ExportError(f"head weights do not fit the head described in card.json ({exc})", head_path) from None
    return LoadedHead(folder, card, head_config, module.to(device), _load_ood(folder, card))


def _load_ood(folder: Path, card: dict[str, Any]) -> Any:
    from . import ood

    if not card.get("ood"):
        return None
    path = folder / ood.OOD_FILE
    if not path.is_file() or sha256_file(path) != card["ood"]["sha256"]:
        raise ExportError("ood.safetensors is missing or does not match the checksum in card.json", path)
    try:
        return ood.load(path)
    except Exception as exc:  # noqa: BLE001 - a malformed file: refused with the reason
        raise ExportError(f"cannot read the OOD summary ({exc})", path) from None


def load_run_head(project: Any, run_id: Optional[str] = None, device: str = "cpu") -> LoadedHead:
    """A project's run as a head to predict with, described by the card an export would
    write (nothing is written, no split is evaluated)."""
    run = project.run(run_id)
    head_config, state = project.load_head(run)
    card = _make_card(project, run, head_config, sha256_file(run.head_path))
    from . import ood
    from .errors import LoffError

    try:
        model, card["ood"] = ood.run_summary(project, run)
    except (LoffError, ValueError, OSError, KeyError):
        model = None
    return LoadedHead(run.path, card, head_config, _build_head(head_config, state).to(device), model)


def _build_head(head_config: Any, state: dict[str, Any]) -> Any:
    from .heads import build_head

    module = build_head(head_config)
    module.load_state_dict(state, strict=True)
    return module.eval()


def _backbone_for_card(card: dict[str, Any], *, weights: Optional[str], random_init: Optional[bool], device: str) -> Any:
    """The card's backbone, checked to be the very one the head was trained on."""
    from .backbones import BackboneSpec, load_backbone

    b = card["backbone"]
    use_random = b.get("random_init", False) if random_init is None else random_init
    # the card's weights_file is a note of where the weights were when the head was trained;
    # it is never opened (a head from someone else must not make this machine read a path
    # of their choosing): the weights come from --weights or timm's cache, and the hash
    # check below proves they are the ones the head was trained on
    spec = BackboneSpec(
        name=b["name"], weights=weights, random_init=bool(use_random), seed=int(b.get("seed", 0)),
        image_size=int(b["image_size"]), grid=b.get("grid"), layers=b.get("layers") or "last",
        crop=b.get("crop") or "none",
    )
    backbone = load_backbone(spec, device=device)
    if backbone.weights_hash != b["weights_hash"]:
        raise ExportError(
            f"this head was trained on features of {b['name']} with weights {b['weights_hash']}, but the "
            f"backbone loaded now has weights {backbone.weights_hash}",
            remedy=Remedy.RANDOM_INIT if b.get("random_init") else Remedy.SAME_WEIGHTS_FILE)
    if backbone.fingerprint != b["fingerprint"]:
        raise ExportError(
            f"this head expects backbone features with fingerprint {b['fingerprint']} (input size, grid, "
            f"preprocessing); the backbone loaded now gives {backbone.fingerprint}"
        )
    return backbone


def collect_image_files(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given, and image files found recursively in given folders (sorted)."""
    from .images import is_image_candidate

    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_candidate(f)))
        else:
            found.append(p)
    return found


def predict_files(head_dir: Path | str | LoadedHead, paths: Iterable[Path | str], *, weights: Optional[str] = None,
                  random_init: Optional[bool] = None, device: str = "auto", batch_size: int = 8,
                  progress: Progress = Progress()) -> dict[str, Any]:
    """Recompute features for new files with the card's backbone and run the head on them.
    `head_dir`: an exported head folder, or a head already loaded (`load_run_head`)."""
    import numpy as np

    from .heads import probabilities
    from .images import decode_max_side, load_pixels

    loaded = head_dir if isinstance(head_dir, LoadedHead) else load_exported_head(head_dir)
    head_dir = loaded.folder
    backbone = _backbone_for_card(loaded.card, weights=weights, random_init=random_init, device=device)
    head = loaded.module.to(backbone.device)
    files = collect_image_files(paths)
    predictions: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    pooled: list[Any] = []  # the pooled embeddings, for the out-of-distribution flags
    for start in range(0, len(files), batch_size):
        progress.check()
        chunk, pixels = [], []
        for f in files[start:start + batch_size]:
            try:
                pixels.append(backbone.preprocessor(load_pixels(f, decode_max_side(backbone.preprocessor.image_size))))
                chunk.append(f)
            except UnreadableImage as exc:
                failures.append({"path": str(f), "reason": exc.reason})
        if chunk:
            batch = torch.from_numpy(np.stack(pixels)).to(backbone.device)
            cls, grid = backbone.tokens(batch)
            pooled.append(cls.half().float().cpu().numpy())
            with torch.inference_mode():
                probs = probabilities(head(cls.half().float(), grid.half().float()), loaded.task).cpu().numpy()
            from .calibration import adjust, decide

            op = loaded.card.get("operating_point")
            probs = adjust(probs, op)
            for f, row, p in zip(chunk, probs, decide(probs, loaded.task, op)):
                predictions.append({"path": str(f), "predicted": loaded.classes[int(p)],
                                    "probabilities": [round(float(x), 6) for x in row]})
        progress.report(min(start + batch_size, len(files)), len(files), f"predicted {len(predictions)} images")
    from .ood import NO_SUMMARY, flag

    flags = flag(loaded.card.get("ood"), loaded.ood, np.concatenate(pooled) if pooled else np.zeros((0, 1)),
                 [p["path"] for p in predictions])
    for p, reason in zip(predictions, flags):
        p["out_of_distribution"] = reason
    return {"head": str(head_dir), "classes": loaded.classes, "task": loaded.task,
            "predictions": predictions, "failed": failures, "operating_point": loaded.card.get("operating_point"),
            "ood": None if loaded.ood is not None else NO_SUMMARY, "head_run": loaded.card.get("run")}

