"""What every data source provides, and the source registry.

A *source* turns raw files (a Debian package, a wheel, a user's folder) or a generator into labelled
frames. It knows nothing of tokenizers, torch or Lightning: the DataModules do the rest. Each split of a
source is a list of *sequences*; a sequence is one image (1 frame) or one clip (several frames whose
instance ids persist). Image DataModules ask for ``split(name, video=False)`` (every sequence has one
frame), video DataModules for ``split(name, video=True)`` and cut windows of T frames out of each sequence.

Labels of a frame are a semantic map (class ids, 0 = background) and, where the source has instances, a
panoptic map ``class * LABEL_DIVISOR + instance`` (instance 0 = stuff / no instance), as in torchmetrics.

A source may mark pixels *void* (unlabelled: VOC's 255 borders, labelme's ``__ignore__``): its
``ignore_index`` (None for a source without void) is then the value of those pixels in the semantic map,
and ``ignore_index * LABEL_DIVISOR`` in the panoptic map (so ``panoptic // LABEL_DIVISOR`` is the semantic
map, void included). Void is not a class: it does not count in ``num_classes``.

>>> from rleseg.data.sources import list_sources
>>> "composites" in list_sources()
True
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np

from rleseg.data.cache import resolve_data_dir
from rleseg.data.errors import DataError

LABEL_DIVISOR = 1000
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class Clip:
    """Frames ``start:stop`` of one sequence (an image is a clip of one frame).

    Attributes:
        image: uint8 ``[T, H, W, 3]``.
        semantic: int32 ``[T, H, W]`` class ids.
        panoptic: int32 ``[T, H, W]`` panoptic ids ``class * 1000 + instance``, or None for a source
            without instances.
        name: a human-readable id of the sequence (a file name, ``"train/17"``).
    """

    image: np.ndarray
    semantic: np.ndarray
    panoptic: np.ndarray | None
    name: str

    def __post_init__(self) -> None:
        if self.image.ndim != 4 or self.image.shape[-1] != 3 or self.image.dtype != np.uint8:
            raise DataError(
                f"{self.name}: image must be uint8 [T, H, W, 3], got {self.image.dtype} {self.image.shape}"
            )
        if self.semantic.shape != self.image.shape[:3]:
            raise DataError(
                f"{self.name}: mask shape {self.semantic.shape[1:]} differs from "
                f"image shape {self.image.shape[1:3]}"
            )
        if self.panoptic is not None and self.panoptic.shape != self.semantic.shape:
            raise DataError(
                f"{self.name}: panoptic shape {self.panoptic.shape} != semantic {self.semantic.shape}"
            )


class SourceSplit(ABC):
    """One split of a source: ``len()`` sequences, each ``num_frames(i)`` frames of ``frame_shape(i)``.

    ``ignore_index`` is the source's void value (None: no void pixels), so that a dataset built on a
    split alone knows which label pixels are void.
    """

    ignore_index: int | None = None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def num_frames(self, i: int) -> int:
        """Frames in sequence ``i`` (1 for an image split)."""

    @abstractmethod
    def frame_shape(self, i: int) -> tuple[int, int]:
        """(H, W) of the frames of sequence ``i``; cheap (no pixel decoding)."""

    @abstractmethod
    def load(self, i: int, start: int = 0, stop: int | None = None) -> Clip:
        """Frames ``start:stop`` of sequence ``i``."""

    def _check_index(self, i: int, start: int, stop: int | None) -> int:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range for a split of {len(self)}")
        n = self.num_frames(i)
        stop = n if stop is None else stop
        if not 0 <= start < stop <= n:
            raise IndexError(f"frames {start}:{stop} out of range for sequence {i} of {n} frames")
        return stop


class Source(ABC):
    """Base class of registered sources. Construction is cheap: no pixels are read until ``split().load``.

    Subclasses set ``name`` (by ``register_source``), ``install_hint`` (how to get the raw files),
    ``has_video`` and ``has_instances``, and implement ``class_names``, ``thing_classes``, ``prepare``,
    ``is_prepared`` and ``split``.
    """

    name: ClassVar[str] = ""
    install_hint: ClassVar[str] = ""
    has_video: ClassVar[bool] = False
    has_instances: ClassVar[bool] = False
    #: the semantic-map value of void pixels (not a class; see the module docstring); None: no void
    ignore_index: int | None = None

    def __init__(self, data_dir: str | None = None, seed: int = 0) -> None:
        self.data_dir = resolve_data_dir(data_dir)
        self.seed = int(seed)

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Names indexed by class id; ``class_names[0] == "background"``."""

    @property
    def num_classes(self) -> int:
        """N, background included."""
        return len(self.class_names)

    @property
    def thing_classes(self) -> list[int]:
        """Class ids that are countable things (instances); the rest are stuff. Empty without instances."""
        return []

    @property
    def frame_shape(self) -> tuple[int, int] | None:
        """(H, W) shared by every frame of every split, or None where frames differ in size."""
        return None

    def peek_shape(self) -> tuple[int, int] | None:
        """(H, W) of a typical frame, cheaply (the DataModule's default model input size)."""
        return self.frame_shape

    @abstractmethod
    def prepare(self) -> None:
        """Locate the raw files and write the cache (idempotent); raise SourceMissingError if absent."""

    @abstractmethod
    def is_prepared(self) -> bool:
        """Whether ``split`` can run without ``prepare``."""

    @abstractmethod
    def split(self, split: str, *, video: bool = False) -> SourceSplit:
        """The ``train``, ``val`` or ``test`` split, as images (``video=False``) or clips."""

    def _check_split(self, split: str, video: bool) -> None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        if video and not self.has_video:
            raise DataError(
                f"source {self.name!r} has no clips; use the image DataModule or a source with video"
            )

    def cache_path(self, filename: str) -> Path:
        """Path of a cache file of this source under the data dir."""
        return self.data_dir / self.name / filename


