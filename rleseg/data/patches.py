"""Cut images, clips and masks into patches, and stitch patch predictions back (the paper's "patch" axis).

An image larger than the model input is cut into ``size``-sized patches ``stride`` apart along the last
two (spatial) axes; the last row and column of patches are shifted back to end exactly at the border, so
every pixel is covered. Evaluation stitches the per-patch predictions back into the full image before the
metrics are computed; where patches overlap, the pixel takes the label most patches voted for (``"vote"``,
ties to the smaller label) or the label of the last patch (``"last"``).

Pure numpy; torch tensors are accepted too (patches are cut with torch ops on the tensor's device;
stitching returns a tensor on the input's device). Leading axes (channels, frames) ride along; with
``batch_dims=1`` the first axis is a batch.

>>> import numpy as np
>>> mask = np.arange(36).reshape(6, 6) % 3
>>> patches, origins = cut_patches(mask, size=4, stride=2)
>>> patches.shape, origins.tolist()
((4, 4, 4), [[0, 0], [0, 2], [2, 0], [2, 2]])
>>> bool((stitch_patches(patches, origins, mask.shape) == mask).all())
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = ["PatchError", "cut_patches", "jitter_origin", "patch_origins", "stitch_patches"]

Size = int | Sequence[int]


class PatchError(ValueError):
    """A patch size, stride or origin that does not fit the image."""


def _pair(value: Size, what: str) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        out = (int(value), int(value))
    else:
        out = tuple(int(v) for v in value)  # type: ignore[assignment]
    if len(out) != 2 or min(out) < 1:
        raise PatchError(f"{what} must be a positive int or (h, w), got {value!r}")
    return out  # type: ignore[return-value]


def _starts(n: int, size: int, stride: int, axis: str) -> np.ndarray:
    if size > n:
        raise PatchError(f"patch {axis} {size} is larger than the image {axis} {n}; use a smaller patch_size")
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:  # one more patch flush with the border so every pixel is covered
        starts.append(n - size)
    return np.asarray(starts, dtype=np.int64)


def patch_origins(full_shape: Sequence[int], size: Size, stride: Size | None = None) -> np.ndarray:
    """Top-left corners ``[P, 2]`` (row, col) of the patch grid over the last two axes of ``full_shape``.

    Patches are ordered row-major. ``stride`` defaults to ``size`` (non-overlapping).

    >>> patch_origins((10, 8), size=4).tolist()
    [[0, 0], [0, 4], [4, 0], [4, 4], [6, 0], [6, 4]]
    """
    h, w = _pair(size, "patch size")
    sh, sw = _pair(stride if stride is not None else size, "patch stride")
    H, W = (int(v) for v in full_shape[-2:])
    rows, cols = _starts(H, h, sh, "height"), _starts(W, w, sw, "width")
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1)
    return grid.reshape(-1, 2)


def jitter_origin(
    origin: Sequence[int], jitter: int, full_shape: Sequence[int], size: Size, rng: np.random.Generator
) -> tuple[int, int]:
    """``origin`` moved by a uniform random offset in ``[-jitter, jitter]`` per axis, kept inside the image.

    >>> jitter_origin((0, 0), 0, (8, 8), 4, np.random.default_rng(0))
    (0, 0)
    """
    h, w = _pair(size, "patch size")
    H, W = (int(v) for v in full_shape[-2:])
    dy, dx = rng.integers(-jitter, jitter + 1, size=2) if jitter > 0 else (0, 0)
    y = int(np.clip(int(origin[0]) + int(dy), 0, H - h))
    x = int(np.clip(int(origin[1]) + int(dx), 0, W - w))
    return y, x


def cut_patches(
    array: Any,
    size: Size,
    stride: Size | None = None,
    *,
    batch_dims: int = 0,
    origins: np.ndarray | None = None,
) -> tuple[Any, np.ndarray]:
    """Cut ``array`` (numpy or torch, spatial axes last) into patches.

    Args:
        array: ``[..., H, W]``, e.g. a mask ``[H, W]``, an image ``[C, H, W]``, a clip ``[T, C, H, W]``,
            or with ``batch_dims=1`` a batch ``[B, C, H, W]``.
        size: patch (h, w) or one int.
        stride: distance between patches; default ``size`` (non-overlapping).
        batch_dims: leading axes that are batch axes; the patch axis is inserted after them.
        origins: explicit top-left corners ``[P, 2]`` (default: :func:`patch_origins`).

    Returns:
        ``(patches, origins)``: patches ``[*batch, P, ..., h, w]`` of the input's type and device, and
        the int64 origins ``[P, 2]`` in pixels of ``array``.

    >>> import numpy as np
    >>> p, o = cut_patches(np.zeros((2, 3, 8, 8)), 4, batch_dims=1)
    >>> p.shape, len(o)
    ((2, 4, 3, 4, 4), 4)
    """
    h, w = _pair(size, "patch size")
    shape = tuple(array.shape)
    if len(shape) < 2 + batch_dims:
        raise PatchError(f"array of shape {shape} has no spatial axes after {batch_dims} batch axes")
    if origins is None:
        origins = patch_origins(shape, (h, w), stride)
    origins = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
    H, W = shape[-2:]
    if origins.size and (origins.min() < 0 or (origins[:, 0] + h).max() > H or (origins[:, 1] + w).max() > W):
        raise PatchError(f"patch origins {origins.tolist()} with size {(h, w)} leave the {H}x{W} image")
    pieces = [array[..., y : y + h, x : x + w] for y, x in origins.tolist()]
    if _is_torch(array):
        import torch

        return torch.stack(pieces, dim=batch_dims), origins
    return np.stack(pieces, axis=batch_dims), origins


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def stitch_patches(
    patch_preds: Any,
    origins: np.ndarray,
    full_shape: Sequence[int],
    mode: Literal["vote", "last"] = "vote",
    *,
    batch_dims: int = 0,
    scale: int = 1,
    fill: int = 0,
) -> Any:
    """Put patch label maps back together into one label map per image.

    Args:
        patch_preds: integer labels ``[*batch, P, ..., h, w]`` (numpy or torch), e.g. decoded token masks.
        origins: ``[P, 2]`` top-left corners as returned by :func:`cut_patches` (or ``[*batch, P, 2]``).
        full_shape: ``(H, W)`` (or ``(..., H, W)``) of the stitched map, in the patches' resolution.
        mode: ``"vote"`` (majority label per pixel over the patches covering it, ties to the smaller label)
            or ``"last"`` (later patches overwrite earlier ones).
        batch_dims: leading batch axes of ``patch_preds`` (0 or 1).
        scale: origins are in pixels ``scale`` times finer than ``patch_preds`` (e.g. the tokenizer's
            subsampling factor ``s``); they must divide exactly.
        fill: label of pixels no patch covers.

    Returns:
        ``[*batch, ..., H, W]`` labels with the dtype (and device) of ``patch_preds``.

    >>> import numpy as np
    >>> preds = np.array([[[1, 1]], [[2, 2]], [[2, 2]]])  # three 1x2 patches
    >>> stitch_patches(preds, np.array([[0, 0], [0, 1], [0, 1]]), (1, 3)).tolist()
    [[1, 2, 2]]
    """
    if mode not in ("vote", "last"):
        raise PatchError(f"stitch mode must be 'vote' or 'last', got {mode!r}")
    if batch_dims not in (0, 1):
        raise PatchError(f"batch_dims must be 0 or 1, got {batch_dims}")
    torch_in = _is_torch(patch_preds)
    preds = patch_preds.detach().cpu().numpy() if torch_in else np.asarray(patch_preds)
    origins = np.asarray(origins, dtype=np.int64)
    if batch_dims == 1:
        per_image = origins if origins.ndim == 3 else np.broadcast_to(origins, (len(preds), *origins.shape))
        out = np.stack(
            [_stitch_one(p, o, full_shape, mode, scale, fill) for p, o in zip(preds, per_image, strict=True)]
        )
    else:
        out = _stitch_one(preds, origins, full_shape, mode, scale, fill)
    if torch_in:
        import torch

        return torch.from_numpy(out).to(patch_preds.device)
    return out


def _stitch_one(
    preds: np.ndarray, origins: np.ndarray, full_shape: Sequence[int], mode: str, scale: int, fill: int
) -> np.ndarray:
    if preds.ndim < 3 or len(preds) != len(origins):
        raise PatchError(f"patch_preds {preds.shape} must be [P, ..., h, w] with P = {len(origins)} origins")
    if np.any(origins % scale):
        raise PatchError(f"origins {origins.tolist()} are not multiples of the scale {scale}")
    origins = origins // scale
    lead, (h, w) = preds.shape[1:-2], preds.shape[-2:]
    H, W = (int(v) for v in full_shape[-2:])
    if len(origins) and ((origins[:, 0] + h).max() > H or (origins[:, 1] + w).max() > W or origins.min() < 0):
        raise PatchError(f"patches of {h}x{w} at {origins.tolist()} do not fit a {H}x{W} image")
    out = np.full((*lead, H, W), fill, dtype=preds.dtype)
    if mode == "last" or len(preds) == 0:
        for p, (y, x) in zip(preds, origins.tolist(), strict=True):
            out[..., y : y + h, x : x + w] = p
        return out
    # Vote without a [labels, H, W] count array: list every (pixel, label) pair the patches give,
    # count equal pairs, keep the most frequent label per pixel (ties: smaller label).
    lead_size = int(np.prod(lead, dtype=np.int64))
    pix = np.arange(lead_size * H * W, dtype=np.int64).reshape(*lead, H, W)
    pix_ids = np.concatenate([pix[..., y : y + h, x : x + w].ravel() for y, x in origins.tolist()])
    labels, label_ids = np.unique(preds.reshape(len(preds), *lead, h, w).ravel(), return_inverse=True)
    pairs, counts = np.unique(pix_ids * len(labels) + label_ids.ravel(), return_counts=True)
    pixel, label = pairs // len(labels), pairs % len(labels)
    order = np.lexsort((label, -counts, pixel))  # by pixel, then most votes, then smallest label
    pixel, label = pixel[order], label[order]
    first = np.ones(len(pixel), dtype=bool)
    first[1:] = pixel[1:] != pixel[:-1]
    flat = out.reshape(-1)
    flat[pixel[first]] = labels[label[first]]
    return out
