"""Problems found walking through the window as a new user (docs/window.md, "The walk")
that need no project: Help > About names the licence of every backbone the Cache page
offers (it listed four of ten, not the CPU default Lite2 nor RAD-DINO's research licence)."""

from __future__ import annotations

from pathlib import Path


def test_about_lists_the_licence_of_every_backbone_offered():
    from app.about import about_html
    from loff_core.weights import KNOWN, TEST_MODEL, suggested

    text = about_html(None, Path("/tmp/loff-studio.log"))
    for k in [*suggested(), TEST_MODEL]:
        assert k.architecture in text, k.architecture
    assert "rad-dino" in text and "MSRLA" in text
    assert all(k.licence.split(" ")[0] in text for k in KNOWN)
