"""Vectorised mask <-> runs: validation, subsampling, flattening, run finding, splitting, painting.

Everything here is numpy-only and loop-free over pixels and runs (SPEC §2): runs of *all* classes are
found in one pass that compares each pixel of the flattened mask with its neighbour, and decoding paints
with one ``np.repeat`` (or ``np.maximum.at`` when model output overlaps itself).

>>> m = np.array([[0, 1, 1, 0], [2, 2, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2]], dtype=np.uint8)
>>> r = find_runs(m.ravel(), max_run=4)
>>> r.starts.tolist(), r.lengths.tolist(), r.values.tolist()
([1, 4, 6, 10, 14], [2, 2, 4, 2, 2], [1, 2, 1, 1, 2])
>>> bool((paint_runs(16, r.starts, r.lengths, r.values, np.uint8).reshape(4, 4) == m).all())
True
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rleseg.tokenizers.base import TokenizerError

Order = Literal["row", "col"]
SubsampleMethod = Literal["nearest", "any"]

_EMPTY = np.zeros(0, dtype=np.int64)


def _load_kernels():  # noqa: ANN202 - a module or None
    """The compiled kernels (``rleseg/tokenizers/_kernels.c``) when they were built and not switched off
    with ``RLESEG_NO_EXTENSIONS=1``; None otherwise (the numpy paths then do all the work)."""
    if os.environ.get("RLESEG_NO_EXTENSIONS", "") not in ("", "0"):
        return None
    try:
        from rleseg.tokenizers import _kernels
    except ImportError:
        return None
    return _kernels


#: the optional compiled encode/decode of the flat-start tokenizers (None without them); the tokenizers
#: look it up at call time, so setting it to None switches to the numpy paths
kernels = _load_kernels()

#: below this many elements ``argmin``/``argmax`` (one plain loop) beat the ``min``/``max`` ufunc reductions,
#: whose setup costs ~2 µs a call: that is most of a small mask's time
_SMALL = 8192


def smallest(a: np.ndarray) -> int | float:
    """``a.min()`` of a non-empty array as a Python number, through ``argmin`` when ``a`` is small."""
    return a.item(a.argmin()) if a.size < _SMALL else a.min().item()


def largest(a: np.ndarray) -> int | float:
    """``a.max()`` of a non-empty array as a Python number, through ``argmax`` when ``a`` is small."""
    return a.item(a.argmax()) if a.size < _SMALL else a.max().item()


def all_true(a: np.ndarray) -> bool:
    """``a.all()`` of a non-empty bool array: ``argmin`` finds the first False (faster at every size)."""
    return a.item(a.argmin())


@functools.cache
def label_dtype(max_label: int) -> np.dtype:
    """The smallest dtype that holds labels ``0..max_label`` (uint8 for the usual few classes)."""
    for dt in (np.uint8, np.uint16, np.int32):
        if max_label <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def check_labels(
    mask: object,
    shape: tuple[int, ...],
    num_classes: int,
    *,
    what: str = "mask",
    ids_per_class: int = 1,
) -> np.ndarray:
    """Validate a label mask and return it as an integer array (a view when no conversion is needed).

    Accepted: integer and bool arrays, and float arrays whose values are all integers. Rejected with a
    :class:`TokenizerError` naming the problem and the value: other dtypes, an empty array, the wrong
    number of dimensions, a shape other than ``shape``, negative ids, and ids whose class
    (``id // ids_per_class``; the panoptic map uses 1000) is ``>= num_classes``. Nothing is clipped.
    """
    arr = mask if isinstance(mask, np.ndarray) else np.asarray(mask)
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise TokenizerError(
            f"{what} has dtype {arr.dtype}; expected an integer, bool or integer-valued float array"
        )
    if arr.size == 0:
        raise TokenizerError(f"{what} is empty (shape {arr.shape})")
    if arr.ndim != len(shape):
        axes = "(T, H, W)" if len(shape) == 3 else "(H, W)"
        raise TokenizerError(
            f"{what} has {arr.ndim} dimension(s) (shape {arr.shape}); expected {len(shape)} {axes}"
        )
    if arr.shape != tuple(shape):
        if len(shape) == 3 and arr.shape[0] != shape[0]:
            raise TokenizerError(
                f"video window has {arr.shape[0]} frames (shape {arr.shape}); "
                f"the tokenizer takes T = {shape[0]}"
            )
        raise TokenizerError(f"{what} shape {arr.shape} differs from the tokenizer's shape {tuple(shape)}")
    if kind == "b":
        arr = arr.view(np.uint8)
    elif kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            raise TokenizerError(f"float {what} has non-finite value {arr[~finite].flat[0].item()}")
        frac = arr != np.floor(arr)
        if frac.any():
            raise TokenizerError(f"float {what} has non-integer value {arr[frac].flat[0].item()}")
    lo = arr.min() if kind in "if" else 0
    if lo < 0:
        raise TokenizerError(f"{what} has negative id {lo.item()}; ids must be >= 0")
    hi = int(arr.max())
    if hi // ids_per_class >= num_classes:
        if ids_per_class == 1:
            raise TokenizerError(
                f"{what} has class id {hi} >= num_classes {num_classes} (ids must be 0..{num_classes - 1})"
            )
        raise TokenizerError(
            f"{what} has id {hi} of class {hi // ids_per_class} >= num_classes {num_classes} "
            f"(ids are class*{ids_per_class} + instance)"
        )
    if kind == "f":
        arr = arr.astype(label_dtype(hi))
    return arr


def subsample(mask: np.ndarray, factor: int, method: SubsampleMethod = "nearest") -> np.ndarray:
    """Shrink the last two axes by ``factor`` (SPEC §2.1).

    ``nearest`` keeps the pixel at the centre of each block (offset ``factor // 2``: a nearest-neighbour
    resize with half-pixel centres, as TensorFlow's and PIL's resizes do; taking the top-left pixel instead
    shifts every mask by (s-1)/2 pixels and costs ~6 Dice points of ceiling at s = 4 on the composites);
    ``any`` gives a block the highest id present in it, so any foreground beats background and the
    highest class wins a tie.

    >>> m = np.array([[0, 0, 0, 2], [0, 1, 0, 0]])
    >>> subsample(m, 2, "nearest").tolist(), subsample(m, 2, "any").tolist()
    ([[1, 0]], [[1, 2]])
    """
    if factor == 1:
        return mask
    if method == "nearest":
        return mask[..., factor // 2 :: factor, factor // 2 :: factor]
    h, w = mask.shape[-2:]
    blocks = mask.reshape(*mask.shape[:-2], h // factor, factor, w // factor, factor)
    return blocks.max(axis=(-3, -1))


def upsample(token_mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes of ``token_mask`` to ``shape[-2:]``.

    The inverse of ``subsample(.., "nearest")`` on the sampled pixels; used to compare a token-resolution
    mask with the full-resolution labels (the metric ceiling of SPEC §8).

    >>> upsample(np.array([[1, 2]]), (2, 4)).tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2]]
    """
    h, w = token_mask.shape[-2:]
    out_h, out_w = shape[-2:]
    if (h, w) == (out_h, out_w):
        return token_mask
    rows = np.arange(out_h) * h // out_h
    cols = np.arange(out_w) * w // out_w
    return token_mask[..., rows[:, None], cols[None, :]]


@dataclass(frozen=True)
class MaskGeometry:
    """Label shape, subsampling and flattening order of a tokenizer's masks.

    ``order="row"`` flattens time slowest, then rows, then columns; ``order="col"`` swaps the two spatial
    axes (time stays slowest). ``line`` is the length of the fastest axis (W for row order), the default
    maximum run length M.
    """

    shape: tuple[int, ...]
    factor: int = 1
    method: SubsampleMethod = "nearest"
    order: Order = "row"

    def __post_init__(self) -> None:
        shape = tuple(int(x) for x in self.shape)
        object.__setattr__(self, "shape", shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise TokenizerError(f"shape must be (H, W) or (T, H, W) of positive sizes; got {self.shape}")
        if self.factor < 1 or any(x % self.factor for x in shape[-2:]):
            raise TokenizerError(
                f"subsample factor {self.factor} must be >= 1 and divide the spatial size {shape[-2:]}"
            )
        if self.method not in ("nearest", "any"):
            raise TokenizerError(f"subsample method must be 'nearest' or 'any'; got {self.method!r}")
        if self.order not in ("row", "col"):
            raise TokenizerError(f"order must be 'row' or 'col'; got {self.order!r}")

    @functools.cached_property
    def token_shape(self) -> tuple[int, ...]:
        return (*self.shape[:-2], self.shape[-2] // self.factor, self.shape[-1] // self.factor)

    @functools.cached_property
    def size(self) -> int:
        return math.prod(self.token_shape)

    @functools.cached_property
    def line(self) -> int:
        """Pixels per line of the flattening (W in row order, H in column order)."""
        h, w = self.token_shape[-2:]
        return w if self.order == "row" else h

    def subsample(self, mask: np.ndarray) -> np.ndarray:
        return subsample(mask, self.factor, self.method)

    def flatten(self, token_mask: np.ndarray) -> np.ndarray:
        if self.order == "col":
            token_mask = np.swapaxes(token_mask, -1, -2)
        return token_mask.ravel()

    def unflatten(self, flat: np.ndarray) -> np.ndarray:
        if self.order == "row":
            return flat.reshape(self.token_shape)
        *lead, h, w = self.token_shape
        return np.ascontiguousarray(np.swapaxes(flat.reshape(*lead, w, h), -1, -2))

    def to_rc(self, flat_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of flat indices of a 2-D token mask."""
        h, w = self.token_shape[-2:]
        if self.order == "row":
            return flat_index // w, flat_index % w
        return flat_index % h, flat_index // h

    def from_rc(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        h, w = self.token_shape[-2:]
        return row * w + col if self.order == "row" else col * h + row


@dataclass(frozen=True)
class Runs:
    """Runs of a flattened mask, sorted by start unless stated otherwise: ``[start, start + length)``
    holds ``value`` (a class id, or a panoptic id)."""

    starts: np.ndarray
    lengths: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def take(self, index: np.ndarray) -> Runs:
        return Runs(self.starts[index], self.lengths[index], self.values[index])

    @classmethod
    def empty(cls) -> Runs:
        return cls(_EMPTY, _EMPTY, _EMPTY)


def find_runs(flat: np.ndarray, max_run: int | None = None, line: int | None = None) -> Runs:
    """Maximal runs of every non-zero value of ``flat`` in one pass, split into pieces of at most ``max_run``.

    With ``line`` set, runs are also cut at every multiple of ``line`` (runs never cross a row end).
    """
    n = flat.size
    change = flat[1:] != flat[:-1]
    if line is not None and line < n:
        change[line - 1 :: line] = True
    bounds = np.flatnonzero(change)
    bounds += 1
    starts = np.empty(bounds.size + 1, dtype=np.int64)
    starts[0] = 0
    starts[1:] = bounds
    ends = np.empty_like(starts)
    ends[:-1] = bounds
    ends[-1] = n
    fg = np.flatnonzero(flat[starts])
    starts = starts[fg]
    values = flat[starts].astype(np.int64)
    runs = Runs(starts, ends[fg] - starts, values)
    return split_runs(runs, max_run) if max_run is not None else runs


def run_edges(flat: np.ndarray) -> np.ndarray:
    """``[start, end, start, end, ...]`` of the runs of non-zero values in a non-empty flat 0/1 array: the
    positions where the zero-padded array changes (found without making the padded copy).

    >>> run_edges(np.array([1, 1, 0, 1, 0, 0, 1], dtype=np.uint8)).tolist()
    [0, 2, 3, 4, 6, 7]
    """
    change = np.empty(flat.size + 1, dtype=bool)
    change[0], change[-1] = flat.item(0), flat.item(-1)  # against the zero padding
    np.not_equal(flat[1:], flat[:-1], out=change[1:-1])
    return change.nonzero()[0]


def binary_runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)`` of the runs of ones in a flat 0/1 array (from :func:`run_edges`).

    >>> [a.tolist() for a in binary_runs(np.array([1, 1, 0, 1, 0, 0, 1], dtype=np.uint8))]
    [[0, 3, 6], [2, 1, 1]]
    """
    edges = run_edges(flat)
    starts = edges[0::2]
    return starts, edges[1::2] - starts


def split_runs(runs: Runs, max_run: int) -> Runs:
    """Split runs longer than ``max_run`` into consecutive pieces of ``max_run`` (the last one shorter)."""
    if len(runs) == 0 or runs.lengths.max() <= max_run:
        return runs
    pieces = (runs.lengths + max_run - 1) // max_run
    owner = np.repeat(np.arange(len(runs)), pieces)
    first = np.cumsum(pieces) - pieces
    offset = (np.arange(owner.size) - first[owner]) * max_run
    return Runs(
        runs.starts[owner] + offset,
        np.minimum(runs.lengths[owner] - offset, max_run),
        runs.values[owner],
    )


def paint_runs(
    size: int, starts: np.ndarray, lengths: np.ndarray, values: np.ndarray, dtype: np.dtype
) -> np.ndarray:
    """A flat array of ``size`` where run ``i`` writes ``values[i]``; later runs overwrite earlier ones.

    Writes past ``size`` are clipped. Sorted, non-overlapping runs (every ground-truth sequence) take one
    ``np.repeat``; overlapping model output resolves "last run wins" with ``np.maximum.at`` on run indices.
    ``starts``, ``lengths`` are int64 arrays.
    """
    if len(starts) == 0:
        return np.zeros(size, dtype=dtype)
    painted = paint_sorted_runs(size, starts, lengths, values, dtype)
    return painted if painted is not None else _paint_clipped(size, starts, starts + lengths, values, dtype)


def paint_sorted_runs(
    size: int, starts: np.ndarray, lengths: np.ndarray, values: np.ndarray | int, dtype: np.dtype
) -> np.ndarray | None:
    """:func:`paint_runs` for runs that are sorted, disjoint, non-empty and inside (every ground-truth
    sequence): one ``np.repeat`` over gap, run, gap, run, ..., gap. None when they are not.
    ``starts`` must not be empty."""
    r = len(starts)
    ends = starts + lengths
    seg = np.empty(2 * r + 1, dtype=np.int64)
    seg[0] = starts[0]
    seg[2:-1:2] = starts[1:] - ends[:-1]
    seg[1:-1:2] = lengths
    seg[-1] = size - ends[-1]
    if smallest(seg) < 0 or smallest(lengths) < 1:
        return None
    fill = np.zeros(2 * r + 1, dtype=dtype)
    fill[1::2] = values
    return np.repeat(fill, seg)


def _paint_clipped(
    size: int, starts: np.ndarray, ends: np.ndarray, values: np.ndarray, dtype: np.dtype
) -> np.ndarray:
    """paint_runs for overlapping, unsorted or out-of-bounds runs: clip, then "last run wins"."""
    starts = np.maximum(starts, 0)
    ends = np.minimum(ends, size)
    inside = ends > starts
    if not inside.all():
        starts, ends, values = starts[inside], ends[inside], values[inside]
    r = starts.size
    if r == 0:
        return np.zeros(size, dtype=dtype)
    lens = ends - starts
    owner = np.repeat(np.arange(r), lens)
    pos = np.arange(owner.size) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
    top = np.full(size, -1, dtype=np.int64)
    np.maximum.at(top, pos, owner)
    out = np.zeros(size, dtype=dtype)
    hit = top >= 0
    out[hit] = values[top[hit]]
    return out
