"""Compact heads trained on cached backbone features: linear probe, attention pooling, tiny ViT.

Every head's `forward(cls [B,C], grid [B,C,h,w])` returns logits: K class logits for
classification, or K-1 cumulative logits (CORAL) for ordinal tasks, where
`sigmoid(logit_k) = P(y > k)`. The ordinal output layer is one shared linear score plus
K-1 biases kept ordered by construction, so P(y > k) is non-increasing in k.

Heads are plain `nn.Module`s of standard ops (no `nn.TransformerEncoderLayer`, whose fast
path breaks ONNX export), so `probabilities(head(cls, grid), task)` exports to ONNX.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .settings import HEAD_KINDS, TASKS  # declared once

KINDS = tuple(HEAD_KINDS)


@dataclass(frozen=True)
class HeadConfig:
    kind: str
    task: str
    num_classes: int
    feature_dim: int
    grid_hw: tuple[int, int]
    width: int = 192
    depth: int = 2
    num_heads: int = 4
    dropout: float = 0.1
    #: heads of this kind averaged (`EnsembleHead`); 1: one head (every card before members existed)
    members: int = 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grid_hw"] = [int(x) for x in self.grid_hw]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HeadConfig":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "grid_hw" in kwargs:
            kwargs["grid_hw"] = tuple(int(x) for x in kwargs["grid_hw"])
        return cls(**kwargs)


# -- output layers ---------------------------------------------------------------------


class _CoralOutput(nn.Module):
    """One shared score w·x plus K-1 ordered biases b_k = b_0 - cumsum(softplus(d))."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.score = nn.Linear(in_dim, 1, bias=False)
        self.bias0 = nn.Parameter(torch.zeros(1))
        # Start with biases spread around 0 (softplus(d) = 1).
        self.deltas = nn.Parameter(torch.full((max(num_classes - 2, 0),), math.log(math.e - 1)))
        with torch.no_grad():
            self.bias0.fill_((num_classes - 2) / 2.0)

    def biases(self) -> torch.Tensor:
        return torch.cat([self.bias0, self.bias0 - torch.cumsum(F.softplus(self.deltas), 0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x) + self.biases()

    def direction(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, in_dim]: the direction that raises the predicted level (the shared score)."""
        return self.score.weight[0].expand(logits.shape[0], -1)


class _ClassOutput(nn.Linear):
    def direction(self, logits: torch.Tensor) -> torch.Tensor:
        return self.weight[logits.argmax(dim=1)]


def _output(in_dim: int, config: HeadConfig) -> nn.Module:
    if config.task == "ordinal":
        return _CoralOutput(in_dim, config.num_classes)
    return _ClassOutput(in_dim, config.num_classes)


def _tokens(grid: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h*w, C]."""
    return grid.flatten(2).transpose(1, 2)


# -- heads -------------------------------------------------------------------------------


class LinearHead(nn.Module):
    """The linear probe: LayerNorm + Linear on the CLS / pooled embedding."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.feature_dim)
        self.out = _output(config.feature_dim, config)

    def forward(self, cls: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(cls))

    def attention(self, cls: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Token contributions along the predicted class direction: relu(LN(token)·w)."""
        logits = self.forward(cls, grid)
        direction = self.out.direction(logits)  # [B, C]
        tokens = self.norm(_tokens(grid))  # [B, hw, C]
        return F.relu(torch.einsum("btc,bc->bt", tokens, direction))


class _Attention(nn.Module):
    """Multi-head attention with explicit projections (ONNX-friendly)."""

    def __init__(self, width: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, x: torch.Tensor, need_weights: bool = False):
        q = self._split(self.q(query))
        k, v = self.kv(x).chunk(2, dim=-1)
        k, v = self._split(k), self._split(v)
        weights = None
        if need_weights:
            weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(out), weights


class AttentionPoolHead(nn.Module):
    """Tokens (grid + CLS) -> LayerNorm -> Linear to width -> learned-query attention pooling."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.in_norm = nn.LayerNorm(config.feature_dim)
        self.embed = nn.Linear(config.feature_dim, config.width)
        self.query = nn.Parameter(torch.zeros(1, 1, config.width))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.pool = _Attention(config.width, config.num_heads, 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.width)
        self.out = _output(config.width, config)

    def _run(self, cls: torch.Tensor, grid: torch.Tensor, need_weights: bool):
        tokens = torch.cat([_tokens(grid), cls.unsqueeze(1)], dim=1)  # [B, hw+1, C]
        x = self.embed(self.in_norm(tokens))
        query = self.query.expand(x.shape[0], -1, -1)
        pooled, weights = self.pool(query, x, need_weights)
        logits = self.out(self.drop(self.norm(pooled[:, 0])))
        return logits, weights

    def forward(self, cls: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.norm(self._pooled(cls, grid))))

    def _pooled(self, cls: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """The pooled vector [B, width] of `_run`, computed without embedding every token.

        With one learned query, the attention is linear in the tokens: each head's score of
        token j is q_h . (W_k,h (W_e n_j + b_e) + b_k,h), i.e. n_j . u_h plus a term the same for
        every j (which softmax drops), with n_j = in_norm(token j) and u_h = W_e^T W_k,h^T q_h;
        and the value it pools is W_v,h (W_e (sum_j a_jh n_j) + b_e) + b_v,h since the weights
        a_jh sum to 1. So the [B, hw+1, C] tokens meet a [C, heads] matrix and a weighted sum
        instead of three [C or width, width] projections: the same function (equal to float
        rounding, tests/test_heads.py), about 100x fewer operations on a 16 x 16 grid. The
        LayerNorm's affine is moved the same way (gamma into u, beta added after the mean), so
        no gradient flows through a [B, hw+1, C] tensor."""
        pool, heads, d, norm = self.pool, self.pool.num_heads, self.pool.head_dim, self.in_norm
        tokens = torch.cat([_tokens(grid), cls.unsqueeze(1)], dim=1)  # [B, n, C]
        normed = F.layer_norm(tokens, norm.normalized_shape, eps=norm.eps)  # no parameters: no gradient here
        q = pool.q(self.query.reshape(1, -1)).reshape(heads, d)  # [heads, d]
        w_k = pool.kv.weight[: heads * d].reshape(heads, d, -1)  # [heads, d, width]
        u = (q.unsqueeze(1) @ w_k).squeeze(1) @ self.embed.weight * norm.weight  # [heads, C]
        scores = (normed @ u.t()) / math.sqrt(d)  # [B, n, heads]
        weights = torch.softmax(scores, dim=1)
        mixed = (weights.transpose(1, 2) @ normed) * norm.weight + norm.bias  # [B, heads, C]: weighted mean token
        x = self.embed(mixed)  # [B, heads, width]
        w_v = pool.kv.weight[heads * d:].reshape(heads, d, -1)  # [heads, d, width]
        b_v = pool.kv.bias[heads * d:].reshape(heads, d)
        v = (w_v.unsqueeze(0) @ x.unsqueeze(-1)).squeeze(-1) + b_v  # [B, heads, d]
        return pool.proj(v.reshape(v.shape[0], heads * d))

    def attention(self, cls: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        _, weights = self._run(cls, grid, True)  # [B, heads, 1, hw+1]
        return weights[:, :, 0, :-1].mean(dim=1)


class _Block(nn.Module):
    def __init__(self, width: int, num_heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = _Attention(width, num_heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        h = self.norm1(x)
        a, weights = self.attn(h, h, need_weights)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, weights


class ViTHead(nn.Module):
    """A tiny pre-norm ViT over the token grid with its own CLS token and 2-D position embedding."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        h, w = config.grid_hw
        self.embed = nn.Linear(config.feature_dim, config.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, h * w, config.width))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(_Block(config.width, config.num_heads, config.dropout) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.out = _output(config.width, config)

    def _run(self, cls: torch.Tensor, grid: torch.Tensor, need_weights: bool):
        x = self.embed(_tokens(grid)) + self.pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        weights = None
        for i, block in enumerate(self.blocks):
            x, weights = block(x, need_weights and i == len(self.blocks) - 1)
        return self.out(self.norm(x[:, 0])), weights

    def forward(self, cls: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return self._run(cls, grid, False)[0]

    def attention(self, cls: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if not self.blocks:
            return torch.ones(grid.shape[0], grid.shape[2] * grid.shape[3], device=grid.device)
        _, weights = self._run(cls, grid, True)  # [B, heads, 1+hw, 1+hw]
        return weights[:, :, 0, 1:].mean(dim=1)


class EnsembleHead(nn.Module):
    """`config.members` heads of one kind whose probabilities are averaged: `forward` returns
    logits of the mean probabilities (classification: log of the mean softmax, so softmax
    gives the mean back; ordinal: logit of the mean P(y > k), still non-increasing in k), so
    everything that reads logits (probabilities, calibration, ONNX export) reads the ensemble
    as one head. `attention`: the members' maps averaged. Used for the K fold heads of a
    cross-validated configuration (`loff tune`'s final model, docs/validation.md)."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        from dataclasses import replace

        self.config = config
        one = replace(config, members=1)
        self.members = nn.ModuleList([build_head(one) for _ in range(config.members)])

    def forward(self, cls: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([m(cls, grid) for m in self.members])  # [M, B, K or K-1]
        if self.config.task == "ordinal":
            p = torch.sigmoid(logits).mean(dim=0).clamp(1e-7, 1 - 1e-7)
            return torch.log(p) - torch.log1p(-p)
        return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(len(self.members))

    def attention(self, cls: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        maps = [m.attention(cls, grid).float() for m in self.members]
        return torch.stack(maps).mean(dim=0)


def ensemble_state(states: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One EnsembleHead state dict from its members' state dicts."""
    return {f"members.{i}.{k}": v for i, state in enumerate(states) for k, v in state.items()}


def build_head(config: HeadConfig) -> nn.Module:
    if config.members > 1:
        return EnsembleHead(config)
    if config.kind not in KINDS:
        raise ValueError(f"unknown head kind {config.kind!r}; expected one of {', '.join(KINDS)}")
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; expected one of {', '.join(TASKS)}")
    if config.num_classes < 2:
        raise ValueError(f"a head needs at least two classes, got {config.num_classes}")
    if config.kind != "linear" and config.width % config.num_heads:
        raise ValueError(f"width {config.width} is not divisible by num_heads {config.num_heads}")
    return {"linear": LinearHead, "attention": AttentionPoolHead, "vit": ViTHead}[config.kind](config)


# -- probabilities and decoding ----------------------------------------------------------


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """[B, K] class probabilities (rows sum to 1). Exportable to ONNX (opset 18)."""
    if task != "ordinal":
        return torch.softmax(logits, dim=-1)
    cum = torch.sigmoid(logits)  # P(y > k), k = 0..K-2
    cols = [cum[:, :1]]
    for k in range(1, cum.shape[1]):  # cummin, unrolled (K is static)
        cols.append(torch.minimum(cols[-1], cum[:, k : k + 1]))
    first = 1.0 - cols[0]
    last = cols[-1]
    middle = [cols[k] - cols[k + 1] for k in range(len(cols) - 1)]
    probs = torch.cat([first, *middle, last], dim=1).clamp(min=0.0)
    return probs / probs.sum(dim=1, keepdim=True).clamp(min=1e-12)


def _as_numpy(probs: Any) -> np.ndarray:
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().double().numpy()
    return np.asarray(probs, dtype=np.float64)


def cumulative_from_probs(probs: Any) -> np.ndarray:
    """[N, K-1]: P(y > k) = sum of p_j for j > k."""
    p = _as_numpy(probs)
    return np.cumsum(p[:, ::-1], axis=1)[:, ::-1][:, 1:]


def predicted_class(probs: Any, task: str) -> np.ndarray:
    """Argmax for classification; CORAL decode (count of P(y > k) > 0.5) for ordinal."""
    p = _as_numpy(probs)
    if p.ndim == 1:
        p = p[None, :]
    if task == "ordinal":
        return (cumulative_from_probs(p) > 0.5).sum(axis=1).astype(np.int64)
    return p.argmax(axis=1).astype(np.int64)


def expected_level(probs: Any) -> np.ndarray:
    p = _as_numpy(probs)
    return p @ np.arange(p.shape[1], dtype=np.float64)


def attention_map(head: nn.Module, cls: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """[B, h, w] non-negative map, each image normalised to max 1 (all zeros stay zeros)."""
    b, _, h, w = grid.shape
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            weights = head.attention(cls, grid).float().clamp(min=0.0)
    finally:
        head.train(was_training)
    peak = weights.amax(dim=1, keepdim=True).clamp(min=1e-12)
    return (weights / peak).reshape(b, h, w)
