"""Video tokenizers (SPEC §4): plain 3-D RLE, time-as-class (TAC) and lengths-and-time-as-class (LTAC).

A sample is a window of T frames, a ``(T, H, W)`` label mask. Subsampling acts on the spatial axes only.

Worked example (SPEC §4, T = 2, frames of 1×4, N = 3, M = 4, explicit offsets):

>>> import numpy as np
>>> from rleseg.tokenizers import create_tokenizer
>>> clip = np.array([[[0, 1, 1, 0]], [[0, 0, 1, 2]]])
>>> offsets = {"start": 1000, "length": 200, "class": 100}
>>> create_tokenizer("tac", num_classes=3, shape=(2, 1, 4), offsets=offsets).encode(clip).tolist()
[1002, 201, 101, 1003, 201, 104, 1004, 201, 106]
>>> create_tokenizer("video_mc", num_classes=3, shape=(2, 1, 4), offsets=offsets).encode(clip).tolist()
[1002, 202, 101, 1007, 201, 101, 1008, 201, 102]
"""

from __future__ import annotations

import numpy as np

from rleseg.tokenizers.image import LengthsAsClassTokenizer, MultiClassRLETokenizer
from rleseg.tokenizers.registry import register_tokenizer
from rleseg.tokenizers.runs import MaskGeometry, label_dtype

_DEFAULT_CLIP = (2, 80, 80)


@register_tokenizer("video_mc")
class VideoMultiClassTokenizer(MultiClassRLETokenizer):
    """Plain 3-D multi-class RLE: the clip flattened as one array (runs may cross frame ends); starts
    range over T·H·W."""

    ndim = 3
    task = "video"

    def __init__(self, num_classes: int = 3, shape: tuple[int, ...] = _DEFAULT_CLIP, **kw) -> None:
        super().__init__(num_classes=num_classes, shape=shape, **kw)


@register_tokenizer("video_lac")
class VideoLengthsAsClassTokenizer(LengthsAsClassTokenizer):
    """Plain 3-D RLE with LAC tokens (k = 2); starts range over T·H·W."""

    ndim = 3
    task = "video"

    def __init__(self, num_classes: int = 3, shape: tuple[int, ...] = _DEFAULT_CLIP, **kw) -> None:
        super().__init__(num_classes=num_classes, shape=shape, **kw)


class _TimeAsClassMixin:
    """Collapses a (T, H, W) clip to one H×W mask labelled ``Σ_t N^t · class_t`` (frame 0 least
    significant) and RLEs it as an image with N^T classes. ``static=True`` selects the static-video task
    (same targets; the model sees frame 0 only)."""

    ndim = 3
    task = "video"
    num_classes: int
    token_shape: tuple[int, ...]
    order: str

    def __init__(
        self, num_classes: int = 3, shape: tuple[int, ...] = _DEFAULT_CLIP, static: bool = False, **kw
    ) -> None:
        self.static = bool(static)
        if self.static:
            self.task = "static_video"
        self.num_frames = int(shape[0]) if len(shape) == 3 else 0
        super().__init__(num_classes=num_classes, shape=shape, **kw)  # type: ignore[call-arg]

    @property
    def frame_geometry(self) -> MaskGeometry:
        return MaskGeometry(self.token_shape[1:], 1, "nearest", self.order)  # type: ignore[arg-type]

    @property
    def num_values(self) -> int:
        return self.num_classes**self.num_frames - 1

    @property
    def flat_size(self) -> int:
        return self.token_shape[1] * self.token_shape[2]

    @property
    def paint_max(self) -> int:
        return self.num_values

    def time_as_class(self, token_mask: np.ndarray) -> np.ndarray:
        """The TAC label of each pixel of a (T, H, W) token mask."""
        tac = token_mask[-1].astype(label_dtype(self.num_values))
        for frame in token_mask[-2::-1]:
            tac = tac * self.num_classes + frame
        return tac

    def _flatten(self, token_mask: np.ndarray) -> np.ndarray:
        return self.frame_geometry.flatten(self.time_as_class(token_mask))

    def _unflatten(self, flat: np.ndarray) -> np.ndarray:
        tac = self.frame_geometry.unflatten(flat)
        power = self.num_classes ** np.arange(self.num_frames, dtype=np.int64)
        frames = (tac[None].astype(np.int64) // power[:, None, None]) % self.num_classes
        return frames.astype(label_dtype(self.num_classes - 1))


@register_tokenizer("tac")
class TimeAsClassTokenizer(_TimeAsClassMixin, MultiClassRLETokenizer):
    """TAC (k = 3): ``start, length, tac`` over the H·W mask of TAC labels; N^T − 1 class tokens."""


@register_tokenizer("ltac")
class LengthsTimeAsClassTokenizer(_TimeAsClassMixin, LengthsAsClassTokenizer):
    """LTAC (k = 2): ``start, M·(tac−1) + length``; M·(N^T − 1) LAC tokens (SPEC §4: the cost moves
    from sequence length to vocabulary)."""
