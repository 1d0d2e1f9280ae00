"""timm backbones: any ``timm`` model name as a feature extractor, offline by default.

Two entry points, both built on ``timm.create_model(..., features_only=True)``:

* :func:`create_backbone` — ONE feature map at a requested reduction (the Pix2Seq encoder's input);
* :func:`create_feature_pyramid` — every reduction up to a maximum (the dense baseline's FPN head).

The stage is picked from the model's own ``feature_info`` (probed on the ``meta`` device, so no
weights are built twice), and ``out_indices`` is set to it: timm then drops the deeper stages, so a
stride-8 ResNet-18 carries 0.68 M parameters instead of 11 M.

Weights: nothing is downloaded unless ``pretrained=True`` (which goes to the Hugging Face hub and fails
on a machine without network). ``weights_path`` loads a local file instead: a plain state dict, a timm
/ torchvision checkpoint, or a Lightning checkpoint of a whole rleseg model (the backbone's keys are
found by prefix).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BackboneError",
    "FeaturePyramid",
    "TimmBackbone",
    "WeightsReport",
    "create_backbone",
    "create_feature_pyramid",
    "load_backbone_weights",
]

log = logging.getLogger(__name__)


class BackboneError(ValueError):
    """An unknown backbone name, an unavailable feature stride, or unusable weights."""


@dataclass
class WeightsReport:
    """What :func:`load_backbone_weights` did with a weights file."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    prefix: str = ""

    def summary(self) -> str:
        return (
            f"{self.path}: loaded {len(self.loaded)} tensors (prefix {self.prefix!r}), "
            f"{len(self.adapted)} adapted to in_chans, {len(self.missing)} missing, "
            f"{len(self.shape_mismatch)} with the wrong shape, {len(self.unexpected)} unused"
            + (
                f"; missing: {self.missing[:8]}{' ...' if len(self.missing) > 8 else ''}"
                if self.missing
                else ""
            )
        )


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(name.split(".")[0], names, n=8, cutoff=0.6)
    hint = f"; close matches: {close}" if close else ""
    raise BackboneError(f"unknown timm backbone {name!r}{hint} (all names: timm.list_models())")


