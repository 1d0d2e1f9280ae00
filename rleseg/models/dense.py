"""The dense baseline: per-pixel classification on the same timm backbone as the token model.

The paper's claim is that the token model is competitive with dense models; this is the dense model
it is compared with, trained with pixel cross-entropy on the same data, metrics and budget. The head
is a light FPN: a 1×1 lateral projection of every backbone level up to ``feature_stride``, a top-down
pathway (upsample + add + 3×3 conv), and a 1×1 classifier whose logits are upsampled bilinearly to
the input size.

:func:`build_dense_model` builds it (``arch="fpn"``) or, with the optional
``segmentation-models-pytorch`` (``pip install 'rleseg[smp]'``), any smp architecture — Unet,
UnetPlusPlus, DeepLabV3Plus, ... — on the same timm backbone (smp's ``tu-<timm name>`` encoders):
:class:`SmpDenseSegmenter`, with the same call interface and output.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from rleseg.models.backbones import (
    _check_name,
    create_feature_pyramid,
    hub_offline_variables,
    load_backbone_weights,
)
from rleseg.models.pix2seq import ModelConfigError

__all__ = ["SMP_ARCHS", "DenseSegmenter", "SmpDenseSegmenter", "build_dense_model", "dense_archs"]

log = logging.getLogger(__name__)


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _FrameSegmenter(nn.Module):
    """What both dense models share: ``_segment`` maps images ``[B, C, H, W]`` to logits at their size;
    clips are segmented frame by frame."""

    frames: int

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _segment(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, N, H, W]`` for images, ``[B, T, N, H, W]`` for clips ``[B, T, C, H, W]``."""
        if images.ndim == 4 and self.frames == 1:
            return self._segment(images)
        if images.ndim == 5:
            b, t = images.shape[:2]
            return self._segment(images.flatten(0, 1)).unflatten(0, (b, t))
        raise ValueError(
            f"{type(self).__name__} takes [B, C, H, W] or [B, T, C, H, W]; got shape {tuple(images.shape)}"
        )


