"""Know your data from the cache (issue 22, point 1): near-duplicates and leaks across
splits, suspected label errors, outliers and the shift between splits, all from the cached
CLS / pooled embeddings (no forward pass).

- **Embeddings**: each image's pooled embedding, centred on the audited images' mean and
  L2-normalised, so cosine similarity compares what sets images apart (a CNN's pooled
  features are all positive: raw cosines sit near 0.9 for any two mammograms).
- **Near-duplicates**: pairs above `duplicate_similarity` (scikit-learn NearestNeighbors,
  cosine), joined into groups; a group whose images lie in more than one split is a leak.
  Leaks first, then by similarity.
- **Suspected label errors**: out-of-fold probabilities of a logistic-regression probe
  (patient-grouped, label-stratified folds over every labelled image: the audit judges
  labels, it selects no model, so the test split takes part), flagged by confident learning's
  per-class thresholds (an image is flagged when another class's probability reaches that
  class's mean self-confidence and beats its own label's); ranked by self-confidence, score =
  1 - p(given label).
- **Outliers**: for each class, the mean cosine distance to its k nearest members, relative
  to that class's own typical value (median over its members); the score is the smallest
  ratio, i.e. how far the image is from the *nearest* class (unlabelled projects: one class).
- **Shift**: a logistic regression telling test (and val) from train, patient-grouped folds,
  AUC of its out-of-fold scores with a bootstrap interval; above `shift_warn_auc`, a warning.

Excluded images (`CatalogEntry.excluded`) are left out of the audit. Findings are written as
CSVs in the project's `audit/` folder; nothing else in the project changes.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import replace
from typing import Any, Optional, Sequence

import numpy as np

from .errors import ProjectError, TrainingError
from .fsutil import atomic_path, utc_now
from .progress import Progress
from .results import AuditResult
from .settings import AuditSettings
from .splits import AUDIT_DIR, ON_LEAK_FILE, first_appearance_ranks, linked_patients  # the audit's folder and --on-leak record

SPLIT_ORDER = ("train", "val", "test")
#: principal components the logistic-regression probe sees
PROBE_COMPONENTS = 32
#: repetitions of the probe's grouped CV (other folds each time) whose probabilities are
#: averaged: one split's luck moved 6 to 9 of 16 planted flips in or out of the top 32
PROBE_REPEATS = 3


# -- the embeddings ------------------------------------------------------------------------
def _audited(project: Any, cache: Any) -> tuple[list[Any], np.ndarray]:
    """Catalog entries the cache holds and the user has not excluded, with their pooled
    embeddings (rows in the entries' order)."""
    catalog = project.catalog()
    position = {image_id: i for i, image_id in enumerate(cache.image_ids)}
    entries = [e for e in catalog.entries if e.excluded is None and e.image_id in position]
    if len(entries) < 3:
        raise ProjectError(f"{project.root}: the audit needs at least 3 cached images that are not excluded "
                           f"(found {len(entries)})")
    idx = np.asarray([position[e.image_id] for e in entries], dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    cls, _ = cache.read(idx[order])
    x = np.empty((len(idx), cls.shape[1]), dtype=np.float64)
    x[order] = cls
    return entries, x


def unit_centred(x: np.ndarray) -> np.ndarray:
    z = x - x.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norm > 0, norm, 1.0)


# -- near-duplicates -----------------------------------------------------------------------
def find_duplicates(z: np.ndarray, entries: Sequence[Any], threshold: float) -> list[dict[str, Any]]:
    """Groups of images whose centred embeddings have cosine similarity >= threshold
    (linked pairs joined), leaks (more than one split) first, then by similarity."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(radius=1.0 - threshold, metric="cosine").fit(z)
    dist, ind = nn.radius_neighbors(z, sort_results=True)
    parent = list(range(len(z)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best: dict[int, float] = {}
    for i, (d_row, j_row) in enumerate(zip(dist, ind)):
        for d, j in zip(d_row, j_row):
            if j != i:
                a, b = root(i), root(int(j))
                if a != b:
                    parent[b] = a
                best[i] = max(best.get(i, -1.0), 1.0 - float(d))
    groups: dict[int, list[int]] = {}
    for i in best:
        groups.setdefault(root(i), []).append(i)
    out = []
    for members in groups.values():
        members.sort(key=lambda i: (SPLIT_ORDER.index(entries[i].split) if entries[i].split in SPLIT_ORDER else 3, i))
        splits = [entries[i].split or "" for i in members]
        sim = min(1.0, max(best[i] for i in members))
        out.append({"images": [entries[i].image_id for i in members], "splits": splits,
                    "similarity": round(sim, 4)})
    out.sort(key=lambda g: (-is_leak(g), -g["similarity"]))
    return out


def is_leak(group: dict[str, Any]) -> bool:
    return len({s for s in group["splits"] if s}) > 1


# -- suspected label errors ----------------------------------------------------------------
def _folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    groups = first_appearance_ranks(groups)  # the folds do not depend on the project's salt
    k = max(2, min(k, len(np.unique(groups)), int(np.bincount(y).max())))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def _probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, c: float, seed: int) -> np.ndarray:
    """The probe: PCA to PROBE_COMPONENTS (fitted on the fold's training part), standardised,
    logistic regression with C = c. On mini-MIAS tissue (tf_efficientnet_lite0 at 192 px)
    PCA 32 + C 0.1 put 9 of 16 planted label flips in the top 32, the full 1280 dimensions
    4 to 7 (C 0.003 to 0.3) at three times the time."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(PROBE_COMPONENTS, len(x_train) - 1, x_train.shape[1])
    model = make_pipeline(PCA(n, random_state=seed), StandardScaler(),
                          LogisticRegression(C=c, max_iter=2000, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x_train, y_train)
    p = model.predict_proba(x_test)
    out = np.zeros((len(x_test), max(int(model.classes_.max()) + 1, 2)))
    out[:, model.classes_.astype(int)] = p
    return out


def out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, num_classes: int, folds: int, seed: int,
                progress: Progress, c: float = 0.1) -> np.ndarray:
    """Out-of-fold class probabilities of the logistic-regression probe (patient-grouped,
    label-stratified folds)."""
    oof = np.zeros((len(y), num_classes))
    splits = _folds(y, groups, folds, seed)
    for f, (train_idx, test_idx) in enumerate(splits):
        progress.check()
        if len(np.unique(y[train_idx])) < 2:
            raise TrainingError("a fold of the audit's probe holds a single class; label more images")
        p = _probe(x[train_idx], y[train_idx], x[test_idx], c, seed + f)
        oof[test_idx, :p.shape[1]] = p[:, :num_classes]
        progress.report(f + 1, len(splits), f"label check: fold {f + 1}/{len(splits)}")
    return oof


def label_suspects(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confident learning's per-class thresholds (a class's mean self-confidence over the
    images labelled with it): an image is suspect when another class reaches its threshold
    and is more probable than the given label. Returns (suspect indices, most suspicious
    first by self-confidence, and the self-confidence of every image)."""
    k = probs.shape[1]
    self_conf = probs[np.arange(len(y)), y]
    thresholds = np.array([probs[y == c, c].mean() if (y == c).any() else 1.0 for c in range(k)])
    other = probs.copy()
    other[np.arange(len(y)), y] = -1.0
    confident = other >= thresholds[None, :]
    flagged = np.where((confident & (other > self_conf[:, None])).any(axis=1))[0]
    return flagged[np.argsort(self_conf[flagged], kind="stable")], self_conf


# -- outliers ------------------------------------------------------------------------------
def outlier_scores(z: np.ndarray, y: Optional[np.ndarray], k: int) -> np.ndarray:
    """Distance (cosine, centred embeddings) to each class's k nearest members, relative to
    the class's median for its own members; the smallest ratio over the classes (far from
    every class = a large score). y: class index, -1 unlabelled; None or no labels: one class."""
    from sklearn.neighbors import NearestNeighbors

    labels = np.zeros(len(z), dtype=np.int64) if y is None or (y < 0).all() else y
    scores = np.full(len(z), np.inf)
    for c in np.unique(labels[labels >= 0]):
        members = np.where(labels == c)[0]
        kk = min(k, len(members) - 1)
        if kk < 1:
            continue
        nn = NearestNeighbors(n_neighbors=kk + 1, metric="cosine").fit(z[members])
        dist, ind = nn.kneighbors(z)
        own = members[ind] == np.arange(len(z))[:, None]  # an image is not its own neighbour
        dist = np.where(own, np.nan, dist)
        mean = np.array([np.nanmean(row[~np.isnan(row)][:kk]) for row in dist])
        typical = float(np.median(mean[members]))
        scores = np.minimum(scores, mean / (typical if typical > 0 else 1.0))
    return np.where(np.isfinite(scores), scores, 0.0)


# -- shift between splits ------------------------------------------------------------------
def split_auc(x: np.ndarray, is_other: np.ndarray, groups: np.ndarray, *, folds: int, n_bootstrap: int,
              seed: int) -> Optional[dict[str, Any]]:
    """AUC (with a bootstrap 95 % interval) of a logistic regression telling the `is_other`
    images from the rest by their embeddings, on out-of-fold scores of patient-grouped folds.
    None when either side has fewer than 5 images."""
    from sklearn.metrics import roc_auc_score

    y = is_other.astype(np.int64)
    if min(int(y.sum()), int(len(y) - y.sum())) < 5:
        return None
    score = np.zeros(len(y))
    for f, (a, b) in enumerate(_folds(y, groups, folds, seed)):
        if len(np.unique(y[a])) < 2 or len(np.unique(y[b])) < 2:
            continue
        score[b] = _probe(x[a], y[a], x[b], 0.1, seed + f)[:, 1]
    auc = float(roc_auc_score(y, score))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_bootstrap):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            boots.append(roc_auc_score(y[i], score[i]))
    ci = [round(float(np.quantile(boots, 0.025)), 4), round(float(np.quantile(boots, 0.975)), 4)] if boots else None
    return {"auc": round(auc, 4), "ci": ci, "n": [int(len(y) - y.sum()), int(y.sum())]}


def shift_report(x: np.ndarray, entries: Sequence[Any], settings: AuditSettings) -> dict[str, Any]:
    splits = np.asarray([e.split or "" for e in entries])
    groups = np.asarray([e.patient_key for e in entries])
    out: dict[str, Any] = {}
    for other in ("test", "val"):
        keep = (splits == "train") | (splits == other)
        found = split_auc(x[keep], splits[keep] == other, groups[keep], folds=settings.folds,
                          n_bootstrap=settings.bootstrap, seed=settings.seed)
        out[f"{other}_vs_train_auc"] = None if found is None else found["auc"]
        out[f"{other}_vs_train_ci"] = None if found is None else found["ci"]
    out["warn_above"] = settings.shift_warn_auc
    high = [f"{o} vs train {out[f'{o}_vs_train_auc']:.2f}" for o in ("test", "val")
            if out[f"{o}_vs_train_auc"] is not None and out[f"{o}_vs_train_auc"] > settings.shift_warn_auc]
    out["warning"] = (f"a classifier tells the splits apart by their embeddings (AUC {', '.join(high)}, above "
                      f"{settings.shift_warn_auc:g}): validation figures and an operating point fitted on "
                      f"validation will not carry over to test") if high else None
    return out


# -- the audit -----------------------------------------------------------------------------
def _read_blocks(project: Any, name: Optional[str]) -> tuple[list[Any], np.ndarray, np.ndarray, str, str]:
    """Entries, the embeddings the map / duplicates / outliers / shift use (the cache's `last`
    block when it holds one: the pooled embedding), those the label probe uses (the cache's
    first block, the one heads train on by default), the fingerprint and the label block."""
    cache = project.open_cache(name)
    try:
        label_block = cache.blocks[0]
        if "last" in cache.blocks:  # the pooled embedding (docs/benchmarks.md)
            cache.use_block("last")
        entries, x = _audited(project, cache)
        x_label = x
        if cache.block != label_block:
            cache.use_block(label_block)
            _, x_label = _audited(project, cache)
        return entries, x, x_label, cache.fingerprint, label_block
    finally:
        cache.close()


def stored_oof(project: Any, fingerprint: str, classes: Sequence[str]) -> Optional[dict[str, Any]]:
    """The newest out-of-fold predictions `loff cv` / `loff tune` saved (groups/G/oof.npz
    with image ids) for this cache, catalog version and classes; None when there are none."""
    import json

    base = project.root / "groups"
    for folder in sorted(base.iterdir(), reverse=True) if base.is_dir() else []:
        try:
            record = json.loads((folder / "group.json").read_text(encoding="utf-8"))
            if (record.get("cache_fingerprint") != fingerprint or list(record.get("classes") or []) != list(classes)
                    or record.get("catalog_version") != project.settings.catalog_version):
                continue
            with np.load(folder / "oof.npz", allow_pickle=False) as data:
                if "ids" not in data.files:
                    continue  # saved before the ids were (the rows cannot be matched)
                ids, probs = [str(i) for i in data["ids"]], np.asarray(data["probabilities"], dtype=np.float64)
        except (OSError, ValueError, KeyError):
            continue
        if probs.ndim == 2 and probs.shape == (len(ids), len(classes)) and np.isfinite(probs).all():
            return {"group": folder.name, "kind": record.get("kind"), "probs": dict(zip(ids, probs))}
    return None


def label_probabilities(project: Any, entries: Sequence[Any], x: np.ndarray, y: np.ndarray, labelled: np.ndarray,
                        classes: Sequence[str], fingerprint: str, settings: AuditSettings,
                        progress: Progress) -> tuple[np.ndarray, dict[str, Any]]:
    """Out-of-fold probabilities of the labelled images: `cv`'s or `tune`'s where they exist
    for this cache and catalog (train + val), the logistic-regression probe's for the rest
    (and for all when there are none). Returns them and where they came from."""
    stored = stored_oof(project, fingerprint, classes)
    ids = [entries[i].image_id for i in labelled]
    covered = np.asarray([stored is not None and i in stored["probs"] for i in ids], dtype=bool)
    probs = np.zeros((len(labelled), len(classes)))
    rest = np.where(~covered)[0]
    if len(rest):
        groups = np.asarray([entries[labelled[i]].patient_key for i in rest])
        probs[rest] = np.mean([out_of_fold(x[labelled[rest]], y[rest], groups, len(classes), settings.folds,
                                           settings.seed + 1000 * r, progress) for r in range(PROBE_REPEATS)], axis=0)
    if covered.any():
        probs[covered] = np.stack([stored["probs"][ids[i]] for i in np.where(covered)[0]])
    source = {"group": stored["group"] if covered.any() else None, "from_group": int(covered.sum()),
              "from_probe": int(len(rest))}
    return probs, source


def run_audit(project: Any, settings: AuditSettings = AuditSettings(), *,
              progress: Progress = Progress()) -> AuditResult:
    """The audit's body (the caller holds the reader lock): find, rank, write audit/*.csv."""
    entries, x, x_label, fingerprint, label_block = _read_blocks(project, settings.cache)
    progress.report(0, 4, "near-duplicates")
    z = unit_centred(x)
    duplicates = find_duplicates(z, entries, settings.duplicate_similarity)
    progress.check()
    classes = list(project.catalog().classes)
    y_all = np.asarray([classes.index(e.label) if e.label in classes else -1 for e in entries], dtype=np.int64)
    labelled = np.where(y_all >= 0)[0]
    suspects: list[dict[str, Any]] = []
    source: dict[str, Any] = {"block": label_block}
    if len(labelled) and len(np.unique(y_all[labelled])) >= 2:
        probs, found = label_probabilities(project, entries, unit_centred(x_label), y_all[labelled], labelled,
                                           classes, fingerprint, settings, progress)
        source.update(found)
        order, self_conf = label_suspects(probs, y_all[labelled])
        suspects = [{"image": entries[labelled[i]].image_id, "label": classes[y_all[labelled[i]]],
                     "predicted": classes[int(np.argmax(probs[i]))], "score": round(1.0 - float(self_conf[i]), 4)}
                    for i in order]
    progress.report(2, 4, "outliers")
    scores = outlier_scores(z, y_all, settings.neighbours)
    outliers = [{"image": entries[i].image_id, "score": round(float(scores[i]), 4)}
                for i in np.argsort(-scores, kind="stable")]
    progress.report(3, 4, "shift between splits")
    shift = shift_report(z, entries, settings)
    result = AuditResult(duplicates=duplicates, label_suspects=suspects, outliers=outliers, shift=shift,
                         cache=fingerprint, images=len(entries), leaks=sum(is_leak(g) for g in duplicates),
                         top=settings.top, date=utc_now(), label_source=source)
    result.saved = write_csvs(project, result)
    progress.report(4, 4, "done")
    return result


def write_csvs(project: Any, result: AuditResult) -> list[str]:
    """The full lists as audit/duplicates.csv, label_suspects.csv, outliers.csv, shift.csv."""
    folder = project.root / AUDIT_DIR
    tables = {
        "duplicates.csv": (["group", "leak", "similarity", "images", "splits"],
                           [[n + 1, int(is_leak(g)), g["similarity"], ";".join(g["images"]), ";".join(g["splits"])]
                            for n, g in enumerate(result.duplicates)]),
        "label_suspects.csv": (["rank", "image", "label", "predicted", "score"],
                               [[n + 1, s["image"], s["label"], s["predicted"], s["score"]]
                                for n, s in enumerate(result.label_suspects)]),
        "outliers.csv": (["rank", "image", "score"],
                         [[n + 1, o["image"], o["score"]] for n, o in enumerate(result.outliers)]),
        "shift.csv": (["measure", "value"], [[k, "" if v is None else v] for k, v in result.shift.items()]),
    }
    saved = []
    for name, (header, rows) in tables.items():
        with atomic_path(folder / name) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(header)
                writer.writerows(rows)
        saved.append(f"{AUDIT_DIR}/{name}")
    return saved


# -- exclusions ----------------------------------------------------------------------------
def set_excluded(project: Any, image_ids: Sequence[str], reason: Optional[str]) -> dict[str, Any]:
    """Mark images excluded with `reason` (None: include them again) in the catalog (the
    caller holds the writer lock). Unknown ids: refused, nothing changed."""
    catalog = project.catalog()
    wanted = list(dict.fromkeys(i.strip() for i in image_ids if i.strip()))
    if not wanted:
        raise ProjectError("no image ids given")
    known = catalog.by_id()
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise ProjectError(f"{project.catalog_path}: no image with id {', '.join(unknown[:5])}"
                           + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""))
    if reason is not None and not reason.strip():
        raise ProjectError("an exclusion needs a reason")
    targets = set(wanted)
    changed = 0
    entries = []
    for e in catalog.entries:
        if e.image_id in targets and e.excluded != reason:
            e = replace(e, excluded=reason)
            changed += 1
        entries.append(e)
    if changed:
        catalog = replace(catalog, entries=entries)
        project.save_catalog(catalog)
    return {"changed": changed, "excluded": sum(e.excluded is not None for e in catalog.entries),
            "images": wanted, "reason": reason}


