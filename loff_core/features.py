"""What training reads: a `FeatureSource` of cached CLS embeddings and token grids.

`FeatureCache` (HDF5, `cache.py`) and `InMemoryFeatures` (arrays) both implement it, so
training code never cares whether features come from disk or RAM. Grids are returned as
`[B, C, h, w]` float16, CLS / pooled embeddings as `[B, C]` float16.
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence

import numpy as np


class FeatureSource(Protocol):
    image_ids: list[str]
    feature_dim: int
    grid_hw: tuple[int, int]

    def indices(self, image_ids: Iterable[str]) -> np.ndarray: ...

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class _IdIndex:
    """Maps image ids to row indices; a clear KeyError names the missing id."""

    image_ids: list[str]

    def _build_index(self) -> None:
        self._row = {image_id: i for i, image_id in enumerate(self.image_ids)}

    def indices(self, image_ids: Iterable[str]) -> np.ndarray:
        try:
            return np.fromiter((self._row[i] for i in image_ids), dtype=np.int64)
        except KeyError as exc:
            raise KeyError(f"image {exc.args[0]} has no cached features") from None

    def __len__(self) -> int:
        return len(self.image_ids)


class InMemoryFeatures(_IdIndex):
    """Features held in RAM: `cls` [N, C], `grid` [N, C, h, w] (any float dtype, kept as given)."""

    def __init__(self, image_ids: Sequence[str], cls: np.ndarray, grid: np.ndarray):
        if len(image_ids) != len(cls) or len(cls) != len(grid):
            raise ValueError("image_ids, cls and grid must have the same length")
        if grid.ndim != 4 or cls.ndim != 2 or grid.shape[1] != cls.shape[1]:
            raise ValueError(f"expected cls [N,C] and grid [N,C,h,w]; got {cls.shape} and {grid.shape}")
        self.image_ids = list(image_ids)
        self.cls = cls
        self.grid = grid
        self.feature_dim = int(cls.shape[1])
        self.grid_hw = (int(grid.shape[2]), int(grid.shape[3]))
        self._build_index()

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        return self.cls[idx], self.grid[idx]

    def nbytes(self) -> int:
        return int(self.cls.nbytes + self.grid.nbytes)

    def to_memory(self) -> "InMemoryFeatures":
        return self
