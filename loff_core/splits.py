"""How an import's images get their split (split out of project.py, issue 10): a random
patient-grouped, label-stratified split, or the split the CSV / folders give (validation
carved from train by patient when missing; a patient on two sides is refused with counts
unless the user chose to keep or re-split). `loff_core.project` re-exports these names."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional, Sequence

from .catalog import Catalog, CatalogEntry, assign_splits
from .errors import ProjectError, Remedy

AUDIT_DIR = "audit"  # PROJECT/audit: `loff audit`'s lists and its --on-leak record
ON_LEAK_FILE = "on_leak.json"  # the --on-leak actions, newest last (undo pops them)


def complete_split(catalog: Catalog, *, seed: int, fractions: Any,
                   on_patient_overlap: Optional[str] = None) -> tuple[list[CatalogEntry], dict[str, Any]]:
    """The catalog's entries with every labelled image in train / val / test, and how.

    No given split: a random patient-grouped, label-stratified split. A given split (in the
    entries' `split`): kept for labelled images; a validation part is carved from train by
    patient (deterministic for `seed`) when there is none. A patient on two sides of a given
    split: ProjectError with the counts (no identifiers) unless `on_patient_overlap` says
    "keep" or "resplit"."""
    entries = list(catalog.entries)
    labelled = [e for e in entries if e.label is not None]
    source: dict[str, Any] = {"kind": "random", "from": "", "val_carved": False, "patient_overlap": None,
                              "patients_from": dict(catalog.patients_from)}
    f = tuple(float(x) for x in fractions)
    given = [e for e in labelled if e.split]
    random_from = (f"random by patient ({round(100 * f[0] / sum(f))}/{round(100 * f[1] / sum(f))}/"
                   f"{round(100 * f[2] / sum(f))}, stratified by label, seed {seed})")
    if not given:
        source["from"] = random_from
        return assign_splits(entries, seed=seed, fractions=f), source
    if len(given) < len(labelled):
        raise ProjectError(f"{len(labelled) - len(given)} labelled images have no given split while "
                           f"{len(given)} do ({catalog.split_from}); give every labelled image a split")
    sides: dict[str, set[str]] = _sides(given)
    mixed = {p for p, s in sides.items() if len(s) > 1}
    if mixed:
        n_images = sum(1 for e in given if e.patient_key in mixed)
        if on_patient_overlap is None:
            raise ProjectError(
                f"the given split ({catalog.split_from}) puts {len(mixed)} patients ({n_images} images) on two "
                f"sides", remedy=Remedy.CHOOSE_PATIENT_OVERLAP)
        source["patient_overlap"] = {"patients": len(mixed), "images": n_images, "action": on_patient_overlap}
        if on_patient_overlap == "resplit":
            source["from"] = random_from + f"; the given split ({catalog.split_from}) was dropped"
            return assign_splits(entries, seed=seed, fractions=f), source
    source["kind"], source["from"] = "given", catalog.split_from
    out = [e if e.label is not None else replace(e, split=None) for e in entries]
    if not any(e.split == "val" for e in given):
        train = [e for e in out if e.split == "train"]
        carved = {e.image_id: e.split for e in assign_splits(train, seed=seed, fractions=(f[0], f[1], 0.0))}
        out = [replace(e, split=carved[e.image_id]) if e.image_id in carved else e for e in out]
        source["val_carved"] = any(s == "val" for s in carved.values())
    return out, source


def _sides(entries: list[CatalogEntry]) -> dict[str, set[str]]:
    sides: dict[str, set[str]] = {}
    for e in entries:
        sides.setdefault(e.patient_key, set()).add(str(e.split))
    return sides


def describe_split_source(source: Optional[dict[str, Any]]) -> list[str]:
    """How an import split the images and found the patients, as lines for a person."""
    if not source:
        return []
    lines = [f"split: {source.get('from') or source.get('kind')}"
             + ("; val carved from train by patient" if source.get("val_carved") else "")]
    overlap = source.get("patient_overlap")
    if overlap:
        lines.append(f"patients on two sides of the given split: {overlap['patients']} ({overlap['images']} images), "
                     f"{'kept as given' if overlap['action'] == 'keep' else 're-split by patient'}")
    if source.get("patients_from"):
        lines.append("patients from: " + ", ".join(f"{k} ({v} images)" for k, v in source["patients_from"].items()))
    return lines


# -- patients linked by `loff audit --on-leak regroup` ----------------------------------------
def first_appearance_ranks(groups: Any) -> Any:
    """Each image's patient numbered by the order patients first appear (an int array): folds
    split on these depend on the images' order only, not on the values of the project's salted
    patient keys, so two projects of the same folder get the same folds."""
    import numpy as np

    _, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.reshape(-1)]


def linked_patients(links: Sequence[Sequence[str]]) -> list[list[str]]:
    """The groups of patient keys that `links` (each a list of keys seen together, e.g. a
    duplicate group's patients) join, transitively: sorted, each of two or more keys."""
    parent: dict[str, str] = {}

    def root(k: str) -> str:
        parent.setdefault(k, k)
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for keys in links:
        for k in keys[1:]:
            parent[root(k)] = root(keys[0])
    groups: dict[str, set[str]] = {}
    for k in list(parent):
        groups.setdefault(root(k), set()).add(k)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def joined_patients(project: Any) -> dict[str, str]:
    """Patient key -> the key of the group `--on-leak regroup` joined it into (the smallest
    key of the group), for the regroup actions not undone. Cross-validation groups by this,
    so the images a duplicate links stay in one fold as they stay in one split. Actions
    recorded before the join was (2026-12-03) moved splits only: they join nothing here."""
    import json

    path = project.root / AUDIT_DIR / ON_LEAK_FILE
    if not path.is_file():
        return {}
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # reapply_regroups says so at the next import; grouping falls back to patients
    links = [keys for record in history if record.get("action") == "regroup" for keys in record.get("joined", [])]
    return {k: group[0] for group in linked_patients(links) for k in group}
