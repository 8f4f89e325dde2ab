"""Which encoder and input size to start with, and what it costs (torch-free).

A small declared table: for the images in the project (mammograms, chest radiographs, other:
`image_kind` infers it from the catalog's DICOM modality and view, or the user says it) and
the device found (cpu / gpu), the suggested backbone (a registry name, `loff_core.weights`),
the input size, the time per image and where every figure comes from (`evidence`: a
measurement in docs/benchmarks.md, or a model card's own figure, named). The cache size is
computed from the backbone's geometry (the registry's patch and feature width) and the grid
cap, as the Cache page's plan computes it. `loff weights list` and the Cache page show it.

The CPU rows are the Extract default on a CPU (`CPU_BACKBONE` at `CPU_SIZE`, chosen by nested
CV on both real data sets, docs/benchmarks.md "Defaults from both real data sets"; a test
fails if the default and the advice part); their time is `loff extract` end to end measured
on the shared 2-core development machine, so a user's CPU is likely faster. GPU rows give the
forward compute counted in "Encoders: cost of the advised rows" (no GPU was lent when the
table was made): their time is a stated estimate, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from .progress import rough_duration

IMAGE_KINDS = ("mammograms", "chest radiographs", "other")
DEVICES = ("cpu", "gpu")
#: GPU time estimates: forward GFLOPs / this many effective TFLOP/s (bf16 autocast, a workstation
#: GPU at a fraction of its peak). An assumption, stated wherever a GPU time is shown.
ASSUMED_GPU_TFLOPS = 50.0
_MAMMO_VIEWS = {"CC", "MLO", "ML", "LM", "XCCL", "XCCM", "SIO", "FB"}
_CHEST_VIEWS = {"PA", "AP", "LL", "RL", "LATERAL", "LAT"}


@dataclass(frozen=True)
class Advice:
    images: str  # one of IMAGE_KINDS
    device: str  # one of DEVICES
    backbone: str  # registry name (loff_core.weights.KNOWN)
    image_size: int  # px
    gflops: float  # forward compute per image at image_size (counted, benchmarks/encoders.py)
    cpu_images_per_s: Optional[float]  # measured here (None: not measured on a CPU)
    why: str
    evidence: str  # where the choice and the figures come from, named

    def seconds_per_image(self) -> float:
        if self.device == "cpu" and self.cpu_images_per_s:
            return 1.0 / self.cpu_images_per_s
        return self.gflops / (ASSUMED_GPU_TFLOPS * 1e3)

    def time_note(self) -> str:
        if self.device == "cpu" and self.cpu_images_per_s:
            return ("loff extract end to end measured on a shared 2-core CPU, 1 thread, small images; large "
                    "images decode slower")
        return (f"estimate: {self.gflops:g} GFLOPs per image at an assumed {ASSUMED_GPU_TFLOPS:g} TFLOP/s, forward "
                f"only; decoding large images may take longer")


#: the CPU rows' encoder and input: the Extract default on a CPU (weights.CPU_DEFAULT_ORDER[0] at
#: its own size, ExtractSettings.image_size None) -- tests/test_defaults.py fails if they part.
#: Chosen by nested CV on both real data sets: docs/benchmarks.md, "Defaults from both real data
#: sets" (benchmarks/defaults_evidence.py).
CPU_BACKBONE, CPU_SIZE = "efficientnet-lite2", 260
#: `loff extract` end to end (ONNX Runtime, 1 thread, blocks -2,last) in docs/benchmarks.md
#: section 2, "Issue 20: `loff extract` against the fastest forward engine": Lite2 30.0, Lite0 51.1
#: images/s on small DICOMs, measured side by side on the shared 2-core machine
CPU_IMAGES_PER_S = {"efficientnet-lite2": 30.0, "efficientnet-lite0": 51.1}
CPU_GFLOPS = {"efficientnet-lite2": 1.72, "efficientnet-lite0": 0.77}
_CPU_EVIDENCE = ("docs/benchmarks.md, 'Defaults from both real data sets': nested CV on mini-MIAS (by woman) and "
                 "the pediatric chest radiographs (by patient), Lite0 vs Lite2, blocks -2 / last; speed: section 2, "
                 "loff extract end to end")


def _cpu_row(images: str, why: str) -> "Advice":
    return Advice(images, "cpu", CPU_BACKBONE, CPU_SIZE, CPU_GFLOPS[CPU_BACKBONE], CPU_IMAGES_PER_S[CPU_BACKBONE],
                  why, _CPU_EVIDENCE)


_CPU_WHY = ("the best of the installable CPU encoders on both real data sets with the attention head on its "
            "second-to-last stage (-2, cached with the output block from one forward pass)")
# GPU figures: docs/benchmarks.md, "Encoders: cost of the advised rows" (benchmarks/encoders.py,
# forward GFLOPs counted; no GPU was lent, so their time is an estimate).
TABLE: list[Advice] = [
    _cpu_row("mammograms", _CPU_WHY + "; 512 px gave no gain beyond the noise for breast density on mini-MIAS for "
             "2.7x the time (small lesions were not measured: try a larger input for them)"),
    Advice("mammograms", "gpu", "dinov3-vitl16", 512, 727.19, None,
           "DINOv3 is trained for high-resolution dense features; 512 px keeps calcifications and spiculation "
           "(LOFF-TA used 512 px); no mammography encoder with clear terms is public (docs/backbones.md)",
           "DINOv3 model card (facebook/dinov3-vitl16-pretrain-lvd1689m): ViT-L/16 distilled, dense results "
           "e.g. ADE20k linear 54.9 mIoU; compute counted in docs/benchmarks.md"),
    _cpu_row("chest radiographs", _CPU_WHY + "; the chest encoder RAD-DINO (Get it: 0.20 images/s here, 8.7x "
             "Lite2's forward time) was not measured for accuracy here"),
    Advice("chest radiographs", "gpu", "rad-dino", 518, 303.15, None,
           "its native size (37 x 37 tokens), as its model card uses it",
           "RAD-DINO model card (microsoft/rad-dino): 518 px input, 37 x 37 patch tokens; compute counted in "
           "docs/benchmarks.md"),
    _cpu_row("other", _CPU_WHY),
    Advice("other", "gpu", "dinov3-vitl16", 256, 164.74, None,
           "DINOv3 ViT-L/16 at its native 256 px: the strongest workstation-sized general encoder listed",
           "DINOv3 model card (facebook/dinov3-vitl16-pretrain-lvd1689m): e.g. ImageNet linear probe and ADE20k "
           "54.9 mIoU for ViT-L/16; compute counted in docs/benchmarks.md"),
]


def advise(images: str, gpu: bool) -> Advice:
    """The table's row for these images on this device."""
    if images not in IMAGE_KINDS:
        raise ValueError(f"images {images!r}: one of {', '.join(IMAGE_KINDS)}")
    device = "gpu" if gpu else "cpu"
    return next(a for a in TABLE if a.images == images and a.device == device)