S = TypeVar("S", bound=type[Source])
_SOURCES: dict[str, type[Source]] = {}


def register_source(name: str) -> Callable[[S], S]:
    """Class decorator adding a :class:`Source` subclass to the registry under ``name``."""

    def deco(cls: S) -> S:
        if name in _SOURCES and _SOURCES[name] is not cls:
            raise ValueError(f"source {name!r} is already registered by {_SOURCES[name].__qualname__}")
        cls.name = name
        _SOURCES[name] = cls
        return cls

    return deco


def list_sources(pattern: str = "*") -> list[str]:
    """Registered source names matching a glob ``pattern``, sorted.

    >>> list_sources("n*")
    ['nuclei']
    """
    return sorted(n for n in _SOURCES if fnmatch.fnmatch(n, pattern))


def source_class(name: str) -> type[Source]:
    """The class registered under ``name``; an unknown name lists the valid ones."""
    try:
        return _SOURCES[name]
    except KeyError:
        raise DataError(f"unknown source {name!r}; registered sources: {list_sources()}") from None


def create_source(name: str, **cfg: object) -> Source:
    """Build a registered source from its knobs.

    >>> src = create_source("composites", preset="fashion3", canvas=64)
    >>> src.class_names
    ['background', 'top', 'bottom_or_dress', 'footwear_or_bag']

    Raises:
        DataError: unknown name, or a knob the source does not take (the message lists the valid ones).
    """
    cls = source_class(name)
    try:
        return cls(**cfg)
    except TypeError as err:
        import inspect

        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise DataError(f"bad arguments for source {name!r}: {err}; it takes {params}") from err


def class_pixel_counts(semantic: np.ndarray, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Pixels of each class id in ``semantic`` (int64 ``[num_classes]``), void (``ignore_index``) pixels
    left out; raises on an unknown id.

    >>> class_pixel_counts(np.array([[0, 1], [255, 1]]), 2, ignore_index=255).tolist()
    [1, 2]
    """
    flat = np.asarray(semantic).ravel()
    if ignore_index is not None:
        flat = flat[flat != ignore_index]
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        bad = flat[(flat < 0) | (flat >= num_classes)][0]
        raise DataError(f"class id {int(bad)} outside 0..{num_classes - 1}")
    return np.bincount(flat, minlength=num_classes).astype(np.int64)


def summarize(source: Source, *, max_sequences: int = 500, video: bool = False) -> dict:
    """Sequences, frames, shapes and class pixel frequencies of every split of a prepared source.

    By default the image view (one frame per sequence: what the image DataModules train on);
    ``video=True`` summarises the clips. Frequencies are computed over the first ``max_sequences``
    sequences of each split, which is exact for the small real sources and a sample for generated ones
    (reported as ``sampled``). Frequencies are over labelled pixels; ``void_fraction`` is the share of
    void pixels (0 for a source without void).
    """
    out: dict = {
        "source": source.name,
        "num_classes": source.num_classes,
        "class_names": source.class_names,
        "thing_classes": source.thing_classes,
        "ignore_index": source.ignore_index,
        "splits": {},
    }
    for name in SPLITS:
        split = source.split(name, video=video)
        n = len(split)
        take = min(n, max_sequences)
        counts = np.zeros(source.num_classes, dtype=np.int64)
        frames = pixels = 0
        shapes: set[tuple[int, int]] = set()
        for i in range(take):
            clip = split.load(i)
            counts += class_pixel_counts(clip.semantic, source.num_classes, source.ignore_index)
            pixels += clip.semantic.size
            frames += clip.semantic.shape[0]
            shapes.add(clip.semantic.shape[1:])
        out["splits"][name] = {
            "sequences": n,
            "frames": sum(split.num_frames(i) for i in range(n)),
            "shapes": sorted(shapes),
            "sampled": take,
            "class_pixel_freq": (counts / max(1, counts.sum())).tolist(),
            "void_fraction": float(1.0 - counts.sum() / pixels) if pixels else 0.0,
        }
    return out
