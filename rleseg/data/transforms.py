"""Image/mask transforms: resizing, normalisation, and albumentations augmentation configured in YAML.

Augmentation is applied jointly to the image and its label map, with one set of random parameters for
every frame of a clip (albumentations' ``images``/``masks`` targets), nearest interpolation for labels
(label values are first mapped to compact ids, so panoptic ids and void values such as 255 survive any
transform exactly), and a seed per sample so that a sample is the same in any worker. It is off for
evaluation. Pixels a transform brings in from outside the frame (affine, rotation) are label 0
(background), whatever labels the sample holds.

The YAML config (the DataModules' ``augment`` argument; every key optional)::

    augment:
      hflip: 0.5                      # probability of a horizontal flip
      vflip: 0.0
      rotate90: 0.0                   # probability of a random multiple of 90 degrees
      affine: {p: 0.5, scale: [0.8, 1.2], rotate: [-15, 15], translate: 0.1}
      color: {p: 0.5, brightness: 0.2, contrast: 0.2, saturation: 0.2, hue: 0.05}
      extra: [{name: GaussNoise, p: 0.2}]   # any albumentations transform by class name + arguments

Normalisation maps uint8 RGB to float32 with the ImageNet mean ``(0.485, 0.456, 0.406)`` and std
``(0.229, 0.224, 0.225)`` (timm's default, so a user's pretrained backbone weights see what they expect).

>>> import numpy as np
>>> aug = Augmenter({"hflip": 1.0})
>>> img = np.zeros((1, 4, 4, 3), np.uint8); lab = np.zeros((1, 4, 4), np.int32); lab[0, :, 0] = 7
>>> _, out = aug(img, lab, seed=0)
>>> out[0, :, 3].tolist()
[7, 7, 7, 7]
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from rleseg.data.errors import DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Augmenter",
    "center_crop",
    "denormalize",
    "normalize",
    "resize_clip",
    "resize_frames",
    "resize_labels",
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
AUGMENT_KEYS = ("hflip", "vflip", "rotate90", "affine", "color", "extra")


def normalize(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]``, mean/std normalised (ImageNet's by default).

    >>> normalize(np.full((2, 2, 3), 255, np.uint8)).shape
    (3, 2, 2)
    """
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    x = (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def denormalize(image: Any) -> np.ndarray:
    """Inverse of :func:`normalize`: float ``[..., 3, H, W]`` (numpy or torch) -> uint8 ``[..., H, W, 3]``."""
    x = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    x = np.moveaxis(x.astype(np.float32), -3, -1) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    # centre-aligned nearest neighbour, the same rule for every label map
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_labels(labels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest (centre-aligned) resize of label maps ``[..., H, W]`` to ``size`` (h, w): every value, void
    and panoptic ids included, stays exactly what it was (the rule of :func:`resize_clip`).

    >>> resize_labels(np.array([[0, 255], [1, 2]]), (4, 4))[0].tolist()
    [0, 0, 255, 255]
    """
    h, w = (int(v) for v in size)
    H, W = labels.shape[-2:]
    if (H, W) == (h, w):
        return labels
    rows, cols = _nearest_index(H, h), _nearest_index(W, w)
    return labels[..., rows[:, None], cols[None, :]]


def center_crop(labels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The centre ``size`` (h, w) of label maps ``[..., H, W]`` (the larger half of an odd margin at the
    bottom / right).

    >>> center_crop(np.arange(16).reshape(4, 4), (2, 2)).tolist()
    [[5, 6], [9, 10]]
    """
    h, w = (int(v) for v in size)
    H, W = labels.shape[-2:]
    if h > H or w > W or h < 1 or w < 1:
        raise DataError(f"cannot crop {h}x{w} out of a {H}x{W} mask")
    y, x = (H - h) // 2, (W - w) // 2
    return labels[..., y : y + h, x : x + w]


def resize_clip(image: np.ndarray, labels: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize frames ``[T, H, W, 3]`` (area/linear) and labels ``[T, H, W]`` (nearest) to ``size`` (h, w).

    >>> img, lab = resize_clip(np.zeros((1, 8, 8, 3), np.uint8), np.ones((1, 8, 8), np.int32), (4, 4))
    >>> img.shape, lab.shape, int(lab.min())
    ((1, 4, 4, 3), (1, 4, 4), 1)
    """
    return resize_frames(image, size), resize_labels(labels, size)


def resize_frames(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize frames ``[T, H, W, 3]`` to ``size`` (h, w): area when shrinking, linear when enlarging.

    >>> resize_frames(np.zeros((2, 8, 8, 3), np.uint8), (4, 6)).shape
    (2, 4, 6, 3)
    """
    import cv2

    h, w = (int(v) for v in size)
    H, W = image.shape[1:3]
    if (H, W) == (h, w):
        return image
    interp = cv2.INTER_AREA if h <= H and w <= W else cv2.INTER_LINEAR
    out = np.stack([cv2.resize(frame, (w, h), interpolation=interp) for frame in image])
    return out.reshape(len(image), h, w, 3)


class Augmenter:
    """Joint image/label augmentation from a YAML-style dict (see the module docstring).

    Calling it with a seed makes the result a pure function of (inputs, seed).

    Raises:
        DataError: an unknown key, or an ``extra`` transform albumentations does not have.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        import albumentations as A

        unknown = sorted(set(config) - set(AUGMENT_KEYS))
        if unknown:
            raise DataError(f"unknown augment keys {unknown}; valid keys are {list(AUGMENT_KEYS)}")
        self.config = dict(config)
        ops: list[Any] = []
        if config.get("hflip"):
            ops.append(A.HorizontalFlip(p=float(config["hflip"])))
        if config.get("vflip"):
            ops.append(A.VerticalFlip(p=float(config["vflip"])))
        if config.get("rotate90"):
            ops.append(A.RandomRotate90(p=float(config["rotate90"])))
        if config.get("affine"):
            a = dict(config["affine"])
            t = float(a.pop("translate", 0.0))
            ops.append(
                A.Affine(
                    scale=tuple(a.pop("scale", (1.0, 1.0))),
                    rotate=tuple(a.pop("rotate", (0.0, 0.0))),
                    translate_percent=(-t, t),
                    mask_interpolation=0,  # cv2.INTER_NEAREST: labels stay labels
                    fill=0,
                    fill_mask=0,
                    p=float(a.pop("p", 0.5)),
                    **a,
                )
            )
        if config.get("color"):
            c = dict(config["color"])
            ops.append(
                A.ColorJitter(
                    brightness=c.pop("brightness", 0.2),
                    contrast=c.pop("contrast", 0.2),
                    saturation=c.pop("saturation", 0.2),
                    hue=c.pop("hue", 0.05),
                    p=float(c.pop("p", 0.5)),
                    **c,
                )
            )
        for spec in config.get("extra") or []:
            spec = dict(spec)
            name = spec.pop("name", None)
            cls = getattr(A, str(name), None)
            if cls is None or not isinstance(cls, type):
                raise DataError(f"augment.extra: albumentations has no transform {name!r}")
            if "mask_interpolation" in inspect.signature(cls).parameters:
                spec.setdefault("mask_interpolation", 0)
            try:
                ops.append(cls(**spec))
            except (TypeError, ValueError) as err:
                raise DataError(f"augment.extra: bad arguments for {name}: {err}") from err
        self.compose = A.Compose(ops)

    def __bool__(self) -> bool:
        return bool(self.compose.transforms)

    def __call__(self, image: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Augment frames ``[T, H, W, 3]`` uint8 and labels ``[T, H, W]`` int with one parameter draw."""
        unique, inverse = np.unique(labels, return_inverse=True)
        # compact ids with label 0 first: transforms fill with compact 0, which must mean background
        # (not the smallest label of the sample, e.g. a void -1 or a foreground class)
        nonzero = unique != 0
        values = np.concatenate([np.zeros(1, unique.dtype), unique[nonzero]])
        compact = np.where(nonzero, np.cumsum(nonzero), 0)[inverse.reshape(-1)]
        dtype = np.uint8 if len(values) <= 256 else np.uint16
        if len(values) > 65536:
            raise DataError(f"{len(values)} distinct labels in one sample; at most 65536 can be augmented")
        self.compose.set_random_seed(seed)
        for k, op in enumerate(self.compose.transforms):  # independent streams, not one seed shared by all
            op.set_random_seed(int(np.random.SeedSequence([seed, k]).generate_state(1)[0]))
        out = self.compose(images=image, masks=compact.reshape(labels.shape).astype(dtype))
        return np.ascontiguousarray(out["images"]), values[out["masks"].astype(np.int64)].astype(labels.dtype)
