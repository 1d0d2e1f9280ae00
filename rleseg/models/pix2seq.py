"""The Pix2Seq encoder-decoder that writes RLE tokens for an image or a clip (SPEC §7).

::

    images [B, C, H, W] ─► timm backbone ─► linear to d + LayerNorm ─► + 2-D sin-cos positions
        ─► transformer encoder ─► memory [B, S, d]
    tokens [B, L] ─► shared embedding + learned positions ─► causal decoder (self-attn, cross-attn to
        memory, MLP) ─► LayerNorm ─► tokens' embedding matrix (transposed) + bias ─► logits [B, L, V]

Clips ``[B, T, C, H, W]`` (``frames = T > 1``) go through the same backbone and encoder frame by frame
and are fused (``rleseg.models.video``). Static video needs nothing special: the LightningModule feeds
frame 0 to an image model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_  # erfinv-based: works under FakeTensorMode, unlike torch's
from torch import Tensor, nn

from rleseg.models.backbones import TimmBackbone, create_backbone
from rleseg.models.generation import GenerationOutput, KVCache, Strategy, generate_tokens
from rleseg.models.layers import (
    DecoderLayer,
    EncoderLayer,
    init_weights,
    sincos_at,
    sincos_position_embedding,
    step_linear,
)
from rleseg.models.video import FUSIONS, Fusion, SequentialFusionLayer
from rleseg.tokenizers.base import Grammar

__all__ = ["ModelConfigError", "Pix2Seq", "TokenDecoder", "VisualEncoder"]


class ModelConfigError(ValueError):
    """An inconsistent model configuration or an input of the wrong shape."""


class VisualEncoder(nn.Module):
    """Backbone → projection → positions → transformer encoder, for images or clips.

    Args:
        backbone: a single-map feature extractor (:func:`~rleseg.models.backbones.create_backbone`).
        d_model: token width.
        num_layers: encoder layers (for sequential video fusion the last one is the fusion layer).
        num_heads: attention heads.
        mlp_dim: MLP hidden width.
        dropout: dropout rate.
        frames: 1 for images, T for clips.
        fusion: ``"sequential"`` or ``"late"`` (clips only; see ``rleseg.models.video``).
    """

    def __init__(
        self,
        backbone: TimmBackbone,
        d_model: int,
        num_layers: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        *,
        frames: int = 1,
        fusion: Fusion = "sequential",
        fine_smooth: bool = False,
        cross_fine: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.cross_fine = cross_fine
        self.frames = frames
        self.fusion = fusion
        self.d_model = d_model
        self.proj = nn.Linear(backbone.out_channels, d_model)
        self.proj_norm = nn.LayerNorm(d_model)
        shared = num_layers - 1 if (frames > 1 and fusion == "sequential") else num_layers
        self.layers = nn.ModuleList(EncoderLayer(d_model, num_heads, mlp_dim, dropout) for _ in range(shared))
        self.fusion_layer = (
            SequentialFusionLayer(d_model, num_heads, mlp_dim, dropout, frames=frames)
            if frames > 1 and fusion == "sequential"
            else None
        )
        self.norm = nn.LayerNorm(d_model)
        # Fine memory (backbone with a fine_stride): the encoded map, upsampled, plus a projection of the
        # shallower backbone map, so the decoder reads visual tokens at the finer grid.
        self.fine_proj: nn.Linear | None = None
        if backbone.fine_stride is not None:
            if frames > 1:
                raise ModelConfigError(
                    "a finer visual memory (memory_stride) is for image models (frames = 1)"
                )
            self.fine_proj = nn.Linear(backbone.fine_channels, d_model)
            self.fine_norm = nn.LayerNorm(d_model)
        self.fine_smooth = (
            nn.Sequential(  # depthwise-separable: ~9d + d² multiply-adds per token instead of 9d²
                nn.Conv2d(d_model, d_model, 3, padding=1, groups=d_model, bias=False),
                nn.BatchNorm2d(d_model),
                nn.ReLU(inplace=True),
                nn.Conv2d(d_model, d_model, 1),
            )
            if fine_smooth and self.fine_proj is not None
            else None
        )

    @property
    def stride(self) -> int:
        """Reduction of the memory's (last) grid relative to the input (backbone stride or fine stride)."""
        return self.backbone.fine_stride or self.backbone.stride

    @property
    def cross_stride(self) -> int:
        """Reduction of the grid the decoder's cross-attention reads."""
        return self.stride if self.cross_fine else self.backbone.stride

    def cross_tokens(self, size: Sequence[int]) -> int | None:
        """How many leading memory tokens cross-attention reads for ``(H, W)`` inputs (None: all)."""
        if self.fine_proj is None or self.cross_fine:
            return None
        h, w = size[-2:]
        return (h // self.backbone.stride) * (w // self.backbone.stride)

    def _tokens(self, images: Tensor) -> tuple[Tensor, tuple[int, int], Tensor | None]:
        """Projected backbone tokens ``[N, h·w, d]``, their grid ``(h, w)`` and the finer map (or None)."""
        features, fine = self.backbone.features(images)  # [N, C, h, w], finer map or None
        h, w = features.shape[-2:]
        return self.proj_norm(self.proj(features.flatten(2).transpose(1, 2))), (h, w), fine

    def forward(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` (or ``[B, T, C, H, W]`` when ``frames > 1``) → memory ``[B, S, d]``.

        ``S = h·w`` for images and sequential fusion, ``T·h·w`` for late fusion; with a fine stride
        ``S`` is the size of the finer grid.
        """
        if self.frames == 1:
            x, (h, w), fine = self._tokens(images)
            x = x + sincos_position_embedding((h, w), self.d_model, device=x.device, dtype=x.dtype)
            for layer in self.layers:
                x = layer(x)
            x = coarse = self.norm(x)
            if fine is None or self.fine_proj is None:
                return x
            fh, fw = fine.shape[-2:]
            up = F.interpolate(
                x.transpose(1, 2).reshape(x.shape[0], -1, h, w),
                size=(fh, fw),
                mode="bilinear",
                align_corners=False,
            )
            x = up.flatten(2).transpose(1, 2) + self.fine_proj(fine.flatten(2).transpose(1, 2))
            if self.fine_smooth is not None:  # spatial context and a non-linearity on the fused map
                x = x + self.fine_smooth(x.transpose(1, 2).reshape(x.shape[0], -1, fh, fw)).flatten(
                    2
                ).transpose(1, 2)
            pos = sincos_position_embedding((fh, fw), self.d_model, device=x.device, dtype=x.dtype)
            fine_tokens = self.fine_norm(x + pos)
            if self.cross_fine:
                return fine_tokens
            # coarse tokens first (what cross-attention reads), then the fine grid (anchors, aux head)
            return torch.cat([coarse, fine_tokens], dim=1)

        b, t = images.shape[:2]
        x, (h, w), _ = self._tokens(images.flatten(0, 1))  # [B·T, S, d] (no fine map: images only)
        if self.fusion == "late":
            pos = sincos_position_embedding((t, h, w), self.d_model, device=x.device, dtype=x.dtype)
            x = x + pos.reshape(1, t, h * w, -1).expand(b, -1, -1, -1).flatten(0, 1)
        else:
            x = x + sincos_position_embedding((h, w), self.d_model, device=x.device, dtype=x.dtype)
        for layer in self.layers:
            x = layer(x)
        x = x.unflatten(0, (b, t))  # [B, T, S, d]
        if self.fusion_layer is not None:
            return self.norm(self.fusion_layer(x))
        return self.norm(x.flatten(1, 2))


class TokenDecoder(nn.Module):
    """Causal transformer decoder with cross-attention, learned positions and shared embeddings.

    The output projection is the transposed token embedding plus a bias (SPEC §7: input and output
    embeddings shared). Implements the :class:`~rleseg.models.generation.Decoder` interface.
    """

    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        anchor: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Parameter(torch.zeros(max_seq_len, d_model))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, num_heads, mlp_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.out_bias = nn.Parameter(torch.zeros(vocab_size))
        trunc_normal_(self.embed.weight, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)
        # Run anchoring (configure_anchor): start token -> index of the memory token under its cell.
        self.anchor_proj = nn.Linear(d_model, d_model) if anchor else None
        self.anchor_lo = -1
        self.register_buffer("anchor_index", torch.zeros(0, dtype=torch.long), persistent=False)
        # cross-attention reads the first `cross_tokens` memory tokens (None: all); Pix2Seq.encode sets it
        self.cross_tokens: int | None = None

    @property
    def anchored(self) -> bool:
        """Whether inputs carry the visual token of their run's start (anchor on and configured)."""
        return self.anchor_proj is not None and self.anchor_lo >= 0

    def configure_anchor(self, lo: int, memory_index: Tensor) -> None:
        """Tokens ``lo .. lo + len(memory_index)`` are run starts; start ``lo + i`` lies over memory token
        ``memory_index[i]``.

        With ``anchor`` on, every decoder input gets ``anchor_proj`` of the memory token under the latest
        start at or before it (nothing before the first start). The query that writes a run's length and
        class then holds the visual token of the run's place directly instead of having to find it by
        cross-attention: the run's 2-D position enters the decoder as what is seen there.
        """
        if self.anchor_proj is None:
            raise ValueError("this decoder was built without anchor=True")
        if lo < 0 or lo + len(memory_index) > self.vocab_size:
            raise ValueError(
                f"tokens {lo}..{lo + len(memory_index)} exceed the vocabulary ({self.vocab_size})"
            )
        self.anchor_lo = int(lo)
        self.anchor_index = memory_index.to(device=self.embed.weight.device, dtype=torch.long)

    def _start_cells(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Whether each token is a run start, and (clamped) the memory index under it."""
        cell = tokens - self.anchor_lo
        is_start = (cell >= 0) & (cell < len(self.anchor_index))
        return is_start, self.anchor_index[cell.clamp(0, len(self.anchor_index) - 1)]

    def _anchor_inputs(self, tokens: Tensor, memory: Tensor) -> Tensor:
        """``anchor_proj`` of the memory token under each position's latest start ``[B, L, d]`` (0 before)."""
        is_start, index = self._start_cells(tokens)
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        latest = torch.where(is_start, positions, -1).cummax(dim=1).values
        index = index.gather(1, latest.clamp_min(0))
        seen = memory.gather(1, index[..., None].expand(-1, -1, memory.shape[-1]))
        return self.anchor_proj(seen) * (latest >= 0)[..., None].to(memory.dtype)

    def _logits(self, x: Tensor) -> Tensor:
        return F.linear(self.norm(x), self.embed.weight, self.out_bias)

    @torch.no_grad()
    def init_position_tokens(self, lo: int, coords: Tensor) -> None:
        """Give tokens ``lo .. lo + len(coords)`` — tokens that name a place, like RLE starts — the sin-cos
        embedding of their place ``coords`` ``[n, k]`` (in the encoder's visual-token grid units), at the
        scale of the random initialisation.

        Learned from scratch, each of the H·W start tokens must discover its place alone; initialised
        this way, neighbouring starts begin close and the decoder's output layer shares the geometry of
        the visual tokens' positions (embeddings are tied, so the same vectors score the next start).
        """
        if lo < 0 or lo + len(coords) > self.vocab_size:
            raise ValueError(f"tokens {lo}..{lo + len(coords)} exceed the vocabulary ({self.vocab_size})")
        pos = sincos_at(coords.to(self.embed.weight.device), self.embed.weight.shape[1])
        self.embed.weight[lo : lo + len(coords)] = (pos * (0.02 / pos.std())).to(self.embed.weight.dtype)

    def forward(self, tokens: Tensor, memory: Tensor) -> Tensor:
        """Teacher-forced logits ``[B, L, V]``; position i predicts token i+1."""
        x = self.embed(tokens) + self.pos_embed[: tokens.shape[1]]
        if self.anchored:
            x = x + self._anchor_inputs(tokens, memory)
        x = self.dropout(x)
        context = self._context(memory)
        for layer in self.layers:
            x = layer(x, context)
        return self._logits(x)

    def _context(self, memory: Tensor) -> Tensor:
        return memory if self.cross_tokens is None else memory[:, : self.cross_tokens]

    def cross_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every layer's cross-attention keys/values of ``memory``: computed once per image.

        Anchored, one more pair follows the layers' (the projected memory the anchors are read from, and
        the current anchor of each row, which :meth:`step` updates)."""
        context = self._context(memory)
        cross = [layer.cross_attn.project_kv(context) for layer in self.layers]
        if self.anchored:
            cross.append((self.anchor_proj(memory), memory.new_zeros(memory.shape[0], memory.shape[-1])))
        return cross

    def step(self, tokens: Tensor, pos: int, cache: KVCache, cross: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Feed ``tokens`` ``[B]`` at position ``pos``; returns the next-token logits ``[B, V]``."""
        x = self.embed(tokens[:, None]) + self.pos_embed[pos]
        if self.anchored:
            projected, current = cross[-1]
            if pos == 0:
                current.zero_()
            is_start, index = self._start_cells(tokens)
            here = projected.gather(1, index[:, None, None].expand(-1, 1, projected.shape[-1]))[:, 0]
            current.copy_(torch.where(is_start[:, None], here, current))
            x = x + current[:, None]
            cross = cross[:-1]
        for layer, k_cache, v_cache, (ck, cv) in zip(
            self.layers, cache.keys, cache.values, cross, strict=True
        ):
            x = layer.step(x, pos, k_cache, v_cache, ck, cv)
        return step_linear(self.norm(x[:, 0]), self.embed.weight, self.out_bias)


class Pix2Seq(nn.Module):
    """Image (or clip) to RLE-token sequence model: a timm backbone, a transformer encoder and decoder.

    Args:
        vocab_size: the tokenizer's ``vocab_size``.
        max_seq_len: the longest sequence (prompt + content + EOS) the decoder has positions for.
        backbone: any timm model name.
        pretrained: download timm's pretrained backbone weights (needs network).
        weights_path: local backbone weights (see ``rleseg.models.backbones.load_backbone_weights``).
        in_chans: input channels.
        feature_stride: reduction of the backbone map the encoder reads (input 64 / stride 8 = 8×8 tokens).
        deep_stride: also run the backbone's deeper stages down to this reduction and add them, projected
            and upsampled, to that map (see :func:`~rleseg.models.backbones.create_backbone`); ``None``:
            the backbone stops at ``feature_stride``.
        memory_stride: the reduction of the visual memory the decoder reads (``None``: ``feature_stride``).
            Smaller than ``feature_stride`` (e.g. 4 beside 8): the encoder still runs at
            ``feature_stride``; its output is upsampled to the ``memory_stride`` grid and added to a
            projection of the backbone's map at that reduction (images only). The memory then matches a
            finer token grid (64×64 input, s = 4: 16×16) at the cost of cross-attention over 4× the tokens.
        fine_smooth: with a finer ``memory_stride``, add to the fused map a depthwise 3×3 convolution +
            BatchNorm + ReLU + 1×1 convolution of it (like an FPN head's smoothing step: spatial context and
            a non-linearity at the fine grid, ~d² + 9d multiply-adds per memory token).
        cross_memory: with a finer ``memory_stride``: ``"fine"`` — cross-attention reads the fine grid;
            ``"coarse"`` — it reads the encoder's ``feature_stride`` tokens (4× fewer keys and values to
            project: most of the fine memory's cost), and the fine grid only feeds the anchors and the
            training-only dense head. The memory is then both, coarse tokens first.
        anchor: add to each decoder input the (projected) visual token under the cell of the latest run
            start, so the query that writes a run's length and class sees its place (see
            :meth:`TokenDecoder.configure_anchor`; the tokenizer's start field must be set there).
        d_model: token width (divisible by ``num_heads``, even).
        encoder_layers: transformer encoder layers (≥ 1).
        decoder_layers: transformer decoder layers (≥ 1).
        num_heads: attention heads.
        mlp_dim: MLP hidden width.
        dropout: dropout rate in the transformer.
        frames: 1 for images, T > 1 for clips ``[B, T, C, H, W]``.
        fusion: how clip frames are fused: ``"sequential"`` or ``"late"``.
        backbone_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``{"channels": (32, 64,
            128, 256)}`` for a slimmer timm ResNet).

    Sizes (``Pix2Seq.size_presets``, use with :meth:`from_preset`):

    * ``"tiny"`` — CPU quickstart (64×64 inputs, ~1.5 M parameters): ``resnet10t`` at stride 8,
      d 128, 2 + 2 layers, 4 heads, MLP 512.
    * ``"small"`` — a stronger CPU / small-GPU model: ``resnet18`` at stride 16, d 192, 3 + 3 layers.
    * ``"paper"`` — the reference (SPEC §7): ``resnet50`` at stride 32, d 256, 6 + 6 layers, 8 heads,
      MLP 1024 (for 640×640 inputs on a GPU).

    >>> model = Pix2Seq.from_preset("tiny", vocab_size=64, max_seq_len=32)
    >>> images, tokens = torch.zeros(2, 3, 64, 64), torch.zeros(2, 10, dtype=torch.long)
    >>> model(images, tokens).shape
    torch.Size([2, 10, 64])
    >>> out = model.generate(images, prompt=2, max_len=8)
    >>> out.tokens.shape, int(out.tokens[0, 0])
    (torch.Size([2, 8]), 2)
    """

    size_presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(
            backbone="resnet10t",
            feature_stride=8,
            d_model=128,
            encoder_layers=2,
            decoder_layers=2,
            num_heads=4,
            mlp_dim=512,
        ),
        "small": dict(
            backbone="resnet18",
            feature_stride=16,
            d_model=192,
            encoder_layers=3,
            decoder_layers=3,
            num_heads=6,
            mlp_dim=768,
        ),
        "paper": dict(
            backbone="resnet50",
            feature_stride=32,
            d_model=256,
            encoder_layers=6,
            decoder_layers=6,
            num_heads=8,
            mlp_dim=1024,
        ),
    }

    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int,
        backbone: str = "resnet18",
        pretrained: bool = False,
        weights_path: str | Path | None = None,
        in_chans: int = 3,
        feature_stride: int = 16,
        deep_stride: int | None = None,
        memory_stride: int | None = None,
        d_model: int = 256,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        num_heads: int = 8,
        mlp_dim: int = 1024,
        dropout: float = 0.1,
        frames: int = 1,
        fusion: Fusion = "sequential",
        backbone_kwargs: dict[str, Any] | None = None,
        anchor: bool = False,
        fine_smooth: bool = False,
        cross_memory: str = "fine",
    ) -> None:
        super().__init__()
        if cross_memory not in ("fine", "coarse"):
            raise ModelConfigError(f"cross_memory must be 'fine' or 'coarse'; got {cross_memory!r}")
        if vocab_size < 2:
            raise ModelConfigError(f"vocab_size must be >= 2 (PAD and EOS); got {vocab_size}")
        if max_seq_len < 2:
            raise ModelConfigError(f"max_seq_len must be >= 2 (prompt and EOS); got {max_seq_len}")
        if d_model % num_heads or d_model % 2:
            raise ModelConfigError(f"d_model={d_model} must be even and divisible by num_heads={num_heads}")
        if encoder_layers < 1 or decoder_layers < 1:
            raise ModelConfigError(
                f"encoder_layers and decoder_layers must be >= 1; got {encoder_layers}, {decoder_layers}"
            )
        if frames < 1:
            raise ModelConfigError(f"frames must be >= 1; got {frames}")
        if fusion not in FUSIONS:
            raise ModelConfigError(f"fusion must be one of {FUSIONS}; got {fusion!r}")
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.in_chans = in_chans
        self.frames = frames
        self.fusion = fusion
        bb = create_backbone(
            backbone,
            pretrained=pretrained,
            weights_path=weights_path,
            in_chans=in_chans,
            feature_stride=feature_stride,
            deep_stride=deep_stride,
            fine_stride=memory_stride if memory_stride not in (None, feature_stride) else None,
            **(backbone_kwargs or {}),
        )
        self.encoder = VisualEncoder(
            bb,
            d_model,
            encoder_layers,
            num_heads,
            mlp_dim,
            dropout,
            frames=frames,
            fusion=fusion,
            fine_smooth=fine_smooth,
            cross_fine=cross_memory == "fine",
        )
        self.decoder = TokenDecoder(
            vocab_size, max_seq_len, d_model, decoder_layers, num_heads, mlp_dim, dropout, anchor=anchor
        )
        init_weights(self.encoder.proj)
        if self.encoder.fine_proj is not None:
            init_weights(self.encoder.fine_proj)
        for module in (
            *self.encoder.layers,
            self.encoder.fusion_layer,
            *self.decoder.layers,
            self.decoder.anchor_proj,
        ):
            if module is not None:
                init_weights(module)

    @classmethod
    def from_preset(cls, preset: str, vocab_size: int, max_seq_len: int, **overrides: Any) -> Pix2Seq:
        """A model of a named size (``size_presets``), with any argument overridden."""
        if preset not in cls.size_presets:
            raise ModelConfigError(f"unknown size preset {preset!r}; presets are {sorted(cls.size_presets)}")
        return cls(vocab_size, max_seq_len, **{**cls.size_presets[preset], **overrides})

    @property
    def backbone(self) -> TimmBackbone:
        return self.encoder.backbone

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _check_images(self, images: Tensor) -> Tensor:
        if self.frames == 1:
            if images.ndim == 5 and images.shape[1] == 1:
                images = images[:, 0]
            if images.ndim != 4:
                raise ModelConfigError(f"an image model takes [B, C, H, W]; got shape {tuple(images.shape)}")
        elif images.ndim != 5 or images.shape[1] != self.frames:
            raise ModelConfigError(
                f"a {self.frames}-frame video model takes [B, {self.frames}, C, H, W]; "
                f"got shape {tuple(images.shape)}"
            )
        if images.shape[-3] != self.in_chans:
            raise ModelConfigError(
                f"the model takes {self.in_chans} input channels; got shape {tuple(images.shape)}"
            )
        return images

    def encode(self, images: Tensor) -> Tensor:
        """Visual tokens ``[B, S, d]`` of images ``[B, C, H, W]`` or clips ``[B, T, C, H, W]``.

        With ``cross_memory="coarse"`` the decoder is told here how many of them cross-attention reads.
        """
        images = self._check_images(images)
        self.decoder.cross_tokens = self.encoder.cross_tokens(images.shape[-2:])
        return self.encoder(images)

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced logits ``[B, L, vocab_size]`` of ``tokens`` ``[B, L]``.

        Causal: the logits at position i predict token i+1 (the caller shifts the targets).
        """
        if tokens.ndim != 2 or tokens.shape[1] > self.max_seq_len:
            raise ModelConfigError(
                f"tokens must be [B, L] with L <= max_seq_len={self.max_seq_len}; "
                f"got shape {tuple(tokens.shape)}"
            )
        return self.decoder(tokens, self.encode(images))

    def generate(
        self,
        images: Tensor,
        prompt: int | Tensor,
        max_len: int | None = None,
        *,
        strategy: Strategy = "greedy",
        top_p: float = 0.4,
        temperature: float = 1.0,
        grammar: Grammar | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> GenerationOutput:
        """Batched autoregressive generation (see :func:`rleseg.models.generation.generate_tokens`).

        The encoder runs once; cross-attention keys/values are computed once per image; self-attention
        uses a preallocated KV cache. The model is switched to eval mode for the call (dropout off) and
        restored afterwards.

        Args:
            images: ``[B, C, H, W]`` or ``[B, T, C, H, W]``.
            prompt: the task-prompt token (``rleseg.tokenizers.base.PROMPTS[task]``), or one per row.
            max_len: output length including the prompt (default ``max_seq_len``).
            strategy: ``"greedy"`` or ``"top_p"``.
            top_p: nucleus mass (the reference samples with 0.4).
            temperature: softmax temperature.
            grammar: ``tokenizer.grammar`` for constrained decoding (always-valid sequences).
            use_cache: False runs the uncached reference path (slow; for tests and benchmarks).
            generator: random generator for sampling.

        Returns:
            :class:`~rleseg.models.generation.GenerationOutput` (``tokens``, ``probs``, ``steps``).
        """
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                memory = self.encode(images)
                return generate_tokens(
                    self.decoder,
                    memory,
                    prompt,
                    max_len,
                    strategy=strategy,
                    top_p=top_p,
                    temperature=temperature,
                    grammar=grammar,
                    use_cache=use_cache,
                    generator=generator,
                )
        finally:
            self.train(was_training)
