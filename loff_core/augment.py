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


class TensorAugment:
    """Applies an `AugmentConfig` to a batch; all randomness comes from `generator`.

    Random numbers are drawn on the CPU from the generator (so results do not depend on the
    device) and moved to the tensors' device.
    """

    def __init__(self, config: AugmentConfig, generator: torch.Generator):
        self.config = config
        self.generator = generator

    def __call__(
        self, cls: torch.Tensor, grid: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config
        if not c.enabled or cls.shape[0] == 0:
            return cls, grid, targets
        g = self.generator
        dev = grid.device
        b, ch, h, w = grid.shape

        if c.hflip > 0 and w > 1:
            flip = (_rand(g, b) < c.hflip).to(dev)
            grid = torch.where(flip.view(b, 1, 1, 1), grid.flip(-1), grid)

        if c.crop_prob > 0 and (h > 1 or w > 1):
            grid = self._crop(grid)

        if c.noise_std > 0:
            n_cls = torch.randn(cls.shape, generator=g).to(dev)
            n_grid = torch.randn(grid.shape, generator=g).to(dev)
            std_cls = cls.std(dim=1, keepdim=True) if ch > 1 else cls.abs().clamp_min(1e-6)
            std_grid = grid.reshape(b, -1).std(dim=1).view(b, 1, 1, 1) if grid[0].numel() > 1 \
                else grid.abs().clamp_min(1e-6)
            cls = cls + c.noise_std * std_cls.nan_to_num(0.0) * n_cls
            grid = grid + c.noise_std * std_grid.nan_to_num(0.0) * n_grid

        if c.token_dropout > 0:
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
        ident = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        theta = torch.where(apply.view(b, 1, 1), theta, ident)
        theta = theta.to(grid.device, grid.dtype)
        sample = F.affine_grid(theta, [b, ch, h, w], align_corners=False)
        cropped = F.grid_sample(grid, sample, mode="bilinear", padding_mode="border", align_corners=False)
        return torch.where(apply.to(grid.device).view(b, 1, 1, 1), cropped, grid)
