"""Transformer building blocks shared by the encoder, the decoder and the video fusion.

Every attention goes through :func:`torch.nn.functional.scaled_dot_product_attention`, so the fused
kernels (flash / memory-efficient) are used where the device has them, and the model stays traceable
under ``FakeTensorMode`` (the memory estimator runs it there). Blocks are pre-norm (LayerNorm before
each sub-layer, residual around it), which trains stably from scratch without warm-up tricks; the
stacks that use them end with a final LayerNorm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_  # erfinv-based: works under FakeTensorMode, unlike torch's
from torch import Tensor, nn

__all__ = [
    "Attention",
    "DecoderLayer",
    "EncoderLayer",
    "MLP",
    "grid_points",
    "init_weights",
    "sincos_at",
    "sincos_position_embedding",
]


def sincos_position_embedding(
    sizes: Sequence[int],
    dim: int,
    *,
    temperature: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Fixed sine-cosine positions for a grid of any rank (2-D for images, 3-D for clips).

    The channels are split between the axes (each axis gets an even share, the last axis takes the
    remainder); within an axis half the channels are sines and half cosines of geometrically spaced
    frequencies, as in MAE / Pix2Seq. The grid is flattened row-major (first axis slowest), matching
    ``features.flatten(2)`` of a ``[B, C, *sizes]`` feature map.

    Args:
        sizes: grid size per axis, e.g. ``(h, w)`` or ``(t, h, w)``.
        dim: embedding width; must be even and at least ``2 * len(sizes)``.
        temperature: the longest wavelength.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        ``[prod(sizes), dim]`` positions.

    >>> sincos_position_embedding((2, 3), 8).shape
    torch.Size([6, 8])
    """
    if dim % 2 or dim < 2 * len(sizes):
        raise ValueError(f"sin-cos positions need an even dim >= {2 * len(sizes)}; got dim={dim}")
    return sincos_at(grid_points(sizes, device=device), dim, temperature=temperature).to(dtype)


def grid_points(sizes: Sequence[int], *, device: torch.device | str | None = None) -> Tensor:
    """The integer points of a grid as float ``[prod(sizes), len(sizes)]``, row-major (first axis slowest).

    >>> grid_points((2, 2)).tolist()
    [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    """
    grids = torch.meshgrid(
        *[torch.arange(n, device=device, dtype=torch.float32) for n in sizes], indexing="ij"
    )
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def sincos_at(coords: Tensor, dim: int, *, temperature: float = 10000.0) -> Tensor:
    """Sine-cosine embedding of real-valued points ``[n, k]`` (the channel split of
    :func:`sincos_position_embedding`, which calls it on integer grid points).

    >>> grid = sincos_position_embedding((2, 3), 8)
    >>> torch.allclose(sincos_at(torch.tensor([[1.0, 2.0]]), 8), grid[5:6])
    True
    """
    axes = coords.shape[1]
    if dim % 2 or dim < 2 * axes:
        raise ValueError(f"sin-cos positions need an even dim >= {2 * axes}; got dim={dim}")
    per_axis = (dim // (2 * axes)) * 2
    widths = [per_axis] * (axes - 1) + [dim - per_axis * (axes - 1)]
    parts = []
    for axis, width in enumerate(widths):
        half = width // 2
        omega = 1.0 / temperature ** (
            torch.arange(half, device=coords.device, dtype=torch.float32) / max(half, 1)
        )
        angles = coords[:, axis : axis + 1].float() * omega.reshape(1, -1)
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1)


STEP_ROWS = (2, 32)
"""Row counts for which :func:`step_linear` multiplies in the weight-major orientation on the CPU."""