# -- acting on leaks -----------------------------------------------------------------------
def act_on_leaks(project: Any, action: str, settings: AuditSettings = AuditSettings()) -> dict[str, Any]:
    """`loff audit --on-leak ACTION` (the caller holds the writer lock): drop-from-test
    excludes the val / test copies of each cross-split duplicate group (the reason names the
    kept image); regroup moves every image of the patients a duplicate group links into one
    split (the joined group's majority, ties to the earlier split); undo reverses the last
    action. Each action is recorded in audit/on_leak.json and in the catalog."""
    import json

    path = project.root / AUDIT_DIR / ON_LEAK_FILE
    history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    catalog = project.catalog()
    if action == "undo":
        if not history:
            raise ProjectError(f"{path}: no --on-leak action to undo")
        last = history.pop()
        changes = _undo(catalog, last)
    else:
        entries, x, _, _, _ = _read_blocks(project, settings.cache)
        leaks = [g for g in find_duplicates(unit_centred(x), entries, settings.duplicate_similarity) if is_leak(g)]
        changes = (_drop_changes(leaks) if action == "drop-from-test" else _regroup_changes(catalog, leaks))
        last = {"action": action, "date": utc_now(), "changes": changes}
        if action == "regroup":  # cross-validation groups the linked patients as one (`joined_patients`)
            last["joined"] = _joined_keys(catalog, leaks)
        if changes:
            history.append(last)
    if changes:
        by_id = {c["image"]: c for c in changes}
        entries = []
        for e in catalog.entries:
            c = by_id.get(e.image_id)
            entries.append(e if c is None else replace(e, **{k: c[k] for k in ("split", "excluded") if k in c}))
        project.save_catalog(replace(catalog, entries=entries))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(history, indent=1), encoding="utf-8")
    return {"action": action, "changed": len(changes), "undone": last["action"] if action == "undo" else None,
            "changes": changes}


