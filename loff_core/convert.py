"""Checkpoints in other layouts -> timm's layout, or a clear refusal naming the keys.

`convert_checkpoint(path)` reads a weights file (or a folder holding one) without running
pickled code, recognises its layout and returns a `Converted` record: the state dict in
timm's key layout at the checkpoint's native resolution, the timm architecture and the
model arguments that rebuild it, the native input size and (when the checkpoint says so)
mean / std. Layouts:

- ``timm``: a timm checkpoint (a timm Hub folder's config.json names the architecture, or
  the caller passes `architecture`);
- ``dinov2``: the original DINOv2 release (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`:
  `blocks.N.*`, a 518-px `pos_embed`, `mask_token`, `register_tokens`);
- ``hf-dinov2``: Hugging Face transformers `Dinov2Model` / `Dinov2WithRegistersModel`
  (`embeddings.*`, `encoder.layer.N.*`, e.g. RAD-DINO), a folder with config.json or a file;
- ``openclip``: an OpenCLIP ViT image tower (`visual.conv1.weight`,
  `visual.transformer.resblocks.N.*`; the text tower is ignored);
- ``openclip-timm``: an OpenCLIP model whose image tower is a timm model (`visual.trunk.*`,
  e.g. BiomedCLIP; `open_clip_config.json` names the timm architecture, size, mean / std);
- ``hf-dinov3``: Hugging Face transformers `DINOv3ViTModel` (`embeddings.register_tokens`,
  `layer.N.attention.q_proj.*`, as published in facebook/dinov3-*-pretrain-lvd1689m; or
  `model.layer.N.*`, as transformers 5 saves it) -> timm's `vit_*_patch16_dinov3_qkvb` (Eva
  with DINOv3 RoPE: no position table, patch centres normalised to [-1, 1] at every input
  size, so other sizes need no resampling; CLS and 4 registers carry no position).

The result is then loaded strictly into the timm model (`check_fits`): any key missing or
left over is named in the error, so nothing half-fits silently.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import BackboneError
from .settings import input_size_problem

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# DINOv2 widths -> timm architecture (heads are always width / 64 in DINOv2)
_DINOV2_ARCH = {384: "vit_small_patch14_dinov2", 768: "vit_base_patch14_dinov2",
                1024: "vit_large_patch14_dinov2", 1536: "vit_giant_patch14_dinov2"}
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass
class Converted:
    state: dict[str, Any]
    architecture: str
    model_args: dict[str, Any] = field(default_factory=dict)
    native_size: int = 224
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None
    source_format: str = "timm"
    source_file: Optional[Path] = None
    # position-embedding resampling at other input sizes, as the checkpoint's own code does it
    pos_antialias: bool = True


def weights_file_in(path: Path) -> Path:
    """The weights file itself, or the one weights file of a folder (HF / timm Hub layout)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise BackboneError(f"{path}: no such file or folder")
    for name in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(found) == 1:
        return found[0]
    raise BackboneError(f"{path}: expected one weights file (.safetensors / .pth / .bin) in the folder, found "
                        f"{len(found)}" + (f": {', '.join(p.name for p in found[:5])}" if found else ""))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{path}: not readable JSON ({exc})") from None


_DINOV3_Q = re.compile(r"^(model\.)?layer\.\d+\.attention\.q_proj\.weight$")


def detect_format(state: dict[str, Any]) -> str:
    keys = set(state)
    if any(_DINOV3_Q.match(k) for k in keys) and "embeddings.cls_token" in keys:
        return "hf-dinov3"
    if any(k.startswith("visual.trunk.") for k in keys):
        return "openclip-timm"
    if any(k.startswith(("visual.conv1.", "visual.transformer.resblocks.")) for k in keys) or \
            {"class_embedding", "conv1.weight"} <= keys:
        return "openclip"
    if any(k.startswith(("embeddings.patch_embeddings.", "dinov2.embeddings.")) for k in keys):
        return "hf-dinov2"
    if "mask_token" in keys and any(k.startswith("blocks.") for k in keys):
        return "dinov2"
    return "timm"


