"""Tensor augmentations on cached frozen-backbone features (the "TA" of LOFF-TA).

Images are never re-encoded during training: the backbone's CLS embedding and token grid are
cached once, and these cheap augmentations act on the cached tensors instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .settings import AugmentConfig  # declared once, with defaults and help


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=generator)


def _sample_std(grid: torch.Tensor) -> torch.Tensor:
    """[B, 1, 1, 1]: each image's standard deviation over its grid (ddof 1; two passes, faster
    on a CPU than torch.std's one-pass Welford); |value| for a one-element grid."""
    b = grid.shape[0]
    flat = grid.reshape(b, -1)
    if flat.shape[1] <= 1:
        return grid.abs().clamp_min(1e-6)
    dev = flat - flat.mean(dim=1, keepdim=True)
    return (dev.square().sum(dim=1) / (flat.shape[1] - 1)).sqrt().view(b, 1, 1, 1)


class TensorAugment:
    """Applies an `AugmentConfig` to a batch; all randomness comes from `generator`.

    Random numbers are drawn on the CPU from the generator (so results do not depend on the
    device) and moved to the tensors' device.
    """

    def __init__(self, config: AugmentConfig, generator: torch.Generator, *, grid: bool = True):
        self.config = config
        self.generator = generator
        self.grid = grid  # False: the head never reads the grid (the linear probe): it is passed on as given


    def __call__(
        self, cls: torch.Tensor, grid: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config
        if not c.enabled or cls.shape[0] == 0:
            return cls, grid, targets
        g = self.generator
        dev = cls.device
        b, ch = cls.shape
        h, w = grid.shape[2:] if self.grid else (1, 1)  # no grid: none of its random numbers drawn

        if c.hflip > 0 and w > 1:
            flip = (_rand(g, b) < c.hflip).to(dev)
            if bool(flip.any()):
                grid = grid.clone()
                grid[flip] = grid[flip].flip(-1)

        if c.crop_prob > 0 and (h > 1 or w > 1):
            grid = self._crop(grid)

        if c.noise_std > 0:
            n_cls = torch.randn(cls.shape, generator=g).to(dev)
            std_cls = cls.std(dim=1, keepdim=True) if ch > 1 else cls.abs().clamp_min(1e-6)
            cls = cls + c.noise_std * std_cls.nan_to_num(0.0) * n_cls
            if self.grid:
                n_grid = torch.randn(grid.shape, generator=g).to(dev)
                grid = torch.addcmul(grid, n_grid, c.noise_std * _sample_std(grid).nan_to_num(0.0))

        if c.token_dropout > 0 and self.grid:
            keep = (_rand(g, b, 1, h, w) >= c.token_dropout).to(dev, grid.dtype)
            grid = grid * keep

        if c.mixup_alpha > 0 and c.mixup_prob > 0 and b > 1:
            do_mix = float(_rand(g, 1)) < c.mixup_prob
            # Draw the permutation and lambda always, so the stream does not depend on the branch.
            perm = torch.randperm(b, generator=g).to(dev)
            lam = self._beta(b)
            lam = lam.nan_to_num(0.5).to(dev, cls.dtype)
            if do_mix:
                lam_c = lam.view(b, 1)
                cls = lam_c * cls + (1 - lam_c) * cls[perm]
                if self.grid:
                    grid = lam.view(b, 1, 1, 1) * grid + (1 - lam.view(b, 1, 1, 1)) * grid[perm]
                targets = lam_c.to(targets.dtype) * targets + (1 - lam_c.to(targets.dtype)) * targets[perm]
        return cls, grid, targets

    def _beta(self, b: int) -> torch.Tensor:
        """Beta(a, a) samples by inverse CDF of generator uniforms (reproducible, device-free)."""
        from scipy.stats import beta

        u = _rand(self.generator, b).double().numpy()
        a = float(self.config.mixup_alpha)
        return torch.from_numpy(beta.ppf(u, a, a)).float()

    def _crop(self, grid: torch.Tensor) -> torch.Tensor:
        """Per-sample random resized crop via affine_grid + grid_sample (bilinear)."""
        c = self.config
        g = self.generator
        b, ch, h, w = grid.shape
        lo, hi = float(c.crop_scale[0]), float(c.crop_scale[1])
        apply = _rand(g, b) < c.crop_prob
        area = lo + (hi - lo) * _rand(g, b)
        log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * _rand(g, b)
        ratio = torch.exp(log_r)
        # Box size as fractions of the grid's width / height.
        fw = torch.sqrt(area * ratio).clamp(max=1.0)
        fh = torch.sqrt(area / ratio).clamp(max=1.0)
        if w == 1:
            fw = torch.ones_like(fw)
        if h == 1:
            fh = torch.ones_like(fh)
        cx = (1 - fw) * (2 * _rand(g, b) - 1)  # centre in normalised [-1, 1] coordinates
        cy = (1 - fh) * (2 * _rand(g, b) - 1)
        if not bool(apply.any()):
            return grid
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = fw
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = fh
        theta[:, 1, 2] = cy
        rows = apply.nonzero().flatten().to(grid.device)  # only the cropped images are resampled
        theta = theta[apply].to(grid.device, grid.dtype)
        sample = F.affine_grid(theta, [len(rows), ch, h, w], align_corners=False)
        out = grid.clone()
        out[rows] = F.grid_sample(grid[rows], sample, mode="bilinear", padding_mode="border", align_corners=False)
        return out
