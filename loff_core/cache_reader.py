"""The read side of the feature cache (split out of cache.py, issue 10): `FeatureCache`
opens a finished `caches/<fingerprint>.h5`, checks it and reads token grids for training,
evaluation and the viewer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .errors import CacheError, Remedy
from .features import InMemoryFeatures, _IdIndex

from .cache_h5 import FORMAT_VERSION, _h5py, _strings, block_datasets


class FeatureCache(_IdIndex):
    """A finished cache file (read side). Implements `features.FeatureSource`.

    A cache may hold several blocks of the backbone (`loff extract --layers -2,last`: one
    forward pass, each block's CLS and pooled grid); `blocks` lists them, the first is the
    default, and `use_block(name)` (or `open(..., block=name)`) chooses the one `read`,
    `to_memory`, `feature_dim` and `grid_hw` give. Caches of one block (all caches written
    before issue 20) have one block, named by their `layers` (`last` when absent)."""

    def __init__(self, path: Path, handle: Any):
        self.path = Path(path)
        self._h = handle
        self.fingerprint = str(handle.attrs["fingerprint"])
        from .trust import parse_json

        self.backbone = parse_json(str(handle.attrs["backbone"]))
        self.engine = str(handle.attrs.get("engine", ""))  # who computed the features ("" before issue 20)
        self.image_ids = _strings(handle["image_ids"])
        described = self.backbone.get("blocks") if isinstance(self.backbone, dict) else None
        if isinstance(described, list) and described:
            self.blocks = [str(b.get("layers")) for b in described]
        else:
            self.blocks = [str(self.backbone.get("layers") or "last") if isinstance(self.backbone, dict) else "last"]
        self.use_block(None)
        self._build_index()

    def use_block(self, block: Optional[str]) -> "FeatureCache":
        """Read block `block` (None: the first, the cache's default) from now on."""
        if block in (None, ""):
            i = 0
        elif block in self.blocks:
            i = self.blocks.index(block)
        else:
            raise CacheError(f"{self.path}: the cache holds the blocks {', '.join(self.blocks)}, not {block!r}; "
                             f"extract again with the layers setting including {block}, or choose one of those")
        self.block = self.blocks[i]
        cls_name, tok_name = block_datasets(i)
        self._cls = self._h[cls_name]
        self._tokens = self._h[tok_name]
        n, h, w, c = self._tokens.shape
        self.feature_dim = int(c)
        self.grid_hw = (int(h), int(w))
        return self

    @property
    def block_backbone(self) -> dict[str, Any]:
        """The backbone record of the chosen block, as a cache of that block alone would
        record it (its layers, shapes and fingerprint): what a run and an exported card keep,
        so `predict` rebuilds exactly these features with one block."""
        b = dict(self.backbone)
        described = b.pop("blocks", None)
        if not described:
            return b
        entry = described[self.blocks.index(self.block)]
        b.update(layers=entry["layers"], feature_dim=entry["feature_dim"], grid_hw=entry["grid_hw"],
                 fingerprint=entry["fingerprint"])
        return b

    def _check(self, expected_fingerprint: Optional[str]) -> None:
        """What the file says about itself must agree: its name, its recorded fingerprint,
        the fingerprint its recorded backbone gives, and the shapes of its datasets."""
        from .backbones import fingerprint_of, identity_of

        name = expected_fingerprint if expected_fingerprint is not None else self.path.name.split(".")[0]
        if self.fingerprint != name:
            raise CacheError(f"{self.path}: the file records fingerprint {self.fingerprint[:40]!r}, not the "
                             f"{name!r} its name says (a cache copied under another name); not used")
        b = self.backbone
        if not isinstance(b, dict) or fingerprint_of(identity_of(b)) != self.fingerprint:
            raise CacheError(f"{self.path}: the backbone recorded in the cache does not give its fingerprint "
                             f"(the file was altered); not used")
        n = len(self.image_ids)
        first_dim, first_hw = self._h["tokens"].shape[3], tuple(self._h["tokens"].shape[1:3])
        if (b.get("feature_dim") not in (None, first_dim)
                or list(b.get("grid_hw") or first_hw) != list(first_hw)):
            raise CacheError(f"{self.path}: tokens are {self.feature_dim} wide on a {self.grid_hw} grid but the "
                             f"backbone {b.get('name')} gives {b.get('feature_dim')} on {b.get('grid_hw')}; not used")
        described = b.get("blocks") or [{}]
        for i, entry in enumerate(described):
            cls_ds, tok_ds = (self._h[name] for name in block_datasets(i))
            dim = tok_ds.shape[3]
            if tok_ds.shape[0] != n or tuple(cls_ds.shape) != (n, dim):
                raise CacheError(f"{self.path}: image_ids, cls and tokens have different lengths or widths "
                                 f"({n}, {tuple(cls_ds.shape)}, {tuple(tok_ds.shape)}); the cache is damaged")
            hw = list(tok_ds.shape[1:3])
            if entry and (entry.get("feature_dim") != dim or list(entry.get("grid_hw") or []) != hw):
                raise CacheError(f"{self.path}: block {entry.get('layers')} holds tokens {tuple(tok_ds.shape[1:])} but "
                                 f"the backbone records {entry.get('grid_hw')} x {entry.get('feature_dim')}; not used")
        if len(self._row) != n:
            raise CacheError(f"{self.path}: the same image id appears twice; the cache is damaged")

    def _check_finite(self, cls: np.ndarray, tokens: np.ndarray, idx: np.ndarray) -> None:
        bad = ~(np.isfinite(cls).all(axis=1) & np.isfinite(tokens.reshape(len(tokens), -1)).all(axis=1))
        if bad.any():
            first = self.image_ids[int(idx[int(np.flatnonzero(bad)[0])])]
            raise CacheError(f"{self.path}: cached features of image {first} hold NaN or infinity; the cache is "
                             f"damaged: delete it and extract again")

    @classmethod
    def open(cls, path: Path | str, expected_fingerprint: Optional[str] = None,
             block: Optional[str] = None) -> "FeatureCache":
        h5py = _h5py()
        path = Path(path)
        try:
            handle = h5py.File(path, "r", locking=False)
        except OSError as exc:
            raise CacheError(f"{path}: not a readable feature cache ({exc})") from None
        try:
            if not handle.attrs.get("done"):
                raise CacheError("feature cache is unfinished", path, Remedy.EXTRACT_AGAIN)
            if int(handle.attrs.get("format_version", 0)) > FORMAT_VERSION:
                raise CacheError(f"{path}: written by a newer LOFF Studio (cache format "
                                 f"{handle.attrs.get('format_version')})")
            cache = cls(path, handle)
            cache._check(expected_fingerprint)
            return cache.use_block(block)
        except (KeyError, ValueError, TypeError) as exc:
            handle.close()
            raise CacheError(f"{path}: feature cache is damaged ({exc})") from None
        except CacheError:
            handle.close()
            raise

    def close(self) -> None:
        self._h.close()

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def read(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cls [B,C] and grid [B,C,h,w], float16. Reads one image at a time (h5py fancy
        indexing was 20x slower than this loop on one-image chunks)."""
        idx = np.asarray(indices, dtype=np.int64)
        h, w = self.grid_hw
        cls = np.empty((len(idx), self.feature_dim), dtype=np.float16)
        tokens = np.empty((len(idx), h, w, self.feature_dim), dtype=np.float16)
        for j, i in enumerate(idx):
            self._cls.read_direct(cls, np.s_[i:i + 1], np.s_[j:j + 1])
            self._tokens.read_direct(tokens, np.s_[i:i + 1], np.s_[j:j + 1])
        self._check_finite(cls, tokens, idx)
        return cls, tokens.transpose(0, 3, 1, 2)

    def nbytes_per_image(self) -> int:
        h, w = self.grid_hw
        return (h * w * self.feature_dim + self.feature_dim) * 2

    def stored_bytes_per_image(self) -> int:
        """What one image takes in the file: every block's grid and CLS (nbytes_per_image:
        the chosen block's, what training holds in memory)."""
        total = 0
        for i in range(len(self.blocks)):
            _, h, w, c = self._h[block_datasets(i)[1]].shape
            total += (h * w * c + c) * 2
        return total

    def nbytes(self) -> int:
        return self.nbytes_per_image() * len(self.image_ids)

    def to_memory(self) -> InMemoryFeatures:
        """The whole cache in RAM (grid as [N,C,h,w] float16)."""
        cls = self._cls[:]
        tokens = np.ascontiguousarray(self._tokens[:].transpose(0, 3, 1, 2))
        step = 64
        for s in range(0, len(cls), step):  # in steps: the boolean masks stay small
            self._check_finite(cls[s:s + step], tokens[s:s + step], np.arange(s, min(s + step, len(cls))))
        return InMemoryFeatures(self.image_ids, cls, tokens)