def reapply_regroups(project: Any, entries: Sequence[Any]) -> tuple[list[Any], Optional[str]]:
    """A re-import draws the splits again; the split moves of `--on-leak regroup` actions that
    were not undone (audit/on_leak.json) are applied again to the images whose fresh split is
    the one the move started from. Returns (entries, a line for the import's warnings or None).
    (Exclusions, and so drop-from-test, outlive a re-import on their own.)"""
    import json

    path = project.root / AUDIT_DIR / ON_LEAK_FILE
    if not path.is_file():
        return list(entries), None
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return list(entries), f"{path}: not read ({exc}); earlier --on-leak regroup moves were not applied again"
    moves = {}
    for record in history:
        if record.get("action") == "regroup":
            moves.update({c["image"]: c for c in record.get("changes", []) if "split" in c})
    if not moves:
        return list(entries), None
    out, applied, stale = [], 0, 0
    for e in entries:
        c = moves.get(e.image_id)
        if c is not None and e.split == c["was_split"]:
            out.append(replace(e, split=c["split"]))
            applied += 1
        else:
            stale += c is not None and e.split != c["split"]
            out.append(e)
    line = (f"--on-leak regroup applied again after the re-import: {applied} images moved to their linked "
            f"patients' split" + (f"; {stale} left where the new import put them (their split changed since)"
                                  if stale else ""))
    return out, line if applied or stale else None