def _feature_info(name: str, in_chans: int, kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The full ``feature_info`` of ``name`` (every stage), without allocating weights."""
    try:
        with torch.device("meta"):
            probe = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans, **kwargs)
    except Exception:  # a model that cannot be built on the meta device: build it for real once
        probe = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans, **kwargs)
    return [dict(info, index=info.get("index", i)) for i, info in enumerate(probe.feature_info.info)]


def _create_features(
    name: str,
    out_indices: tuple[int, ...],
    *,
    pretrained: bool,
    weights_path: str | Path | None,
    in_chans: int,
    kwargs: Mapping[str, Any],
) -> nn.Module:
    if pretrained and weights_path is not None:
        raise BackboneError("give either pretrained=True (download) or weights_path (local file), not both")
    try:
        model = timm.create_model(
            name,
            features_only=True,
            out_indices=out_indices,
            pretrained=pretrained,
            in_chans=in_chans,
            **kwargs,
        )
    except Exception as err:
        if pretrained:
            offline = hub_offline_variables()
            why = (
                f"{' and '.join(offline)} is set and they are not in the local Hugging Face cache: unset "
                "it to download them"
                if offline
                else f"{type(err).__name__}: {err}"
            )
            raise BackboneError(
                f"could not fetch pretrained weights for {name!r} ({why}); without network access, download "
                "them elsewhere and pass weights_path=..."
            ) from err
        raise
    _drop_unused_stages(model)
    if weights_path is not None:
        model.weights_report = load_backbone_weights(model, weights_path, in_chans=in_chans)
    return model


def _drop_unused_stages(model: nn.Module) -> None:
    """Cut the stages after the last requested one where timm keeps them (EfficientNet, MobileNetV3).

    ``FeatureListNet`` prunes deeper stages itself, but ``EfficientNetFeatures`` /
    ``MobileNetV3Features`` run every block and only collect the requested outputs: the deeper blocks
    would cost compute and hold parameters without gradients (which DDP rejects).
    """
    stage_out = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if stage_out and isinstance(blocks, nn.Sequential) and getattr(model, "feature_hooks", None) is None:
        # block i produces stage i + 1 (stage 0 is the stem)
        model.blocks = blocks[: max(stage_out)]


def _normalise(key: str) -> str:
    # features_only models flatten nested module names ("stages.0" -> "stages_0"); comparing keys
    # with every "." replaced by "_" matches the original model's keys to the feature model's.
    return key.replace(".", "_")


def _unwrap_state_dict(obj: Any, path: str) -> dict[str, Tensor]:
    for key in ("state_dict", "model", "state_dict_ema", "model_ema", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise BackboneError(f"{path} holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise BackboneError(f"{path} holds no tensors")
    return tensors


def load_backbone_weights(model: nn.Module, weights_path: str | Path, *, in_chans: int = 3) -> WeightsReport:
    """Load a local weights file into a timm feature model, non-strictly, and report what happened.

    Keys are matched after replacing ``.`` by ``_`` (feature models flatten module names) and after
    stripping the prefix that matches most keys (``module.``, ``model.encoder.backbone.body.``, ...).
    A first convolution whose input channels differ is adapted with timm's ``adapt_input_conv``
    (e.g. RGB weights for 1-channel MRI); other shape mismatches are skipped and reported.

    Args:
        model: the feature model (``features_only=True``).
        weights_path: a ``.pth``/``.pt``/``.ckpt``/``.safetensors`` file (a path or a URL; always read
            weights-only).
        in_chans: the model's input channels.

    Returns:
        A :class:`WeightsReport`; it is also logged at INFO level (WARNING if keys are missing).

    Raises:
        BackboneError: if the file is unreadable or no key matches the model.
    """
    from rleseg.checkpoints import CheckpointError, is_remote, load_checkpoint, read_bytes

    path = str(weights_path)
    if not is_remote(path) and not Path(path.removeprefix("file://")).is_file():
        raise BackboneError(f"weights_path {path!r} is not a file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load as load_safetensors

            state = load_safetensors(read_bytes(path))
        else:  # weights-only from any location (a local file, file://, http(s)://, fsspec)
            state = _unwrap_state_dict(load_checkpoint(path, lightning=False), path)
    except CheckpointError as exc:
        raise BackboneError(f"weights_path: {exc}") from exc
    own = model.state_dict()
    own_norm = {_normalise(k): k for k in own}

    # Pick the prefix whose removal matches the most keys ("" included): one pass over every split
    # point of every key.
    hits: dict[str, int] = {}
    for key in state:
        parts = key.split(".")
        for i in range(len(parts)):
            if _normalise(".".join(parts[i:])) in own_norm:
                prefix = ".".join(parts[:i]) + ("." if i else "")
                hits[prefix] = hits.get(prefix, 0) + 1
    best, best_hits = max(hits.items(), key=lambda kv: (kv[1], -len(kv[0])), default=("", 0))
    if best_hits <= 0:
        raise BackboneError(
            f"no tensor in {path} matches the backbone (first file keys: {list(state)[:5]}, "
            f"first model keys: {list(own)[:5]})"
        )

    report = WeightsReport(path=path, prefix=best)
    new_state: dict[str, Tensor] = {}
    for key, value in state.items():
        if not key.startswith(best) or _normalise(key[len(best) :]) not in own_norm:
            report.unexpected.append(key)
            continue
        target_key = own_norm[_normalise(key[len(best) :])]
        target = own[target_key]
        if value.shape != target.shape:
            if (
                value.ndim == 4
                and value.shape[0] == target.shape[0]
                and value.shape[2:] == target.shape[2:]
                and target.shape[1] == in_chans
            ):
                from timm.models import adapt_input_conv

                value = adapt_input_conv(in_chans, value)
                report.adapted.append(target_key)
            else:
                report.shape_mismatch.append(
                    f"{target_key}: file {tuple(value.shape)} vs model {tuple(target.shape)}"
                )
                continue
        new_state[target_key] = value.to(target.dtype)
        report.loaded.append(target_key)
    report.missing = [k for k in own if k not in new_state]
    model.load_state_dict(new_state, strict=False)
    (log.warning if report.missing or report.shape_mismatch else log.info)(
        "backbone weights %s", report.summary()
    )
    return report


class TimmBackbone(nn.Module):
    """A timm feature model that returns ONE feature map ``[B, out_channels, H/stride, W/stride]``.

    With deeper stages (``create_backbone(..., deep_stride=...)``) each deeper map is projected to
    ``out_channels`` by a 1×1 convolution, upsampled to the returned map's size and added to it: the map
    keeps its resolution and gains the deeper stages' semantics (a one-step feature pyramid).

    Attributes:
        name: the timm model name.
        out_channels: channels of the feature map.
        stride: its reduction relative to the input.
        body: the underlying ``features_only`` timm model (its first output is the returned map).
        lateral: the 1×1 projections of the deeper maps (empty without ``deep_stride``).
        fine_stride, fine_channels: the shallower map :meth:`features` also returns (``create_backbone(...,
            fine_stride=...)``); ``None`` / 0 without one.
    """

    def __init__(
        self,
        name: str,
        body: nn.Module,
        out_channels: int,
        stride: int,
        deep_channels: Sequence[int] = (),
        *,
        fine_stride: int | None = None,
        fine_channels: int = 0,
    ) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.out_channels = out_channels
        self.stride = stride
        self.fine_stride = fine_stride
        self.fine_channels = fine_channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in deep_channels)

    @property
    def weights_report(self) -> WeightsReport | None:
        return getattr(self.body, "weights_report", None)

    def features(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """The map at ``stride`` and, with a ``fine_stride``, the shallower map at it (else None)."""
        maps = list(self.body(images))
        fine = maps.pop(0) if self.fine_stride is not None else None  # timm returns the shallowest first
        x = maps[0]
        for proj, deep in zip(self.lateral, maps[1:], strict=True):
            x = x + F.interpolate(proj(deep), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x, fine

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)[0]


class FeaturePyramid(nn.Module):
    """A timm feature model that returns a list of maps, shallowest first (``strides`` ascending)."""

    def __init__(self, name: str, body: nn.Module, out_channels: list[int], strides: list[int]) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.out_channels = out_channels
        self.strides = strides

    def forward(self, images: Tensor) -> list[Tensor]:
        return list(self.body(images))


def _strides_error(name: str, infos: list[dict[str, Any]], what: str) -> BackboneError:
    available = sorted({int(i["reduction"]) for i in infos})
    return BackboneError(f"backbone {name!r} has feature maps at reductions {available}; {what}")


def _deepest_stages(infos: list[dict[str, Any]], *, above: int, upto: int) -> list[int]:
    """Stage indices of the deepest stage of every reduction in ``(above, upto]``, shallowest first."""
    deepest: dict[int, int] = {}
    for info in infos:
        if above < int(info["reduction"]) <= upto:
            deepest[int(info["reduction"])] = int(info["index"])  # later stages of a reduction win
    return [deepest[r] for r in sorted(deepest)]


def hub_offline_variables() -> list[str]:
    """The Hugging Face offline switches set in the environment: a pretrained download then fails."""
    return [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v, "") not in ("", "0")]


def pretrained_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) timm's pretrained weights of ``name`` expect, or None if timm does not say."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        return None
    if cfg is None:
        return None
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        return None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def create_backbone(
    name: str,
    *,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    in_chans: int = 3,
    feature_stride: int = 16,
    deep_stride: int | None = None,
    fine_stride: int | None = None,
    **kwargs: Any,
) -> TimmBackbone:
    """Any timm model as a single-feature-map extractor at reduction ``feature_stride``.

    Of the stages at that reduction the deepest is taken (a ViT has all its blocks at 16).

    Args:
        name: a timm model name (``timm.list_models()``), optionally with a pretrained tag.
        pretrained: download timm's pretrained weights (needs network; off by default).
        weights_path: a local weights file to load instead (see :func:`load_backbone_weights`).
        in_chans: input channels (1 for grey-scale, 3 for RGB).
        feature_stride: the reduction of the returned map (e.g. 8, 16, 32).
        deep_stride: also run the stages down to this reduction and add their maps, projected and
            upsampled, to the returned one (``None``: stop at ``feature_stride``). On small inputs a
            stride-8 map has the resolution the tokens need but only the shallow stages' semantics.
        fine_stride: also return, from :meth:`TimmBackbone.features`, the map of this smaller reduction
            (e.g. 4 beside a stride-8 map: the detail a finer visual memory is built from).
        **kwargs: passed to ``timm.create_model`` (e.g. ``channels=(32, 64, 128, 256)`` for a timm
            ResNet with reduced widths, ``drop_path_rate``).

    Returns:
        A :class:`TimmBackbone` with ``.out_channels`` and ``.stride``.

    Raises:
        BackboneError: unknown name (with close matches) or a stride the model does not have (with
            the ones it has).

    >>> bb = create_backbone("resnet18", feature_stride=8)
    >>> bb.out_channels, bb.stride, tuple(bb(torch.zeros(1, 3, 64, 64)).shape)
    (128, 8, (1, 128, 8, 8))
    >>> tuple(create_backbone("resnet18", feature_stride=8, deep_stride=32)(torch.zeros(1, 3, 64, 64)).shape)
    (1, 128, 8, 8)
    """
    _check_name(name)
    infos = _feature_info(name, in_chans, kwargs)
    matching = [i for i in infos if int(i["reduction"]) == feature_stride]
    if not matching:
        raise _strides_error(name, infos, f"feature_stride={feature_stride} is not one of them")
    indices = [int(matching[-1]["index"])]
    if deep_stride is not None:
        if deep_stride <= feature_stride or not any(int(i["reduction"]) == deep_stride for i in infos):
            what = f"deep_stride={deep_stride} must be one of them and > feature_stride={feature_stride}"
            raise _strides_error(name, infos, what)
        indices += _deepest_stages(infos, above=feature_stride, upto=deep_stride)
    if fine_stride is not None:
        if fine_stride >= feature_stride or not any(int(i["reduction"]) == fine_stride for i in infos):
            what = f"fine_stride={fine_stride} must be one of them and < feature_stride={feature_stride}"
            raise _strides_error(name, infos, what)
        indices.insert(0, _deepest_stages(infos, above=fine_stride - 1, upto=fine_stride)[0])
    body = _create_features(
        name,
        tuple(indices),
        pretrained=pretrained,
        weights_path=weights_path,
        in_chans=in_chans,
        kwargs=kwargs,
    )
    channels = [int(c) for c in body.feature_info.channels()]
    reductions = [int(r) for r in body.feature_info.reduction()]
    fine_channels = channels.pop(0) if fine_stride is not None else 0
    return TimmBackbone(
        name,
        body,
        channels[0],
        reductions[1 if fine_stride is not None else 0],
        deep_channels=channels[1:],
        fine_stride=fine_stride,
        fine_channels=fine_channels,
    )


def create_feature_pyramid(
    name: str,
    *,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    in_chans: int = 3,
    max_stride: int = 8,
    **kwargs: Any,
) -> FeaturePyramid:
    """The deepest stage of every reduction up to ``max_stride``, shallowest first.

    Args: as :func:`create_backbone`, with ``max_stride`` the deepest reduction to return.

    >>> fp = create_feature_pyramid("resnet18", max_stride=8)
    >>> fp.strides, fp.out_channels
    ([2, 4, 8], [64, 64, 128])
    """
    _check_name(name)
    infos = _feature_info(name, in_chans, kwargs)
    if not any(int(i["reduction"]) == max_stride for i in infos):
        raise _strides_error(name, infos, f"max_stride={max_stride} is not one of them")
    out_indices = tuple(_deepest_stages(infos, above=0, upto=max_stride))
    body = _create_features(
        name, out_indices, pretrained=pretrained, weights_path=weights_path, in_chans=in_chans, kwargs=kwargs
    )
    return FeaturePyramid(
        name,
        body,
        [int(c) for c in body.feature_info.channels()],
        [int(r) for r in body.feature_info.reduction()],
    )
