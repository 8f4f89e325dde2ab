"""Where the files of the top-level `resources/` folder (icons, themes) are at run time.

`resource_path("icons", "loff-studio.svg")` gives the path of `resources/icons/loff-studio.svg`
in each of the three ways LOFF Studio runs:

- frozen (PyInstaller, packaging/loff-studio.spec): the spec copies `resources/` into the
  bundle, found under `sys._MEIPASS`;
- a source checkout (./studio.sh, an editable install): `resources/` next to `app/`, in the
  folder that holds pyproject.toml;
- an installed wheel (`pip install loff-studio-*.whl`): setup.py maps `resources/` into the
  wheel as the data package `loff_studio_resources`, found through importlib.

The path is returned whether or not the file exists (callers may probe for optional files);
`resources_root()` raises FileNotFoundError when no resources folder is found at all.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PACKAGE = "loff_studio_resources"


def resources_root() -> Path:
    """The folder that holds the contents of the repository's `resources/`."""
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        root = Path(frozen) / "resources"
        if root.is_dir():
            return root
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "resources").is_dir():
        return checkout / "resources"
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location).is_dir():
                return Path(location)
    raise FileNotFoundError("LOFF Studio's resources folder (icons, themes) was not found: not in the frozen "
                            f"bundle, not next to {Path(__file__).resolve().parent}, and no '{_PACKAGE}' package "
                            "installed; reinstall LOFF Studio")


def resource_path(*parts: str) -> Path:
    """The path of `resources/<parts...>` (e.g. `resource_path("icons", "loff-studio.svg")`)."""
    return resources_root().joinpath(*parts)


def app_icon_path() -> Path:
    """The application icon (SVG; Qt renders it at every size the window manager asks for)."""
    return resource_path("icons", "loff-studio.svg")