def convert_checkpoint(path: Path | str, architecture: Optional[str] = None,
                       model_args: Optional[dict[str, Any]] = None) -> Converted:
    """See the module docstring. `architecture` / `model_args` override what is inferred."""
    from .models import read_weights_file

    path = Path(path)
    file = weights_file_in(path)
    folder = path if path.is_dir() else file.parent
    state = read_weights_file(file)
    kind = detect_format(state)
    if kind == "hf-dinov2":
        out = _from_hf_dinov2(state, _read_json(folder / "config.json"), file, folder / "config.json")
        pre = _read_json(folder / "preprocessor_config.json")
        if pre.get("image_mean") and pre.get("image_std"):
            out.mean, out.std = _triple(pre["image_mean"]), _triple(pre["image_std"])
        crop = pre.get("crop_size")
        crop = crop.get("height") if isinstance(crop, dict) else crop
        if crop is not None:  # a downloaded file like any other input: in the declared range
            if (problem := input_size_problem(crop)) is not None:
                raise BackboneError(f"{folder / 'preprocessor_config.json'}: crop_size {problem}; not converted")
            out.native_size = int(crop)
    elif kind == "hf-dinov3":
        out = _from_hf_dinov3(state, _read_json(folder / "config.json"), file)
        pre = _read_json(folder / "preprocessor_config.json")
        if pre.get("image_mean") and pre.get("image_std"):
            out.mean, out.std = _triple(pre["image_mean"]), _triple(pre["image_std"])
    elif kind == "openclip-timm":
        out = _from_openclip_timm(state, _read_json(folder / "open_clip_config.json"), file)
    elif kind == "dinov2":
        out = _from_dinov2(state)
    elif kind == "openclip":
        out = _from_openclip(state)
    else:
        cfg = _read_json(folder / "config.json") if path.is_dir() or (folder / "config.json").is_file() else {}
        arch = architecture or cfg.get("architecture")
        if not arch:
            raise BackboneError(
                f"{file}: the keys are in none of the known layouts (original DINOv2, Hugging Face Dinov2Model, "
                f"OpenCLIP ViT) and no timm architecture is given; for a timm checkpoint pass --architecture "
                f"TIMM_NAME (e.g. {', '.join(sorted(k for k in list(state)[:3]))} ...)")
        pre = cfg.get("pretrained_cfg", {})
        size = (pre.get("input_size") or [0])[-1] if isinstance(pre.get("input_size"), list) else 0
        if size and (problem := input_size_problem(size)) is not None:
            raise BackboneError(f"{folder / 'config.json'}: pretrained_cfg.input_size {problem}; not converted")
        out = Converted(dict(state), arch, {}, int(size or 0),
                        _triple(pre["mean"]) if pre.get("mean") else None,
                        _triple(pre["std"]) if pre.get("std") else None, "timm")
    if architecture:
        out.architecture = architecture
    if model_args:
        out.model_args.update(model_args)
    out.source_file = file
    return out


def _triple(values: Any) -> tuple[float, float, float]:
    values = [float(v) for v in values]
    return tuple(values * 3)[:3] if len(values) == 1 else tuple(values[:3])


def _refuse_unknown(what: str, unknown: list[str], hint: str = "") -> None:
    """The refusal of a checkpoint with keys a converter does not map: how many, a few named."""
    if unknown:
        raise BackboneError(f"{what} with keys this converter does not know: {len(unknown)} "
                            f"(e.g. {unknown[:4]}){hint}")


def _mlp_ratio(width: int, dim: int) -> float:
    """timm builds each MLP's first layer `int(dim * mlp_ratio)` wide; for a SwiGLU MLP
    (SwiGLUPacked, DINOv2 ViT-g) that is the packed width of both halves (w12 / weights_in).
    The ratio that gives exactly `width` after timm's int()."""
    ratio = width / dim
    return ratio if int(dim * ratio) == width else (width + 0.5) / dim


def _with_registers(arch: str, args: dict[str, Any], regs: int) -> str:
    """A DINOv2 with register tokens: timm's reg4 architecture, whose registers and CLS
    have no position of their own (no_embed_class); `args` updated in place."""
    args |= {"reg_tokens": regs, "no_embed_class": True}
    return arch.replace("_patch14_dinov2", "_patch14_reg4_dinov2")


def _grid_side(tokens: int, what: str) -> int:
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise BackboneError(f"{what}: {tokens} position embeddings do not form a square grid")
    return side


