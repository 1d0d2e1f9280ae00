"""Fusing the frames of a clip into one set of visual tokens (SPEC §7, video encoder).

Every frame goes through the same backbone and encoder layers (weights shared over time). Two ways
to combine them, chosen by ``Pix2Seq(frames=T, fusion=...)``:

* ``"sequential"``: the last encoder layer is a :class:`SequentialFusionLayer`: ``x`` = frame-0 tokens
  (after self-attention); for ``t = 1 .. T-1``: ``x += CrossAttn_t(x, frame t)``; then the MLP. The
  decoder sees ``S`` tokens, as for an image. Each frame has its own cross-attention weights, which is
  what tells the model which frame a feature came from (TAC/LTAC classes are frame-specific).
* ``"late"``: frame tokens get 3-D sin-cos positions ``(t, y, x)`` before the shared encoder, and all
  frames' tokens are concatenated (``T·S`` tokens); the decoder's cross-attention does the fusion.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from rleseg.models.layers import MLP, Attention

__all__ = ["FUSIONS", "Fusion", "SequentialFusionLayer"]

Fusion = Literal["sequential", "late"]
FUSIONS: tuple[str, ...] = ("sequential", "late")


class SequentialFusionLayer(nn.Module):
    """The last encoder layer of a sequential-fusion video encoder.

    Args:
        d_model: token width.
        num_heads: attention heads.
        mlp_dim: MLP hidden width.
        dropout: dropout on attention weights and residual branches.
        frames: T, the number of frames it fuses (one cross-attention per frame after the first).

    >>> import torch
    >>> layer = SequentialFusionLayer(32, 4, 64, frames=3)
    >>> layer(torch.zeros(2, 3, 10, 32)).shape
    torch.Size([2, 10, 32])
    """

    def __init__(
        self, d_model: int, num_heads: int, mlp_dim: int, dropout: float = 0.0, *, frames: int
    ) -> None:
        super().__init__()
        if frames < 2:
            raise ValueError(f"sequential fusion needs frames >= 2; got {frames}")
        self.frames = frames
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, num_heads, dropout)
        self.norm_query = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(frames - 1))
        self.norm_frame = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(frames - 1))
        self.cross_attn = nn.ModuleList(Attention(d_model, num_heads, dropout) for _ in range(frames - 1))
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, frames: Tensor) -> Tensor:
        """``[B, T, S, d]`` per-frame tokens -> ``[B, S, d]`` fused tokens (anchored on frame 0)."""
        if frames.shape[1] != self.frames:
            raise ValueError(f"this fusion layer was built for {self.frames} frames; got {frames.shape[1]}")
        x = frames[:, 0]
        x = x + self.dropout(self.self_attn(self.norm_self(x)))
        for t in range(1, self.frames):
            i = t - 1
            x = x + self.dropout(self.cross_attn[i](self.norm_query[i](x), self.norm_frame[i](frames[:, t])))
        return x + self.mlp(self.norm_mlp(x))