def image_kind(entries: Iterable[Any]) -> str:
    """From the catalog: DICOM modality MG or a mammographic view (CC, MLO, ...) -> mammograms;
    modality CR / DX with a chest view (PA, AP, lateral) -> chest radiographs; else other.
    The majority of the entries decides."""
    counts = {k: 0 for k in IMAGE_KINDS}
    for e in entries:
        modality = (getattr(e, "modality", None) or "").upper()
        view = (getattr(e, "view", None) or "").upper()
        if modality == "MG" or view in _MAMMO_VIEWS:
            counts["mammograms"] += 1
        elif modality in ("CR", "DX") and view in _CHEST_VIEWS:
            counts["chest radiographs"] += 1
        else:
            counts["other"] += 1
    best = max(IMAGE_KINDS, key=lambda k: (counts[k], k == "other"))
    return best


#: EfficientNet-Lite feature stages as timm's feature_info gives them: (channels, stride) from the
#: first stage to the last. The blocks `-K` / `N` of `--layers` are these stages; `last` is the
#: network's own output (1280 channels, stride 32). tests/test_defaults.py checks it against timm.
CNN_STAGES: dict[str, tuple[tuple[int, int], ...]] = {
    "tf_efficientnet_lite0": ((16, 2), (24, 4), (40, 8), (112, 16), (320, 32)),
    "tf_efficientnet_lite1": ((16, 2), (24, 4), (40, 8), (112, 16), (320, 32)),
    "tf_efficientnet_lite2": ((16, 2), (24, 4), (48, 8), (120, 16), (352, 32)),
}