# -- original DINOv2 release ---------------------------------------------------------------
def _from_dinov2(state: dict[str, Any]) -> Converted:
    state = dict(state)
    # block-chunked checkpoints (`blocks.CHUNK.N.*`) -> `blocks.N.*`
    if any(re.match(r"blocks\.\d+\.\d+\.", k) for k in state):
        state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}
    state.pop("mask_token", None)
    dim = int(state["cls_token"].shape[-1])
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    side = _grid_side(int(state["pos_embed"].shape[1]) - 1, "pos_embed")
    swiglu = any(".mlp.w12." in k for k in state)
    hidden = int(state["blocks.0.mlp.w12.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0])
    out: dict[str, Any] = {}
    regs = 0
    if "register_tokens" in state:
        # timm keeps registers as `reg_token` and gives neither CLS nor registers a position
        # (no_embed_class): fold the CLS position into the CLS token, as the original adds it
        regs = int(state["register_tokens"].shape[1])
        out["reg_token"] = state.pop("register_tokens")
        out["cls_token"] = state.pop("cls_token") + state["pos_embed"][:, :1]
        out["pos_embed"] = state.pop("pos_embed")[:, 1:]
    for k, v in state.items():
        out[k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = v
    arch = _DINOV2_ARCH.get(dim, "vit_base_patch14_dinov2")
    args: dict[str, Any] = {"embed_dim": dim, "depth": depth, "num_heads": max(1, dim // 64), "patch_size": patch,
                            "img_size": side * patch}
    args["mlp_ratio"] = _mlp_ratio(hidden, dim)
    if swiglu:
        arch = "vit_giant_patch14_dinov2"
    if regs:
        arch = _with_registers(arch, args, regs)
    # the release's code: antialiased for the register models; the first models use no
    # antialiasing (and a 0.1 scale offset, which timm's resampling does not reproduce exactly)
    return Converted(out, arch, args, side * patch, IMAGENET_MEAN, IMAGENET_STD, "dinov2", pos_antialias=bool(regs))


# -- Hugging Face transformers Dinov2Model ------------------------------------------------
_HF_BLOCK = {
    "norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2",
}


def _check_hf_config(config: dict[str, Any], where: Path, out: dict[str, Any], swiglu: bool) -> tuple[int, int]:
    """config.json against the tensors, before anything is built: the layers, width, patch and
    MLP kind the tensors have are the model; a config that says otherwise is refused (a
    200000-layer or ViT-g config over small tensors must not build anything). (depth, heads)."""
    layers = sorted({int(k.split(".")[1]) for k in out if k.startswith("blocks.")})
    if not layers:
        raise BackboneError(f"{where.parent}: Hugging Face DINOv2 checkpoint without encoder layers")
    depth = len(layers)
    if layers != list(range(depth)):
        gaps = sorted(set(range(layers[-1] + 1)) - set(layers))
        raise BackboneError(f"{where.parent}: encoder layers {gaps[:5]} are missing from the tensors")
    dim = int(out["cls_token"].shape[-1])
    patch = int(out["patch_embed.proj.weight"].shape[-1])
    hidden = int(out["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in out else 0
    said = {"num_hidden_layers": (depth, f"{depth} layer{'s' if depth != 1 else ''}"),
            "hidden_size": (dim, f"width {dim}"), "patch_size": (patch, f"patch {patch}"),
            "use_swiglu_ffn": (swiglu, "a SwiGLU MLP" if swiglu else "no SwiGLU MLP")}
    if not swiglu and hidden:
        said["intermediate_size"] = (hidden, f"MLP width {hidden}")
    for key, (actual, what) in said.items():
        value = config.get(key)
        if value is None or (key == "use_swiglu_ffn" and bool(value) == actual):
            continue
        if isinstance(value, bool) != isinstance(actual, bool) or value != actual:
            raise BackboneError(f"{where}: {key} {str(value)[:40]} does not match the tensors ({what}); not converted")
    ratio = config.get("mlp_ratio")
    if ratio is not None and not swiglu and hidden and (
            isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio)
            or int(dim * ratio) != hidden):
        raise BackboneError(f"{where}: mlp_ratio {str(ratio)[:40]} does not match the tensors (MLP width {hidden} "
                            f"for width {dim}); not converted")
    heads = config.get("num_attention_heads") or max(1, dim // 64)
    if type(heads) is not int or not 1 <= heads <= dim or dim % heads:
        raise BackboneError(f"{where}: num_attention_heads {str(heads)[:40]} does not divide the tensors' width {dim}; "
                            f"not converted")
    return depth, heads


def _from_hf_dinov2(state: dict[str, Any], config: dict[str, Any], file: Path,
                    config_path: Optional[Path] = None) -> Converted:
    prefix = "dinov2." if any(k.startswith("dinov2.") for k in state) else ""
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    out: dict[str, Any] = {}
    qkv: dict[int, dict[str, Any]] = {}
    unknown = []
    for k, v in state.items():
        if k in ("embeddings.mask_token",) or k.startswith("pooler."):
            continue
        if k == "embeddings.cls_token":
            out["cls_token"] = v
        elif k == "embeddings.register_tokens":
            out["reg_token"] = v
        elif k == "embeddings.position_embeddings":
            out["pos_embed"] = v
        elif k.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("layernorm."):
            out["norm." + k.rsplit(".", 1)[1]] = v
        elif m := re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$", k):
            n, inner, leaf = int(m.group(1)), m.group(2), m.group(3)
            if am := re.match(r"attention\.attention\.(query|key|value)$", inner):
                qkv.setdefault(n, {})[f"{am.group(1)}.{leaf}"] = v
            elif leaf == "lambda1" and f"{inner}.lambda1" in _HF_BLOCK:
                out[f"blocks.{n}.{_HF_BLOCK[inner + '.lambda1']}"] = v
            elif inner in _HF_BLOCK:
                out[f"blocks.{n}.{_HF_BLOCK[inner]}.{leaf}"] = v
            else:
                unknown.append(k)
        else:
            unknown.append(k)
    _refuse_unknown(f"{file}: Hugging Face DINOv2 checkpoint", unknown)
    import torch

    for n, parts in qkv.items():
        for leaf in ("weight", "bias"):
            names = [f"{p}.{leaf}" for p in ("query", "key", "value")]
            if all(x in parts for x in names):
                out[f"blocks.{n}.attn.qkv.{leaf}"] = torch.cat([parts[x] for x in names], 0)
            elif any(x in parts for x in names):
                raise BackboneError(f"{file}: layer {n} lacks some of query / key / value {leaf}")
    if "cls_token" not in out or "pos_embed" not in out:
        raise BackboneError(f"{file}: Hugging Face DINOv2 checkpoint without embeddings.cls_token / position_embeddings")
    if "patch_embed.proj.weight" not in out or "blocks.0.mlp.fc1.weight" not in out:
        raise BackboneError(f"{file}: Hugging Face DINOv2 checkpoint without a patch embedding or a first MLP")
    swiglu = any(".mlp.weights_in" in k for k in state)
    depth, heads = _check_hf_config(config, config_path or file.parent / "config.json", out, swiglu)
    dim = int(out["cls_token"].shape[-1])
    patch = int(out["patch_embed.proj.weight"].shape[-1])
    side = _grid_side(int(out["pos_embed"].shape[1]) - 1, "embeddings.position_embeddings")
    hidden = int(out["blocks.0.mlp.fc1.weight"].shape[0])
    args: dict[str, Any] = {"embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": patch,
                            "img_size": side * patch, "mlp_ratio": _mlp_ratio(hidden, dim)}
    arch = "vit_giant_patch14_dinov2" if swiglu else _DINOV2_ARCH.get(dim, "vit_base_patch14_dinov2")
    eps = config.get("layer_norm_eps")
    if eps is not None and abs(float(eps) - 1e-6) > 1e-12:
        raise BackboneError(f"{file}: layer_norm_eps {eps} differs from timm's DINOv2 (1e-6); not converted")
    if "reg_token" in out:
        arch = _with_registers(arch, args, int(out["reg_token"].shape[1]))
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    # transformers' Dinov2 interpolates bicubic without antialiasing
    return Converted(out, arch, args, side * patch, IMAGENET_MEAN, IMAGENET_STD, "hf-dinov2", pos_antialias=False)


# -- OpenCLIP ViT image tower -------------------------------------------------------------
_CLIP_BLOCK = {"ln_1": "norm1", "ln_2": "norm2", "attn.in_proj": "attn.qkv", "attn.out_proj": "attn.proj",
               "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2", "ls_1": "ls1", "ls_2": "ls2"}


def _from_openclip(state: dict[str, Any]) -> Converted:
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    out: dict[str, Any] = {}
    unknown = []
    for k, v in state.items():
        if k == "class_embedding":
            out["cls_token"] = v.reshape(1, 1, -1)
        elif k == "positional_embedding":
            out["pos_embed"] = v.reshape(1, *v.shape[-2:])
        elif k == "conv1.weight":
            out["patch_embed.proj.weight"] = v
        elif k.startswith("ln_pre."):
            out["norm_pre." + k.split(".", 1)[1]] = v
        elif k.startswith("ln_post."):
            out["norm." + k.split(".", 1)[1]] = v
        elif k == "proj":
            continue  # the projection into the joint text-image space: not an image feature
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", k):
            n, rest = m.group(1), m.group(2)
            for src, dst in _CLIP_BLOCK.items():
                if rest.startswith(src):
                    tail = rest[len(src):]
                    tail = {"_weight": ".weight", "_bias": ".bias"}.get(tail, tail)
                    out[f"blocks.{n}.{dst}{tail}"] = v
                    break
            else:
                unknown.append(k)
        else:
            unknown.append(k)
    _refuse_unknown("OpenCLIP image tower", unknown,
                    "; only ViT towers (not ResNet / timm-trunk towers) are converted")
    dim = int(out["cls_token"].shape[-1])
    patch = int(out["patch_embed.proj.weight"].shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in out if k.startswith("blocks."))
    side = _grid_side(int(out["pos_embed"].shape[1]) - 1, "positional_embedding")
    hidden = int(out["blocks.0.mlp.fc1.weight"].shape[0])
    args = {"embed_dim": dim, "depth": depth, "num_heads": max(1, dim // 64), "patch_size": patch,
            "img_size": side * patch, "mlp_ratio": _mlp_ratio(hidden, dim), "act_layer": "gelu"}
    return Converted(out, "vit_base_patch16_clip_224", args, side * patch, CLIP_MEAN, CLIP_STD, "openclip")


# -- Hugging Face transformers DINOv3ViTModel ----------------------------------------------
_DINOV3_ARCH = {(384, False): "vit_small_patch16_dinov3_qkvb", (384, True): "vit_small_plus_patch16_dinov3_qkvb",
                (768, False): "vit_base_patch16_dinov3_qkvb", (1024, False): "vit_large_patch16_dinov3_qkvb",
                (1280, True): "vit_huge_plus_patch16_dinov3_qkvb"}
_DINOV3_BLOCK = {"norm1": "norm1", "norm2": "norm2", "attention.o_proj": "attn.proj",
                 "mlp.up_proj": "mlp.fc1", "mlp.down_proj": "mlp.fc2"}
_DINOV3_GATED = {"mlp.gate_proj": "mlp.fc1_g", "mlp.up_proj": "mlp.fc1_x", "mlp.down_proj": "mlp.fc2"}


def _from_hf_dinov3(state: dict[str, Any], config: dict[str, Any], file: Path) -> Converted:
    """transformers' DINOv3ViTModel -> timm's Eva DINOv3 (the `_qkvb` variants: q / v biases
    as separate parameters, k without bias, as transformers and the original release)."""
    import torch

    state = {k[len("model."):] if k.startswith("model.layer.") else k: v for k, v in state.items()}
    gated = bool(config.get("use_gated_mlp")) or any(".mlp.gate_proj." in k for k in state)
    block = _DINOV3_GATED | {k: v for k, v in _DINOV3_BLOCK.items() if not k.startswith("mlp.")} if gated \
        else _DINOV3_BLOCK
    out: dict[str, Any] = {}
    qkv: dict[int, dict[str, Any]] = {}
    unknown = []
    for k, v in state.items():
        if k in ("embeddings.mask_token",) or k.startswith(("pooler.", "rope_embeddings.")):
            continue
        if k == "embeddings.cls_token":
            out["cls_token"] = v
        elif k == "embeddings.register_tokens":
            out["reg_token"] = v
        elif k.startswith("embeddings.patch_embeddings."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("norm."):
            out[k] = v
        elif m := re.match(r"layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$", k):
            n, inner, leaf = int(m.group(1)), m.group(2), m.group(3)
            if am := re.match(r"attention\.(q|k|v)_proj$", inner):
                qkv.setdefault(n, {})[f"{am.group(1)}.{leaf}"] = v
            elif leaf == "lambda1" and inner in ("layer_scale1", "layer_scale2"):
                out[f"blocks.{n}.gamma_{inner[-1]}"] = v
            elif inner in block:
                out[f"blocks.{n}.{block[inner]}.{leaf}"] = v
            else:
                unknown.append(k)
        else:
            unknown.append(k)
    _refuse_unknown(f"{file}: Hugging Face DINOv3 checkpoint", unknown)
    for n, parts in qkv.items():
        if not all(f"{p}.weight" in parts for p in "qkv"):
            raise BackboneError(f"{file}: layer {n} lacks some of q_proj / k_proj / v_proj weights")
        out[f"blocks.{n}.attn.qkv.weight"] = torch.cat([parts[f"{p}.weight"] for p in "qkv"], 0)
        if "k.bias" in parts and bool(parts["k.bias"].abs().max() > 0):
            raise BackboneError(f"{file}: layer {n} has a non-zero key bias; timm's DINOv3 has none: not converted")
        zeros = torch.zeros_like(parts["q.weight"][:, 0])
        out[f"blocks.{n}.attn.q_bias"] = parts.get("q.bias", zeros)
        out[f"blocks.{n}.attn.v_bias"] = parts.get("v.bias", zeros)
    if "cls_token" not in out or "patch_embed.proj.weight" not in out:
        raise BackboneError(f"{file}: Hugging Face DINOv3 checkpoint without embeddings.cls_token / patch_embeddings")
    for what, want in (("layer_norm_eps", 1e-5), ("rope_theta", 100.0)):
        got = config.get(what)
        if got is not None and abs(float(got) - want) > 1e-9 * max(1.0, want):
            raise BackboneError(f"{file}: {what} {got} differs from timm's DINOv3 ({want:g}); not converted")
    act = config.get("hidden_act", "silu" if gated else "gelu")
    if act != ("silu" if gated else "gelu"):
        raise BackboneError(f"{file}: hidden_act {act!r} with {'a gated' if gated else 'a plain'} MLP is not "
                            f"what timm's DINOv3 runs ({'silu' if gated else 'gelu'}); not converted")
    dim = int(out["cls_token"].shape[-1])
    patch = int(out["patch_embed.proj.weight"].shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in out if k.startswith("blocks."))
    heads = int(config.get("num_attention_heads") or max(1, dim // 64))
    hidden = int(out["blocks.0.mlp.fc1_g.weight" if gated else "blocks.0.mlp.fc1.weight"].shape[0])
    image = config.get("image_size") or 224
    size = int(image[0] if isinstance(image, (list, tuple)) else image)
    arch = _DINOV3_ARCH.get((dim, gated), "vit_small_plus_patch16_dinov3_qkvb" if gated else
                            "vit_base_patch16_dinov3_qkvb")
    # global_pool "token": the CLS token is the image embedding, as in DINOv3 (timm's default is the mean)
    args: dict[str, Any] = {"embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": patch,
                            "mlp_ratio": _mlp_ratio(hidden, dim), "global_pool": "token",
                            "num_reg_tokens": int(out["reg_token"].shape[1]) if "reg_token" in out else 0}
    return Converted(out, arch, args, size, IMAGENET_MEAN, IMAGENET_STD, "hf-dinov3")


# -- OpenCLIP with a timm image tower (BiomedCLIP) ------------------------------------------
def _from_openclip_timm(state: dict[str, Any], config: dict[str, Any], file: Path) -> Converted:
    """`visual.trunk.*` is a timm model as it is; the projection head (`visual.head.*`) and
    the text tower are not image features and are left out."""
    vision = (config.get("model_cfg") or {}).get("vision_cfg") or {}
    arch = vision.get("timm_model_name")
    if not arch:
        raise BackboneError(f"{file}: an OpenCLIP checkpoint with a timm image tower (visual.trunk.*) needs its "
                            f"open_clip_config.json beside it (model_cfg.vision_cfg.timm_model_name); not found")
    out = {k[len("visual.trunk."):]: v for k, v in state.items() if k.startswith("visual.trunk.")}
    out = {k: v for k, v in out.items() if not k.startswith("head.")}  # a classifier, if the tower kept one
    pre = config.get("preprocess_cfg") or {}
    size = vision.get("image_size") or 224
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    mean = _triple(pre["mean"]) if pre.get("mean") else CLIP_MEAN
    std = _triple(pre["std"]) if pre.get("std") else CLIP_STD
    args: dict[str, Any] = {"img_size": size}
    if "pos_embed" in out and "patch_embed.proj.weight" in out:
        patch = int(out["patch_embed.proj.weight"].shape[-1])
        args["patch_size"] = patch
    return Converted(out, arch, args, size, mean, std, "openclip-timm")


def check_fits(model: Any, state: dict[str, Any], source: str, architecture: str = "") -> None:
    """Strict: every key of the model present with its shape, nothing left over (the model
    may live on the meta device: only names and shapes are compared)."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or k.split(".")[0] not in ("head", "fc", "classifier")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise BackboneError(f"{source}: the converted weights do not fit {architecture or type(model).__name__}: "
                            f"missing keys {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
                            f"unexpected keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise BackboneError(f"{source}: the converted weights do not fit {architecture or type(model).__name__} "
                            f"(other shapes): {bad[:4]}")
