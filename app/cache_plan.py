"""What an extraction will do, said before it runs (the Cache page's plan; whether a cache
is partial is the engine's rule, `Project.cache_partial`). Plain Python: no Qt, no torch
(the window must not import torch to describe a backbone), so the numbers come from a small
table of the suggested backbones; a test checks the table against timm."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Any, Optional

from loff_core.weights import TEST_MODEL, suggested

#: suggested backbone -> (default input size px, pixels per token (patch or stride), feature
#: dimension, patch tokens (ViT: input // patch) or "cnn" (ceil(input / stride))), from the
#: engine's registry (loff_core.weights), the one list of suggested backbones
GEOMETRY: dict[str, tuple[int, int, int, str]] = {
    k.architecture: (k.native_size, k.token_px, k.feature_dim, "cnn" if k.family == "efficientnet" else "vit")
    for k in [*suggested(), TEST_MODEL]}
#: what the evidence says about the input size of mammograms (docs/benchmarks.md, "Defaults
#: from both real data sets"; the advice table, loff_core.advice, says the same)
MAMMO_NOTE = ("on a CPU the model's own input size is the default: 512 px gave no gain beyond the noise for "
              "breast density on mini-MIAS, for 2.7x the extraction time; small lesions (calcifications) were not "
              "measured here, so try a larger input for them")


@dataclass
class CachePlan:
    images: int
    native: Optional[tuple[int, int]]  # median rows x cols of the catalogue
    input_size: Optional[int]  # px the backbone sees (longer side resized, padded square)
    grid_before: Optional[tuple[int, int]]  # tokens per side before pooling
    grid_after: Optional[tuple[int, int]]  # after average pooling to at most `grid`
    feature_dim: Optional[int]
    bytes_per_image: Optional[int]  # every cached block together
    mammograms: bool
    blocks: tuple[str, ...] = ("last",)  # the cached blocks, the first is the default block
    block_grids: tuple[tuple[str, int, int], ...] = ()  # (block, grid side after pooling, channels)
    crop: str = "none"  # settings.CROPS

    @property
    def total_bytes(self) -> Optional[int]:
        return None if self.bytes_per_image is None else self.bytes_per_image * self.images

    def lines(self) -> list[str]:
        """The plan in words (HTML-safe plain text), one fact per line."""
        out = []
        if self.native:
            out.append(f"native image size: {self.native[0]} x {self.native[1]} px (median of {self.images} images)")
        if self.input_size is None:
            out.append("input size, token grid and cache size are known once the backbone is loaded "
                       "(not one of the suggested models)")
            return out
        scale = f"; the longer side is shrunk {max(self.native) / self.input_size:.1f}x" if (
            self.native and max(self.native) > self.input_size) else ""
        how = {"body": "cut to the body (film labels and background left out), longer side resized, padded to "
                       "a square",
               "body-fill": "cut to the body (film labels and background left out), stretched to the square"
               }.get(self.crop, "longer side resized, padded to a square")
        out.append(f"input size: {self.input_size} x {self.input_size} px ({how}; an image with no clear "
                   f"background is not cut){scale}" if self.crop != "none" else
                   f"input size: {self.input_size} x {self.input_size} px ({how}){scale}")
        gb, ga = self.grid_before, self.grid_after
        px = f", each token covers about {max(self.native) / ga[0]:.0f} native px" if self.native and ga else ""
        out.append(f"token grid: {gb[0]} x {gb[1]} before pooling, {ga[0]} x {ga[1]} x {self.feature_dim} cached"
                   f"{' (average-pooled)' if ga != gb else ''}{px}")
        if len(self.block_grids) > 1:
            out.append("blocks cached from one forward pass: " + ", ".join(
                f"{b} ({side} x {side} x {dim})" for b, side, dim in self.block_grids)
                + f"; training uses {self.blocks[0]} unless another is chosen")
        out.append(f"cache: {_size(self.bytes_per_image)} per image, {_size(self.total_bytes)} for "
                   f"{self.images} images (float16{', every block' if len(self.block_grids) > 1 else ''})")
        if self.mammograms and self.native and max(self.native) > self.input_size:
            out.append(f"mammograms: {MAMMO_NOTE}")
        return out


def _size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def looks_like_mammograms(entries: list[Any]) -> bool:
    """DICOM modality MG, a CC / MLO view, or large greyscale images (>= 1000 px)."""
    if not entries:
        return False
    if any((e.modality or "").upper() == "MG" or (e.view or "").upper() in ("CC", "MLO") for e in entries):
        return True
    return median(max(e.rows, e.cols) for e in entries) >= 1000


def plan(entries: list[Any], backbone: str, image_size: Optional[int], grid: Optional[int],
         layers: Optional[str] = None, crop: str = "none") -> CachePlan:
    """The plan for `layers` (the Extract setting; None: its default): every cached block's
    token grid and CLS counts in the cache size."""
    from loff_core.advice import block_grids

    native = (int(median(e.rows for e in entries)), int(median(e.cols for e in entries))) if entries else None
    geometry = GEOMETRY.get(backbone) or _registry_geometry(backbone)
    mammo = looks_like_mammograms(entries)
    if geometry is None:
        return CachePlan(len(entries), native, None, None, None, None, None, mammo)
    default, step, dim, kind = geometry
    size = image_size or default
    grids = block_grids(_architecture(backbone), kind, step, dim, size, grid, layers)
    blocks = tuple(b for b, _, _, _ in grids)
    _, side, after, first_dim = grids[0]
    return CachePlan(len(entries), native, size, (side, side), (after, after), first_dim,
                     sum((a * a * d + d) * 2 for _, _, a, d in grids), mammo, blocks,
                     tuple((b, a, d) for b, _, a, d in grids), crop)


def _architecture(name: str) -> str:
    from loff_core.weights import known

    k = known(name)
    return k.architecture if k is not None else name


def _registry_geometry(name: str) -> Optional[tuple[int, int, int, str]]:
    """A registry model used by its registry name (converted on Get: RAD-DINO, DINOv3, BiomedCLIP)."""
    from loff_core.weights import known

    k = known(name)
    if k is None or not k.feature_dim or not k.token_px:
        return None
    return k.native_size, k.token_px, k.feature_dim, "cnn" if k.family == "efficientnet" else "vit"

