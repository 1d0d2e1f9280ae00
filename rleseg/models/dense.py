"""The dense baseline: per-pixel classification on the same timm backbone as the token model.

The paper's claim is that the token model is competitive with dense models; this is the dense model
it is compared with, trained with pixel cross-entropy on the same data, metrics and budget. The head
is a light FPN: a 1×1 lateral projection of every backbone level up to ``feature_stride``, a top-down
pathway (upsample + add + 3×3 conv), and a 1×1 classifier whose logits are upsampled bilinearly to
the input size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from rleseg.models.backbones import create_feature_pyramid

__all__ = ["DenseSegmenter"]


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class DenseSegmenter(nn.Module):
    """A timm backbone with a small FPN head: images → per-pixel class logits.

    Args:
        num_classes: N, background included.
        backbone: any timm model name.
        pretrained: download timm's pretrained weights (needs network).
        weights_path: local backbone weights.
        in_chans: input channels.
        feature_stride: the deepest backbone reduction the head uses.
        decoder_channels: width of the FPN head.
        frames: 1 for images ``[B, C, H, W]``; T for clips ``[B, T, C, H, W]``, segmented frame by frame.
        backbone_kwargs: extra keyword arguments for ``timm.create_model``.

    >>> import torch
    >>> model = DenseSegmenter(num_classes=4, backbone="resnet10t")
    >>> model(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 4, 64, 64])
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        pretrained: bool = False,
        weights_path: str | Path | None = None,
        in_chans: int = 3,
        feature_stride: int = 8,
        decoder_channels: int = 64,
        frames: int = 1,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background included); got {num_classes}")
        if frames < 1:
            raise ValueError(f"frames must be >= 1; got {frames}")
        self.num_classes = num_classes
        self.frames = frames
        self.in_chans = in_chans
        self.backbone = create_feature_pyramid(
            backbone,
            pretrained=pretrained,
            weights_path=weights_path,
            in_chans=in_chans,
            max_stride=feature_stride,
            **(backbone_kwargs or {}),
        )
        self.lateral = nn.ModuleList(nn.Conv2d(c, decoder_channels, 1) for c in self.backbone.out_channels)
        self.smooth = nn.ModuleList(
            _conv_bn_relu(decoder_channels, decoder_channels, 3) for _ in self.backbone.out_channels
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _segment(self, images: Tensor) -> Tensor:
        features = self.backbone(images)
        x = self.smooth[-1](self.lateral[-1](features[-1]))
        for i in range(len(features) - 2, -1, -1):
            up = F.interpolate(x, size=features[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.smooth[i](self.lateral[i](features[i]) + up)
        return F.interpolate(self.classifier(x), size=images.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, N, H, W]`` for images, ``[B, T, N, H, W]`` for clips ``[B, T, C, H, W]``."""
        if images.ndim == 4 and self.frames == 1:
            return self._segment(images)
        if images.ndim == 5:
            b, t = images.shape[:2]
            return self._segment(images.flatten(0, 1)).unflatten(0, (b, t))
        raise ValueError(
            f"DenseSegmenter takes [B, C, H, W] or [B, T, C, H, W]; got shape {tuple(images.shape)}"
        )