def block_grids(architecture: str, kind: str, step: int, dim: int, size: int, grid: Optional[int],
                layers: Optional[str] = None) -> list[tuple[str, int, int, int]]:
    """(block, tokens per side before pooling, after pooling to at most grid, channels) of each
    block `layers` caches (None: ExtractSettings.layers; `default`: DEFAULT_LAYERS of the kind,
    "cnn" or "vit"), for a model whose output has `step` pixels per token and `dim` channels.
    A ViT's blocks all share its patch grid and width; a CNN's `-K` / `N` is a feature stage."""
    import math

    from .settings import DEFAULT_LAYERS, ExtractSettings

    text = (layers or ExtractSettings.layers).strip()
    if text == "default":
        text = DEFAULT_LAYERS[kind]
    out = []
    for block in [b.strip() for b in text.split(",") if b.strip()] or ["last"]:
        b_step, b_dim = step, dim
        stages = CNN_STAGES.get(architecture)
        if kind == "cnn" and block != "last" and stages:
            try:
                b_dim, b_step = stages[-1 if block.endswith(":") else int(block)]
            except (ValueError, IndexError):
                pass  # not a block this table knows: counted as the output (the engine checks it)
        side = size // b_step if kind == "vit" else math.ceil(size / b_step)
        out.append((block, side, min(grid, side) if grid else side, b_dim))
    return out


def cache_bytes_per_image(backbone: str, image_size: int, grid: Optional[int],
                          layers: Optional[str] = None) -> Optional[int]:
    """float16 CLS + token grid (pooled to at most grid x grid) of every cached block (`layers`:
    None = the Extract default), as the cache stores them."""
    from .weights import known

    k = known(backbone)
    if k is None or not k.feature_dim or not k.token_px:
        return None
    kind = "cnn" if k.family == "efficientnet" else "vit"
    grids = block_grids(k.architecture, kind, k.token_px, k.feature_dim, image_size, grid, layers)
    return sum((after * after + 1) * d * 2 for _, _, after, d in grids)


def _size(n: float) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def describe(advice: Advice, images: Optional[int] = None, grid: Optional[int] = None) -> str:
    """One line: what to start with, what it costs (for `images` images if given), why, evidence."""
    from .settings import ExtractSettings
    from .weights import known

    grid = ExtractSettings.grid if grid is None else grid
    k = known(advice.backbone)
    per = advice.seconds_per_image()
    per_bytes = cache_bytes_per_image(advice.backbone, advice.image_size, grid)
    n = f" for {images} images" if images else " per 1000 images"
    count = images or 1000
    cost = f"about {rough_duration(per * count)}{n} ({advice.time_note()})"
    if per_bytes:
        cost += f", cache {_size(per_bytes * count)}"
    get = ""
    if k is not None and k.source == "hf":
        get = f"; weights {k.size_mb:,.0f} MB, {k.licence.split(' (')[0]}" + (", gated" if k.gated else "")
    return (f"for {advice.images} on a {advice.device.upper()}: start with {advice.backbone} at "
            f"{advice.image_size} px: {cost}{get}. Why: {advice.why}. Evidence: {advice.evidence}")


def default_reason(images: str = "other", gpu: bool = False, *, backbone: Optional[str] = None,
                   image_size: Optional[int] = None, layers: Optional[str] = None,
                   block: Optional[str] = None, default_crop: bool = False) -> str:
    """One line for `loff extract` and `loff tune` (and the window): which default they use and
    why. Pass what the user chose (None: the default was used; then it is named, with the
    evidence). `block`: the cache block a tune or training uses (the cache's first unless chosen).
    `default_crop`: an extraction whose crop was not chosen (the default crop is named)."""
    from .settings import DEFAULT_LAYERS, ExtractSettings
    from .weights import CPU_DEFAULT_ORDER, known

    row = advise(images, gpu)
    used = []
    if backbone is None:
        name = row.backbone if not gpu else "the best DINOv2 model present (else " + CPU_DEFAULT_ORDER[0] + ")"
        used.append(f"backbone {name}")
    if image_size is None:
        k = known(backbone or row.backbone)
        native = k.native_size if k is not None and k.native_size else None
        used.append(f"input {native} px (the model's own)" if native else "the model's own input size")
    if layers is None or layers == "default":
        used.append(f"blocks {DEFAULT_LAYERS['cnn']} for CNNs, {DEFAULT_LAYERS['vit']} for ViTs"
                    if ExtractSettings.layers == "default" else f"blocks {ExtractSettings.layers}")
    if default_crop:
        used.append(f"crop {ExtractSettings.crop} (nested CV on mini-MIAS: docs/benchmarks.md section 11; --crop none keeps the "
                    "whole image)")
    if block is not None:
        first = DEFAULT_LAYERS["cnn"].split(",")[0]
        used.append(f"block {block}" + (" (the cache's first, the attention head's best stage)" if block == first
                                        else ""))
    if not used:
        return ""
    return f"defaults used: {', '.join(used)}. Why: {row.why}. Evidence: {row.evidence}"