def step_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` for the few rows of one generation step (``x`` ``[..., d_in]``).

    With 2-32 rows on the CPU the product is taken as ``(W @ xᵀ)ᵀ``: CPU BLAS streams a weight matrix
    that is out of cache 1.3-5.7x faster that way than in ``F.linear``'s ``x @ Wᵀ`` (measured for the
    shapes of ``benchmarks/bench_generation.py``; a decoder's weights do not stay in cache from one step
    to the next). Elsewhere (GPU, one row, many rows, mixed dtypes) it is ``F.linear``. Both are the same
    product; only the summation order may differ in the last bits.
    """
    rows = x.numel() // max(x.shape[-1], 1)
    if x.device.type != "cpu" or not STEP_ROWS[0] <= rows <= STEP_ROWS[1] or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1]).T
    out = weight @ flat if bias is None else torch.addmm(bias[:, None], weight, flat)
    return out.T.contiguous().reshape(*x.shape[:-1], weight.shape[0])


def _project(layer: nn.Linear, x: Tensor, step: bool) -> Tensor:
    return step_linear(x, layer.weight, layer.bias) if step else layer(x)


class MLP(nn.Module):
    """Linear → GELU → dropout → linear → dropout."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))

    def step(self, x: Tensor) -> Tensor:
        """:meth:`forward` for the few rows of one generation step (see :func:`step_linear`)."""
        hidden = self.dropout(F.gelu(_project(self.fc1, x, step=True)))
        return self.dropout(_project(self.fc2, hidden, step=True))


class Attention(nn.Module):
    """Multi-head attention on ``scaled_dot_product_attention`` with separate query / key-value inputs.

    Keys and values can be projected once (:meth:`project_kv`) and reused: the decoder's
    cross-attention does this once per image during generation, and the self-attention writes them
    into a preallocated cache (:meth:`forward_cached`).

    >>> attn = Attention(16, 4)
    >>> attn(torch.zeros(2, 5, 16), causal=True).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _heads(self, x: Tensor) -> Tensor:
        # [B, L, d] -> [B, heads, L, head_dim]
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``[B, heads, S, head_dim]`` of ``context`` ``[B, S, d]``."""
        return self._heads(self.k_proj(context)), self._heads(self.v_proj(context))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, step: bool = False) -> Tensor:
        """Attention of queries from ``x`` ``[B, L, d]`` over given keys/values; returns ``[B, L, d]``.

        ``step=True``: ``x`` is one generation step's few rows (projections by :func:`step_linear`).
        """
        q = self._heads(_project(self.q_proj, x, step))
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )
        return _project(self.out_proj, out.transpose(1, 2).flatten(2), step)

    def forward(self, x: Tensor, context: Tensor | None = None, *, causal: bool = False) -> Tensor:
        """Self-attention (``context=None``) or cross-attention of ``x`` over ``context``."""
        k, v = self.project_kv(x if context is None else context)
        return self.attend(x, k, v, causal=causal)

    def forward_cached(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, pos: int) -> Tensor:
        """Self-attention of one new position ``x`` ``[B, 1, d]`` at index ``pos``.

        Its key and value are written in place into ``k_cache`` / ``v_cache``
        (``[B, heads, max_len, head_dim]``), and the query attends over positions ``0..pos``. No mask
        is needed: everything in the cache up to ``pos`` is in the past.
        """
        k_cache[:, :, pos : pos + 1] = self._heads(_project(self.k_proj, x, step=True))
        v_cache[:, :, pos : pos + 1] = self._heads(_project(self.v_proj, x, step=True))
        return self.attend(x, k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1], step=True)


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer: self-attention, then MLP."""

    def __init__(self, d_model: int, num_heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, num_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: causal self-attention, cross-attention to the visual tokens, MLP."""

    def __init__(self, d_model: int, num_heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, num_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = Attention(d_model, num_heads, dropout)
        self.norm3 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        """Teacher-forced pass over a whole sequence ``x`` ``[B, L, d]``."""
        x = x + self.dropout(self.self_attn(self.norm1(x), causal=True))
        x = x + self.dropout(self.cross_attn(self.norm2(x), memory))
        return x + self.mlp(self.norm3(x))

    def step(
        self, x: Tensor, pos: int, k_cache: Tensor, v_cache: Tensor, cross_k: Tensor, cross_v: Tensor
    ) -> Tensor:
        """One generation step for ``x`` ``[B, 1, d]`` at ``pos`` (see ``Attention.forward_cached``)."""
        x = x + self.dropout(self.self_attn.forward_cached(self.norm1(x), k_cache, v_cache, pos))
        x = x + self.dropout(self.cross_attn.attend(self.norm2(x), cross_k, cross_v, step=True))
        return x + self.mlp.step(self.norm3(x))


def init_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights, zero biases, unit LayerNorms (ViT / Pix2Seq style)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