def _drop_changes(leaks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    changes = []
    for g in leaks:
        rank = [SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 3 for s in g["splits"]]
        keep = g["images"][int(np.argmin(rank))]
        kept_split = g["splits"][int(np.argmin(rank))]
        for image, split in zip(g["images"], g["splits"]):
            if split != kept_split:
                changes.append({"image": image, "excluded": f"audit: near-duplicate of {keep} ({kept_split}), "
                                                            f"similarity {g['similarity']:.3f}",
                                "was_excluded": None})
    return changes


def _joined_keys(catalog: Any, leaks: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The patient keys the duplicate groups link, as sorted groups of two or more."""
    by_id = catalog.by_id()
    return linked_patients([[by_id[i].patient_key for i in g["images"]] for g in leaks])


def _regroup_changes(catalog: Any, leaks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    group_of = {k: n for n, keys in enumerate(_joined_keys(catalog, leaks)) for k in keys}
    members: dict[int, list[Any]] = {}
    for e in catalog.entries:
        if e.patient_key in group_of and e.split:
            members.setdefault(group_of[e.patient_key], []).append(e)
    changes = []
    for joined in members.values():
        counts = {s: sum(e.split == s for e in joined) for s in SPLIT_ORDER}
        target = max(SPLIT_ORDER, key=lambda s: (counts[s], -SPLIT_ORDER.index(s)))
        changes += [{"image": e.image_id, "split": target, "was_split": e.split} for e in joined if e.split != target]
    return changes


def _undo(catalog: Any, last: dict[str, Any]) -> list[dict[str, Any]]:
    by_id = catalog.by_id()
    undo = []
    for c in last["changes"]:
        e = by_id.get(c["image"])
        if e is None:
            continue
        if "split" in c and e.split == c["split"]:
            undo.append({"image": e.image_id, "split": c["was_split"], "was_split": c["split"]})
        if "excluded" in c and e.excluded == c["excluded"]:
            undo.append({"image": e.image_id, "excluded": c["was_excluded"], "was_excluded": c["excluded"]})
    return undo