class DenseSegmenter(_FrameSegmenter):
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

    def _segment(self, images: Tensor) -> Tensor:
        features = self.backbone(images)
        x = self.smooth[-1](self.lateral[-1](features[-1]))
        for i in range(len(features) - 2, -1, -1):
            up = F.interpolate(x, size=features[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.smooth[i](self.lateral[i](features[i]) + up)
        return F.interpolate(self.classifier(x), size=images.shape[-2:], mode="bilinear", align_corners=False)


# The architectures of segmentation-models-pytorch 0.6 (``smp.MODEL_ARCHITECTURES_MAPPING``); with smp
# installed its own mapping is authoritative, this list only names them when it is not.
SMP_ARCHS = (
    "unet",
    "unetplusplus",
    "manet",
    "linknet",
    "fpn",
    "pspnet",
    "deeplabv3",
    "deeplabv3plus",
    "pan",
    "upernet",
    "segformer",
    "dpt",
)
_SMP_PREFIXES = ("smp_", "smp-", "smp.")
# how ``decoder_channels`` (the head's width) reaches each architecture; "*" marks a per-stage sequence
_SMP_WIDTH_ARGS: dict[str, tuple[str, ...]] = {
    "unet": ("decoder_channels*",),
    "unetplusplus": ("decoder_channels*",),
    "manet": ("decoder_channels*",),
    "linknet": (),  # its decoder widths follow the encoder's
    "fpn": ("decoder_pyramid_channels", "decoder_segmentation_channels"),
    "pspnet": ("psp_out_channels",),
    "deeplabv3": ("decoder_channels",),
    "deeplabv3plus": ("decoder_channels",),
    "pan": ("decoder_channels",),
    "upernet": ("decoder_channels",),
    "segformer": ("decoder_segmentation_channels",),
    "dpt": ("decoder_fusion_channels",),
}
# smp's defaults for the per-stage decoders, deepest stage first (taken ``[:encoder_depth]``)
_SMP_STAGE_DEFAULT = (256, 128, 64, 32, 16)
# set by the builder from backbone / pretrained / in_chans / num_classes / feature_stride
_SMP_RESERVED = ("encoder_name", "encoder_weights", "encoder_depth", "in_channels", "classes", "activation")

_SMP_MISSING = (
    "arch={arch!r} is a segmentation-models-pytorch architecture, and smp is not installed: "
    "pip install 'rleseg[smp]' (or pip install segmentation-models-pytorch)"
)


def _smp_name(arch: str) -> str | None:
    """The smp architecture an ``arch`` names (lower case), or None for rleseg's own ``"fpn"``."""
    name = arch.strip().lower()
    for prefix in _SMP_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return None if name == "fpn" else name


def _import_smp(arch: str) -> Any:
    try:
        import segmentation_models_pytorch as smp
    except ImportError as err:
        if _smp_name(arch) not in SMP_ARCHS:
            raise ModelConfigError(
                f"unknown dense arch {arch!r}: 'fpn' (rleseg's head), or with segmentation-models-pytorch "
                "installed (pip install 'rleseg[smp]') one of "
                f"{[f'smp_{n}' if n == 'fpn' else n for n in SMP_ARCHS]}"
            ) from err
        raise ModelConfigError(_SMP_MISSING.format(arch=arch)) from err
    return smp


def dense_archs() -> list[str]:
    """The ``arch`` values :func:`build_dense_model` accepts here: ``"fpn"``, and smp's if installed.

    >>> "fpn" in dense_archs()
    True
    """
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return ["fpn"]
    return ["fpn", *(f"smp_{n}" if n == "fpn" else n for n in smp.MODEL_ARCHITECTURES_MAPPING)]


def _width_kwargs(name: str, decoder_channels: int | Sequence[int] | None, depth: int) -> dict[str, Any]:
    """smp keyword arguments that set the decoder width ``decoder_channels`` for architecture ``name``."""
    args = _SMP_WIDTH_ARGS.get(name, ())
    if decoder_channels is None:  # smp's defaults; per-stage ones cut to the encoder depth
        return {a[:-1]: _SMP_STAGE_DEFAULT[:depth] for a in args if a.endswith("*")}
    out: dict[str, Any] = {}
    for arg in args:
        if arg.endswith("*"):
            if isinstance(decoder_channels, int):
                out[arg[:-1]] = (decoder_channels,) * depth
            elif len(decoder_channels) != depth:
                raise ModelConfigError(
                    f"arch {name!r}: decoder_channels {list(decoder_channels)} needs one width per "
                    f"decoder stage, deepest first: {depth} for "
                    f"encoder_depth={depth} (from feature_stride={2**depth})"
                )
            else:
                out[arg[:-1]] = tuple(int(c) for c in decoder_channels)
        elif isinstance(decoder_channels, int):
            out[arg] = decoder_channels
        else:
            raise ModelConfigError(
                f"arch {name!r} takes one decoder width (an int); got {decoder_channels!r}"
            )
    if not args:
        log.info("arch %r has no decoder width option: decoder_channels=%r is unused", name, decoder_channels)
    return out


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


class SmpDenseSegmenter(_FrameSegmenter):
    """A segmentation-models-pytorch model on a timm encoder, called like :class:`DenseSegmenter`.

    Built by :func:`build_dense_model`; ``model`` is the smp model (``model.encoder.model`` the timm
    feature extractor). Logits come out at the input size (resized bilinearly where an architecture's
    head does not end there); clips ``[B, T, C, H, W]`` are segmented frame by frame.

    Attributes:
        arch: the smp architecture (lower case, as in ``smp.MODEL_ARCHITECTURES_MAPPING``).
        divisor: H and W must be multiples of it (the encoder's output stride, ``2 ** encoder_depth``
            capped by smp's ``encoder_output_stride``); 1 where the architecture takes any size.
    """

    def __init__(self, model: nn.Module, *, arch: str, num_classes: int, in_chans: int, frames: int) -> None:
        super().__init__()
        self.model = model
        self.arch = arch
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.frames = frames
        needs_divisible = getattr(model, "requires_divisible_input_shape", True)
        self.divisor = int(model.encoder.output_stride) if needs_divisible else 1

    @property
    def weights_report(self) -> Any:
        return getattr(self.model.encoder.model, "weights_report", None)

    def _segment(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        if h % self.divisor or w % self.divisor:
            d = self.divisor
            raise ValueError(
                f"dense arch {self.arch!r} needs image height and width divisible by {d} (its encoder's "
                f"output stride); got {h}x{w}: pad or crop to {math.ceil(h / d) * d}x{math.ceil(w / d) * d}, "
                "or lower feature_stride"
            )
        logits = self.model(images)
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def build_dense_model(
    arch: str = "fpn",
    *,
    num_classes: int,
    backbone: str = "resnet18",
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    in_chans: int = 3,
    feature_stride: int = 8,
    decoder_channels: int | Sequence[int] | None = 64,
    frames: int = 1,
    backbone_kwargs: Mapping[str, Any] | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> DenseSegmenter | SmpDenseSegmenter:
    """The dense baseline: rleseg's FPN head (``arch="fpn"``) or any smp architecture on the timm backbone.

    ``arch="fpn"`` is exactly ``DenseSegmenter(...)`` with these arguments. Any other value names a
    segmentation-models-pytorch architecture, case-insensitively, optionally prefixed ``smp_``
    (``"unet"``, ``"unetplusplus"``, ``"deeplabv3plus"``, ``"smp_fpn"`` for smp's own FPN, ...: see
    :func:`dense_archs`), built with ``smp.create_model(arch, encoder_name=f"tu-{backbone}", ...)``.
    smp is optional: ``pip install 'rleseg[smp]'``.

    For smp architectures:

    * ``feature_stride`` (a power of 2 up to 32) sets ``encoder_depth = log2(feature_stride)``: the head
      sees the same backbone stages, down to the same reduction, as rleseg's FPN (stride 8 → depth 3; use
      32 for smp's usual depth 5). Images must then have H and W divisible by the encoder's output stride
      (``2 ** encoder_depth``, capped by DeepLabV3's / PAN's ``encoder_output_stride``): the forward pass
      raises a ``ValueError`` naming the size to pad to otherwise (Unet takes any size). Some
      architectures only accept some depths (DPT: 4; PAN needs inputs >= 128 at depth 4 and 5): smp's
      message is re-raised as a :class:`ModelConfigError`.
    * ``decoder_channels``: an int is the head's width, applied where the architecture has one (every
      stage of Unet / UnetPlusPlus / MAnet; ``decoder_channels`` of DeepLabV3(+) / PAN / UPerNet; both
      pyramid and segmentation channels of smp's FPN; ``psp_out_channels``; Segformer's and DPT's
      segmentation / fusion channels; unused by Linknet); a sequence, deepest stage first, sets each stage
      of Unet / UnetPlusPlus / MAnet; ``None`` keeps smp's defaults.
    * ``backbone_kwargs`` reach ``timm.create_model`` through smp's ``tu-`` encoder (except the keys smp
      sets itself: ``in_chans``, ``features_only``, ``out_indices``, ``output_stride``, ``pretrained``).
    * ``arch_kwargs``: further keyword arguments of the smp architecture (``decoder_attention_type``,
      ``encoder_output_stride``, ``upsampling``, ...), applied last; not those the builder sets
      (``encoder_name``, ``encoder_weights``, ``encoder_depth``, ``in_channels``, ``classes``,
      ``activation``).
    * ``pretrained=True`` loads timm's weights for ``backbone`` (Hugging Face hub, or its local cache);
      ``weights_path`` loads a local file into the timm encoder, as for the FPN.

    Args: as :class:`DenseSegmenter`, plus ``arch`` and ``arch_kwargs``.

    Returns:
        A :class:`DenseSegmenter` or :class:`SmpDenseSegmenter`: images ``[B, C, H, W]`` → logits
        ``[B, N, H, W]``; clips ``[B, T, C, H, W]`` → ``[B, T, N, H, W]``.

    Raises:
        ModelConfigError: an unknown arch, smp not installed, arguments smp rejects, pretrained weights
            that cannot be fetched (e.g. with ``HF_HUB_OFFLINE`` set and nothing cached).

    >>> import torch
    >>> build_dense_model(num_classes=4, backbone="resnet10t")(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 4, 64, 64])
    """
    name = _smp_name(arch)
    if name is None:
        if arch_kwargs:
            raise ModelConfigError(
                f"arch='fpn' takes no arch_kwargs (they are for smp architectures); got {dict(arch_kwargs)}"
            )
        if decoder_channels is not None and not isinstance(decoder_channels, int):
            raise ModelConfigError(f"arch='fpn' takes one decoder width (an int); got {decoder_channels!r}")
        return DenseSegmenter(
            num_classes=num_classes,
            backbone=backbone,
            pretrained=pretrained,
            weights_path=weights_path,
            in_chans=in_chans,
            feature_stride=feature_stride,
            decoder_channels=64 if decoder_channels is None else decoder_channels,
            frames=frames,
            backbone_kwargs=dict(backbone_kwargs) if backbone_kwargs is not None else None,
        )

    smp = _import_smp(arch)
    if name not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ModelConfigError(f"unknown dense arch {arch!r}; available here: {dense_archs()}")
    if num_classes < 2:
        raise ModelConfigError(f"num_classes must be >= 2 (background included); got {num_classes}")
    if frames < 1:
        raise ModelConfigError(f"frames must be >= 1; got {frames}")
    if pretrained and weights_path is not None:
        raise ModelConfigError(
            "give either pretrained=True (download) or weights_path (local file), not both"
        )
    depth = int(math.log2(feature_stride)) if feature_stride > 0 else 0
    if feature_stride not in (2, 4, 8, 16, 32):
        raise ModelConfigError(
            f"arch {arch!r}: feature_stride must be 2, 4, 8, 16 or 32 (it sets smp's encoder_depth = "
            f"log2(feature_stride)); got {feature_stride}"
        )
    reserved = sorted(set(arch_kwargs or {}) & set(_SMP_RESERVED))
    if reserved:
        raise ModelConfigError(
            f"arch_kwargs may not set {reserved}: they come from backbone, pretrained, in_chans, num_classes "
            "and feature_stride (encoder_depth = log2(feature_stride))"
        )
    _check_name(backbone)

    kwargs: dict[str, Any] = {}
    if (
        name == "fpn"
    ):  # smp's FPN head ends at stride 2 ** (depth - 3): its default upsampling=4 assumes depth 5
        kwargs["upsampling"] = 2 ** max(depth - 3, 0)
    elif name == "pspnet":  # its head ends at the encoder's stride (default upsampling=8 assumes depth 3)
        kwargs["upsampling"] = 2**depth
    kwargs.update(_width_kwargs(name, decoder_channels, depth))
    kwargs.update(backbone_kwargs or {})
    kwargs.update(arch_kwargs or {})
    try:
        model = smp.create_model(
            name,
            encoder_name=f"tu-{backbone}",
            encoder_weights=True if pretrained else None,
            encoder_depth=depth,
            in_channels=in_chans,
            classes=num_classes,
            activation=None,
            **kwargs,
        )
    except Exception as err:
        if pretrained:
            offline = hub_offline_variables()
            why = (
                f"{' and '.join(offline)} is set and they are not in the local Hugging Face cache; unset it "
                "on a machine with network access, or"
                if offline
                else "without network access,"
            )
            raise ModelConfigError(
                f"could not fetch pretrained timm weights for {backbone!r} ({_one_line(err)}): {why} "
                "download them elsewhere and pass weights_path=..."
            ) from err
        raise ModelConfigError(
            f"smp could not build arch {name!r} on 'tu-{backbone}' with encoder_depth={depth} "
            f"(feature_stride={feature_stride}), {kwargs}: {_one_line(err)}"
        ) from err
    if weights_path is not None:
        encoder = model.encoder.model
        encoder.weights_report = load_backbone_weights(encoder, weights_path, in_chans=in_chans)
    return SmpDenseSegmenter(model, arch=name, num_classes=num_classes, in_chans=in_chans, frames=frames)
