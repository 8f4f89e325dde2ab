"""Where the top-level `resources/` folder (themes, icons, the offline guide) is.

Minimal version: a checkout (`<repo>/resources`). The packaging version extends this to a
wheel and a frozen bundle with the same signature."""

from __future__ import annotations

from pathlib import Path


def resource_path(*parts: str) -> Path:
    """`resources/<parts...>` of this installation."""
    return Path(__file__).resolve().parents[1].joinpath("resources", *parts)
