"""Operating point and calibration of a trained head, chosen on data the test never sees.

A head's raw probabilities answer "which class" under the prior it was trained with
(class-weighted training: every class equally likely) and are often over- or
under-confident. Three corrections, applied in this order and stored with the run as its
`operating_point` (and in the exported card):

1. **Temperature scaling** (all tasks): p_T(c) ∝ p(c)^(1/T), T fitted on the validation
   split by minimising the negative log-likelihood (Guo et al. 2017); for softmax heads this
   is the usual logits / T. The expected calibration error (ECE, 15 equal-width bins of the
   top probability) is reported before and after. The fitted T is kept only when it lowers
   the ECE on those held-out images; otherwise T = 1 is kept and `temperature_scaling`
   records the fitted T and the reason ("scaling raised ECE 0.146 -> 0.154 on ...").
2. **Prior shift** (optional): the user states the prevalence expected where the model will
   be used (or takes it from the given test split's labels); probabilities are corrected by
   Bayes' rule, p'(c) ∝ p(c) · target(c) / source(c), where source is the prior the head
   learned (uniform with class weights, else the training frequencies).
3. **Decision threshold** (binary classification): the positive class is predicted when its
   (corrected) probability reaches the threshold, chosen by a stated criterion: argmax (0.5,
   whatever the validation says), Youden's J on validation (= the best balanced accuracy), a
   target sensitivity (the highest threshold reaching it) or a target specificity (the lowest
   threshold reaching it), or set by hand. The default is `settings.DEFAULT_DECISION`, chosen
   on both real data sets (docs/benchmarks.md, "The decision rule"); `decision_line` says in
   one line which rule decides a run. Other tasks decide as before (argmax / ordinal decode) on the corrected
   probabilities.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from .errors import TrainingError

OP_VERSION = 1
CRITERIA = ("argmax", "youden", "sensitivity", "specificity", "manual")
FITTED = CRITERIA[:4]  # the criteria a threshold is fitted by (manual: set by hand)


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> Optional[float]:
    """Expected calibration error of the top-class probability (equal-width bins)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return None
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """T > 0 minimising the validation negative log-likelihood (searched on log T)."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        p = apply_temperature(probs, math.exp(log_t))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded",
                          options={"xatol": 1e-4})
    t = float(math.exp(res.x))
    return t if nll(math.log(t)) <= nll(0.0) else 1.0


def choose_temperature(probs: np.ndarray, y: np.ndarray, fitted_on: str) -> tuple[float, dict[str, Any]]:
    """The temperature to keep, and the decision recorded with it (issue 23, item 6): the
    NLL-fitted T is kept only when it lowers the expected calibration error on the same
    held-out images (`probs`, `y`: the validation split, or tune's out-of-fold predictions,
    never the training images); otherwise T = 1 (the head's own probabilities) and the
    reason says by how much scaling would have raised (or not lowered) the ECE."""
    fitted = fit_temperature(probs, y)
    before = ece(probs, y)
    after = ece(apply_temperature(probs, fitted), y)
    record: dict[str, Any] = {"fitted": fitted, "ece_fitted": after, "kept": True, "reason": ""}
    if before is None or after is None:
        record.update(kept=False, reason=f"no held-out images to check it on ({fitted_on})")
    elif abs(fitted - 1.0) < 1e-9:
        record.update(kept=False, reason="the fit found no better temperature than 1")
    elif after >= before:
        verb = "raised" if after > before else "did not lower"
        record.update(kept=False, reason=f"scaling {verb} ECE {before:.3f} -> {after:.3f} on {fitted_on}")
    return (fitted if record["kept"] else 1.0), record


def prior_shift(probs: np.ndarray, source: Sequence[float], target: Sequence[float]) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64) * (np.asarray(target, dtype=np.float64)
                                               / np.clip(np.asarray(source, dtype=np.float64), 1e-12, None))
    return p / np.clip(p.sum(axis=1, keepdims=True), 1e-300, None)


def adjust(probs: np.ndarray, op: Optional[dict[str, Any]]) -> np.ndarray:
    """Raw head probabilities -> the run's calibrated (and prior-shifted) probabilities."""
    p = np.asarray(probs, dtype=np.float64)
    if not op:
        return p
    if op.get("temperature"):
        p = apply_temperature(p, op["temperature"])
    prior = op.get("prior")
    if prior:
        p = prior_shift(p, prior["source"], prior["target"])
    return p


def threshold_of(op: Optional[dict[str, Any]]) -> Optional[float]:
    thr = (op or {}).get("threshold")
    return None if not thr else float(thr["value"])


def decide(probs: np.ndarray, task: str, op: Optional[dict[str, Any]]) -> np.ndarray:
    """Predicted class indices from adjusted probabilities: the threshold for binary
    classification when the run has one, else argmax / ordinal decode."""
    from .heads import predicted_class

    p = np.asarray(probs, dtype=np.float64)
    thr = threshold_of(op)
    if thr is not None and task == "classification" and p.shape[1] == 2:
        return (p[:, 1] >= thr).astype(np.int64)
    return predicted_class(p, task)


def _rates(score: np.ndarray, pos: np.ndarray, thr: float) -> tuple[float, float]:
    pred = score >= thr
    sens = float((pred & pos).sum() / max(pos.sum(), 1))
    spec = float((~pred & ~pos).sum() / max((~pos).sum(), 1))
    return sens, spec


def choose_threshold(score: np.ndarray, pos: np.ndarray, criterion: str = "youden",
                     target: Optional[float] = None) -> float:
    """A threshold on `score` (probability of the positive class) by `criterion`."""
    if criterion == "argmax":
        return 0.5
    score = np.asarray(score, dtype=np.float64)
    pos = np.asarray(pos, dtype=bool)
    if pos.all() or not pos.any():
        raise TrainingError("choosing a threshold needs both classes in the validation split")
    cands = np.unique(score)
    # midpoints between distinct scores, plus the ends: thresholds that change a decision
    mids = np.concatenate([[0.0], (cands[:-1] + cands[1:]) / 2, [min(1.0, cands[-1] + 1e-9)]])
    rates = [_rates(score, pos, t) for t in mids]
    if criterion == "youden":
        j = [s + sp - 1 for s, sp in rates]
        best = max(j)
        # among equally good thresholds, the one in the middle of the best range
        ok = [t for t, v in zip(mids, j) if v >= best - 1e-12]
        return float(ok[len(ok) // 2])
    if target is None or not 0 < target <= 1:
        raise TrainingError(f"criterion {criterion} needs a target between 0 and 1")
    if criterion == "sensitivity":
        ok = [t for t, (s, _) in zip(mids, rates) if s >= target - 1e-12]
        return float(max(ok)) if ok else 0.0
    if criterion == "specificity":
        ok = [t for t, (_, sp) in zip(mids, rates) if sp >= target - 1e-12]
        return float(min(ok)) if ok else 1.0
    raise TrainingError(f"unknown criterion {criterion!r}; expected {', '.join(FITTED)}")


def source_prior(train_config: Optional[dict[str, Any]], train_counts: Sequence[int]) -> list[float]:
    """The class prior a head learned: uniform when trained with class weights (the loss
    weighs every class equally), else the training frequencies."""
    k = len(train_counts)
    if (train_config or {}).get("class_weights", True):
        return [1.0 / k] * k
    total = float(sum(train_counts)) or 1.0
    return [c / total for c in train_counts]


def fit_operating_point(probs: np.ndarray, y: np.ndarray, classes: Sequence[str], task: str, *,
                        source: Sequence[float], fitted_on: str, criterion: Optional[str] = None,
                        target: Optional[float] = None, threshold: Optional[float] = None,
                        prevalence: Optional[Sequence[float]] = None,
                        prevalence_from: Optional[str] = None) -> dict[str, Any]:
    """The operating point fitted on (`probs`, `y`) (raw head probabilities of held-out
    images): temperature, optional prior shift to `prevalence`, and for binary
    classification the threshold by `criterion` (None: the default rule, settings.DEFAULT_DECISION)
    or the given `threshold`."""
    from .settings import DEFAULT_DECISION

    criterion = criterion or DEFAULT_DECISION
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    k = len(classes)
    t, scaling = choose_temperature(p, y, fitted_on)
    op: dict[str, Any] = {"version": OP_VERSION, "fitted_on": fitted_on, "n": int(len(y)), "temperature": t,
                          "ece_before": ece(p, y), "ece_after": ece(apply_temperature(p, t), y),
                          "temperature_scaling": scaling, "prior": None, "threshold": None}
    if prevalence is not None:
        target_prior = check_prevalence(prevalence, classes)
        op["prior"] = {"source": [float(v) for v in source], "target": target_prior,
                       "from": prevalence_from or "user"}
        if prevalence_from == TEST_LABELS:
            # the decision now depends on the test split's labels: its test metrics are not an
            # independent estimate any more; said in run.json, the card, the window and the CLI
            op["uses_test_labels"] = True
    adjusted = adjust(p, op)
    if task == "classification" and k == 2:
        score, pos = adjusted[:, 1], y == 1
        if threshold is not None:
            if not 0 <= threshold <= 1:
                raise TrainingError(f"the threshold must be between 0 and 1, got {threshold}")
            value, crit = float(threshold), "manual"
        elif criterion == "argmax" or (len(y) and pos.any() and not pos.all()):
            value, crit = choose_threshold(score, pos, criterion, target), criterion
        else:
            value, crit = 0.5, "default (validation lacks a class)"
        sens, spec = _rates(score, pos, value) if len(y) else (None, None)
        op["threshold"] = {"value": value, "positive_class": str(classes[1]), "criterion": crit,
                           "target": target if crit in ("sensitivity", "specificity") else None,
                           "sensitivity": sens, "specificity": spec,
                           "balanced_accuracy": None if sens is None else (sens + spec) / 2}
    if op["prior"] is not None and len(y):
        # what the prevalence does to the decision, counted on the images it was fitted on:
        # the same operating point without the prior shift (its threshold refitted alike)
        without = fit_operating_point(p, y, classes, task, source=source, fitted_on=fitted_on, criterion=criterion,
                                      target=target, threshold=threshold)
        changed = int((decide(adjusted, task, op) != decide(adjust(p, without), task, without)).sum())
        op["prior"]["decisions_changed"] = changed
    return op


TEST_LABELS = "the test split's labels"


def check_prevalence(prevalence: Sequence[Any], classes: Sequence[str]) -> list[float]:
    """The prevalence as class shares summing to 1: one finite number above 0 per class, whose
    sum is finite (nan, inf, 0 or 1e308,1e308 would turn every probability into NaN or 0)."""
    k = len(classes)
    try:
        values = [float(v) for v in prevalence]
    except (TypeError, ValueError):
        values = []
    shown = ",".join(str(v) for v in prevalence)
    need = f"{k} finite numbers above 0 (one per class: {', '.join(classes)})"
    if len(values) != k:
        raise TrainingError(f"the prevalence {shown} needs {need}; got {len(values)}")
    bad = [v for v in values if not math.isfinite(v) or v <= 0]
    if bad:
        raise TrainingError(f"the prevalence {shown} needs {need}; {', '.join(map(str, bad))} is not")
    try:
        total = math.fsum(values)
    except OverflowError:
        total = math.inf
    shares = [v / total for v in values] if math.isfinite(total) else []
    if not shares or not all(math.isfinite(v) and v > 0 for v in shares):
        raise TrainingError(f"the prevalence {shown} cannot be turned into class shares (its sum is {total}); "
                            "give shares such as 0.3,0.7")
    return shares


def describe(op: Optional[dict[str, Any]]) -> str:
    """One line for people: what the operating point does."""
    if not op:
        return "argmax of the head's probabilities (no operating point)"
    parts = [describe_temperature(op)]
    if op.get("prior"):
        changed = op["prior"].get("decisions_changed")
        parts.append("prevalence " + ", ".join(f"{v:.2f}" for v in op["prior"]["target"])
                     + f" ({op['prior']['from']}"
                     + ("" if changed is None else f"; changes {changed} of {op.get('n')} decisions on {op['fitted_on']}")
                     + ")")
    thr = op.get("threshold")
    if thr:
        parts.append(f"threshold {thr['value']:.3f} on P({thr['positive_class']}) by {thr['criterion']}"
                     + (f" {thr['target']}" if thr.get("target") is not None else ""))
    if op.get("uses_test_labels"):
        parts.append("USES THE TEST SPLIT'S LABELS (its test metrics are not independent)")
    return "; ".join(parts)


def describe_temperature(op: dict[str, Any]) -> str:
    """The temperature part of `describe`: the T kept, or why T = 1 was kept."""
    scaling = op.get("temperature_scaling")
    before, after = op.get("ece_before"), op.get("ece_after")
    if scaling and not scaling.get("kept"):
        return f"temperature kept at 1: {scaling['reason']}"
    if before is None or after is None:
        return f"temperature {op['temperature']:.3g}"
    text = f"temperature {op['temperature']:.3g} (ECE {before:.3f} -> {after:.3f} on {op['fitted_on']})"
    if scaling is None and after > before:  # fitted before the check existed (an old run or card)
        text += "; it raised the ECE: calibrate again to keep temperature 1"
    return text


def decision_line(op: Optional[dict[str, Any]], task: str, n_classes: int) -> str:
    """One line: which rule decides this run's predictions, and for the default, why."""
    from .settings import DECISION_RULES, DEFAULT_DECISION, DEFAULT_DECISION_WHY

    if task != "classification":
        return "decision rule: the ordinal decode of the level probabilities (ordinal tasks have no threshold)"
    thr = (op or {}).get("threshold")
    if n_classes != 2 or not thr:
        return ("decision rule: argmax of the class probabilities"
                + (" (no operating point)" if n_classes == 2 else f" ({n_classes} classes: no threshold)"))
    crit, value, on = thr.get("criterion"), float(thr["value"]), (op or {}).get("fitted_on", "")
    default = " (the default" + (f": {DEFAULT_DECISION_WHY})" if crit == DEFAULT_DECISION else ")")
    if crit == "argmax":
        return (f"decision rule: argmax, {thr['positive_class']} when P({thr['positive_class']}) >= {value:g}"
                + (default if crit == DEFAULT_DECISION else ""))
    how = {"youden": "Youden's J (best balanced accuracy)", "manual": "set by hand"}.get(
        crit, f"target {crit} {thr.get('target')}")
    where = "" if crit == "manual" else f" on {on}"
    return (f"decision rule: threshold {value:.3f} on P({thr['positive_class']}) by {how}{where}"
            + (default if crit == DEFAULT_DECISION else f" (default: {DEFAULT_DECISION}, "
               f"{DECISION_RULES[DEFAULT_DECISION].split(' (')[0]})"))


def calibrate_run(project: Any, run_id: Optional[str] = None, *, criterion: Optional[str] = None,
                  target: Optional[float] = None, threshold: Optional[float] = None,
                  prevalence: Optional[Sequence[float]] = None, prevalence_from_test: bool = False,
                  held_out: Optional[tuple[np.ndarray, np.ndarray, str]] = None) -> dict[str, Any]:
    """Fit a run's operating point on its validation split (or on `held_out` = (raw
    probabilities, labels, what they are): `tune`'s out-of-fold predictions) and save it in
    run.json. `prevalence_from_test`: the target prevalence is the given test split's label
    frequencies (the user says so; only the labels' counts are read)."""
    from .fsutil import atomic_write_json
    from .training import predict_probabilities

    from .settings import DEFAULT_DECISION

    run = project.run(run_id)
    record = run.record
    classes = list(record["classes"])
    task = record["task"]
    criterion = criterion or DEFAULT_DECISION
    if criterion not in FITTED:
        raise TrainingError(f"unknown criterion {criterion!r}; expected {', '.join(FITTED)}")
    if prevalence is not None:
        check_prevalence(prevalence, classes)  # before any work
    project.check_run_classes(run)  # a stale run (other classes) is refused as evaluate refuses it
    cache = project.open_cache(record["cache_fingerprint"], block=record.get("block"))
    project.check_cache_fits(run, cache)
    catalog = project.catalog()
    oof = project.root / "groups" / str(record.get("group")) / "oof.npz"
    if held_out is None and record.get("n_val") == 0 and record.get("group") and oof.is_file():
        with np.load(oof) as data:  # a `tune` winner: trained on train + val, fitted on the folds' predictions
            held_out = (data["probabilities"], data["labels"],
                        f"out-of-fold predictions of the cross-validation ({len(data['labels'])} images)")
    if held_out is None:
        ids, y, _ = project.labelled_split("val", cache)
        if not ids:
            raise TrainingError(f"{project.root}: the run has no validation images to fit its operating point on")
        head_config, state = project.load_head(run)
        probs = predict_probabilities(head_config, state, cache, ids)
        y_arr, fitted_on = np.asarray(y, dtype=np.int64), f"the validation split ({len(ids)} images)"
    else:
        probs, y_arr, fitted_on = held_out
    train_counts = [0] * len(classes)
    for e in catalog.entries:
        if e.split in ("train",) + (("val",) if record.get("n_val") == 0 else ()) and e.label in classes:
            train_counts[classes.index(e.label)] += 1
    prevalence_from = None
    if prevalence_from_test:
        counts = [0] * len(classes)
        for e in catalog.in_split("test"):
            if e.label in classes:
                counts[classes.index(e.label)] += 1
        if sum(counts) == 0:
            raise TrainingError(f"{project.root}: the test split has no labels to take the prevalence from")
        missing = [c for c, n in zip(classes, counts) if n == 0]
        if missing:
            raise TrainingError(f"{project.root}: the test split has no labelled images of {', '.join(missing)}; a "
                                f"prevalence of 0 would never predict them; give --prevalence instead")
        prevalence, prevalence_from = counts, TEST_LABELS
    op = fit_operating_point(probs, y_arr, classes, task, source=source_prior(record.get("train_config"), train_counts),
                             fitted_on=fitted_on, criterion=criterion, target=target, threshold=threshold,
                             prevalence=prevalence, prevalence_from=prevalence_from)
    record = dict(record, operating_point=op)
    with project.committing():  # readers (evaluate, export) see the old record or the new
        atomic_write_json(run.path / "run.json", record)
    return op


def set_threshold(project: Any, run_id: Optional[str], value: float) -> dict[str, Any]:
    """Move a binary run's decision threshold by hand (the Results page), keeping the rest of
    its operating point."""
    from .fsutil import atomic_write_json

    run = project.run(run_id)
    op = dict(run.record.get("operating_point") or {"version": OP_VERSION, "fitted_on": "none", "n": 0,
                                                     "temperature": 1.0, "ece_before": None, "ece_after": None,
                                                     "prior": None, "threshold": None})
    classes = run.record["classes"]
    if run.record["task"] != "classification" or len(classes) != 2:
        raise TrainingError("a decision threshold is for binary classification runs")
    if not 0 <= value <= 1:
        raise TrainingError(f"the threshold must be between 0 and 1, got {value}")
    op["threshold"] = {"value": float(value), "positive_class": str(classes[1]), "criterion": "manual",
                       "target": None, "sensitivity": None, "specificity": None, "balanced_accuracy": None}
    with project.committing():
        atomic_write_json(run.path / "run.json", dict(run.record, operating_point=op))
    return op
