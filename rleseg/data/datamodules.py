"""The image, video and panoptic DataModules: a source, a tokenizer, and batches of token sequences.

Each DataModule is built from plain YAML values by LightningCLI, creates its tokenizer in ``__init__``
(cheap; a bad combination fails right there, saying what to change) and exposes what the model needs
before ``setup``: ``tokenizer``, ``vocab_size``, ``max_seq_len``, ``num_classes``, ``class_names``,
``thing_classes``, ``task``, ``in_chans``, ``input_size``, ``frames``, ``label_divisor``, ``patch_size``,
``patch_stride``.

Batches (dicts of tensors; ``[T]`` only for video):

* ``image`` float32 ``[B, (T,) 3, H, W]``, ImageNet-normalised (see :mod:`rleseg.data.transforms`);
  static video carries all T frames (the model uses frame 0).
* ``mask`` int64 ``[B, (T,) H, W]`` labels at input resolution (panoptic: ``class * 1000 + instance``).
* ``tokens`` int64 ``[B, max_seq_len]`` = prompt + content + EOS + PAD; ``truncated`` bool ``[B]``;
  ``num_runs`` int64 ``[B]``; ``token_mask`` int64 ``[B, (T,) h, w]`` (the mask subsampled by the
  tokenizer, which the tokens decode to exactly unless truncated); ``index`` int64 ``[B]``.
* video also: ``clip`` int64 ``[B]`` (sequence id) and ``frame_ids`` int64 ``[B, T]`` (frames of the
  window in its sequence), so overlapping evaluation windows can be merged per frame.
* evaluation with patches (``patch_size`` set): val/test batches hold WHOLE frames (``image``, ``mask``,
  and ``token_mask`` subsampled from the whole mask) and, instead of ``tokens``/``truncated``/``num_runs``,
  the targets of every grid patch: ``patch_tokens`` ``[B, P, max_seq_len]``, ``patch_truncated``
  ``[B, P]``, ``patch_num_runs`` ``[B, P]``, ``patch_origins`` ``[B, P, 2]`` (pixels, the order of
  :func:`rleseg.data.patches.cut_patches`). The module cuts the image with ``cut_patches(image,
  dm.patch_size, dm.patch_stride)`` and stitches the decoded patches with
  ``stitch_patches(preds, origins, token_mask.shape[-2:], scale=s)``.
* predict: lists of items (``raw`` uint8 images or clips as on disk, ``path``, ``frames``) from
  ``predict_path``, one per batch; :class:`rleseg.inference.Segmenter` prepares them (see
  :mod:`rleseg.data.predict`).

>>> from rleseg.data import ImageSegDataModule
>>> dm = ImageSegDataModule(source="composites", tokenizer="lac", max_seq_len=128,
...                         tokenizer_args={"subsample": 2})
>>> dm.task, dm.num_classes, dm.input_size, dm.tokenizer.token_shape
('image', 4, (64, 64), (32, 32))
"""

from __future__ import annotations

import importlib
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from rleseg.data.datasets import EpochSampler, ResumableDataLoader, SegDataset, collate
from rleseg.data.errors import DataError
from rleseg.data.predict import PredictDataset, collate_items
from rleseg.data.sources.base import LABEL_DIVISOR, Source, create_source
from rleseg.data.transforms import Augmenter

__all__ = ["ImageSegDataModule", "PanopticDataModule", "VideoSegDataModule", "min_sequence_length"]

Size = int | tuple[int, int] | list[int]


def _size(value: Size | None, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    out = (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != 2 or min(out) < 1:
        raise DataError(f"{what} must be a positive int or [h, w], got {value!r}")
    return out  # type: ignore[return-value]


def min_sequence_length(tokenizer: Any) -> int:
    """The shortest model sequence holding one non-empty record: prompt + shortest content + EOS.

    Found from the tokenizer's grammar: a breadth-first search for the shortest non-empty path from the
    start state back to an accepting state.
    """
    grammar = tokenizer.grammar
    frontier: deque[tuple[int, int]] = deque((t.next_state, 1) for t in grammar.states[0])
    seen: set[int] = set()
    while frontier:
        state, depth = frontier.popleft()
        if state in grammar.accepting:
            return depth + 2
        if state in seen:
            continue
        seen.add(state)
        frontier.extend((t.next_state, depth + 1) for t in grammar.states[state])
    raise DataError(f"tokenizer {tokenizer.name!r}: its grammar never reaches an accepting state")


def _tokenizer_class(name: str) -> type:
    """A registered tokenizer class, or one given by its import path (``package.module.Class``)."""
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise DataError(f"cannot import tokenizer class {name!r}: {err}") from err
    from rleseg.tokenizers import list_tokenizers
    from rleseg.tokenizers.registry import tokenizer_class

    try:
        return tokenizer_class(name)
    except ValueError:
        raise DataError(f"unknown tokenizer {name!r}; registered tokenizers: {list_tokenizers()}") from None


class _SegDataModule(LightningDataModule):
    """Shared machinery; use :class:`ImageSegDataModule`, :class:`VideoSegDataModule` or
    :class:`PanopticDataModule`."""

    #: tokenizer tasks this DataModule accepts
    tasks: ClassVar[tuple[str, ...]] = ("image",)
    labels: ClassVar[str] = "semantic"
    is_video: ClassVar[bool] = False
    kind: ClassVar[str] = "image"

    def __init__(
        self,
        source: str = "composites",
        source_args: dict[str, Any] | None = None,
        tokenizer: str = "lac",
        tokenizer_args: dict[str, Any] | None = None,
        max_seq_len: int = 512,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        image_size: Size | None = None,
        patch_size: Size | None = None,
        patch_stride: Size | None = None,
        patch_jitter: int = 0,
        augment: dict[str, Any] | None = None,
        limit_train: int | None = None,
        limit_val: int | None = None,
        predict_path: str | None = None,
        frames: int = 1,
        train_stride: int = 1,
        eval_stride: int | None = None,
        static: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1 or num_workers < 0:
            raise DataError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.limit_train, self.limit_val, self.predict_path = limit_train, limit_val, predict_path
        self.source: Source = create_source(source, **(source_args or {}))
        if self.labels == "panoptic" and not self.source.has_instances:
            raise DataError(f"source {source!r} has no instance labels; the panoptic DataModule needs them")
        if self.is_video and not self.source.has_video:
            raise DataError(f"source {source!r} has no clips; use ImageSegDataModule, or a source with video")
        self.frames = int(frames) if self.is_video else 1
        if self.frames < 1:
            raise DataError(f"frames must be >= 1, got {frames}")
        self.train_stride = int(train_stride)
        self.eval_stride = int(eval_stride) if eval_stride is not None else self.frames
        if self.train_stride < 1 or self.eval_stride < 1:
            raise DataError(f"train_stride and eval_stride must be >= 1, got {train_stride}, {eval_stride}")
        self.static = bool(static)
        self.image_size = _size(image_size, "image_size")
        self.patch_size = _size(patch_size, "patch_size")
        self.patch_stride = _size(patch_stride, "patch_stride") or self.patch_size
        if self.patch_stride is not None and self.patch_size is None:
            raise DataError("patch_stride is set but patch_size is not; set patch_size too")
        if patch_jitter < 0:
            raise DataError(f"patch_jitter must be >= 0, got {patch_jitter}")
        self.patch_jitter = int(patch_jitter)
        self.augment = dict(augment) if augment else None
        self.augmenter = Augmenter(self.augment) if self.augment else None

        self.num_classes = self.source.num_classes
        self.class_names = self.source.class_names
        self.thing_classes = self.source.thing_classes
        self.label_divisor = LABEL_DIVISOR
        self.in_chans = 3
        self.full_size = self.image_size or self.source.peek_shape()
        if self.patch_size is not None:
            self.input_size = self.patch_size
            if self.full_size is not None and (
                self.patch_size[0] > self.full_size[0] or self.patch_size[1] > self.full_size[1]
            ):
                raise DataError(f"patch_size {self.patch_size} is larger than the images {self.full_size}")
        elif self.full_size is not None:
            self.input_size = self.full_size
        else:
            raise DataError(f"source {source!r} has images of no fixed size; set image_size or patch_size")
        self.tokenizer_name = tokenizer
        self.tokenizer_args = dict(tokenizer_args or {})
        self.max_seq_len = int(max_seq_len)
        self.tokenizer = self._make_tokenizer(self._label_shape(self.input_size))
        # how to rebuild it (the model saves this in its checkpoint: rleseg.module.DataInfo)
        self.tokenizer_spec = {"name": self.tokenizer.name, "args": dict(self._tokenizer_cfg)}
        self.ignore_index = getattr(self.source, "ignore_index", None)
        self.task = self.tokenizer.task
        self.vocab_size = int(self.tokenizer.vocab_size)
        need = min_sequence_length(self.tokenizer)
        if self.max_seq_len < need:
            raise DataError(
                f"max_seq_len={max_seq_len} cannot hold a single record of tokenizer {tokenizer!r} "
                f"(prompt + {need - 2} tokens + EOS = {need}); raise max_seq_len to at least {need}"
            )
        self._check_patch_alignment()
        self.datasets: dict[str, Any] = {}
        self._full_tokenizers: dict[tuple[int, ...], Any] = {}

    # ------------------------------------------------------------------ tokenizer
    def _label_shape(self, size: Sequence[int]) -> tuple[int, ...]:
        return (self.frames, *size) if self.is_video else tuple(size)

    def _make_tokenizer(self, shape: tuple[int, ...], whole_frame: bool = False) -> Any:
        """The tokenizer for label masks of ``shape``; ``whole_frame`` builds the one that only subsamples
        whole frames in patched evaluation (no sequence length, no run limit)."""
        from rleseg.tokenizers.registry import accepted_options

        name = self.tokenizer_name
        cls = _tokenizer_class(name)
        task = getattr(cls, "task", None)
        if task not in self.tasks:
            from rleseg.tokenizers import list_tokenizers

            fitting = [
                n for n in list_tokenizers() if getattr(_tokenizer_class(n), "task", None) in self.tasks
            ]
            raise DataError(
                f"tokenizer {name!r} is for task {task!r}; {type(self).__name__} needs a {self.kind} "
                f"tokenizer: one of {fitting}"
            )
        options = accepted_options(cls)
        cfg: dict[str, Any] = {"num_classes": self.num_classes, "max_seq_len": self.max_seq_len}
        stuff = [c for c in range(1, self.num_classes) if c not in set(self.thing_classes)]
        for key, value in (("stuff_classes", stuff), ("thing_classes", self.thing_classes)):
            if key in options:  # the panoptic scheme needs to know which classes have instances
                cfg[key] = value
        if self.static:
            if "static" not in options:
                raise DataError(
                    f"static=True needs a tokenizer with a static mode (tac, ltac); {name!r} has none"
                )
            cfg["static"] = True
        cfg.update(self.tokenizer_args)
        given = cfg.pop("shape", None)
        if given is not None and tuple(given) != shape and not whole_frame:
            raise DataError(
                f"tokenizer_args.shape {tuple(given)} disagrees with the model input {shape}, which the "
                "DataModule derives from image_size / patch_size (and frames); drop shape from tokenizer_args"
            )
        cfg["shape"] = shape
        if whole_frame:
            cfg.pop("max_run", None)  # a run limit chosen for the patch width need not suit the whole frame
            cfg["max_seq_len"] = None
        try:
            tokenizer = cls(**cfg)
            if not whole_frame:
                self._tokenizer_cfg = cfg
            return tokenizer
        except (TypeError, ValueError) as err:
            raise DataError(f"cannot build tokenizer {name!r} with {cfg}: {err}") from err

    def _full_tokenizer(self, shape: tuple[int, ...]) -> Any:
        """A tokenizer of the same scheme for a whole frame (its ``subsample`` gives the full token mask)."""
        shape = tuple(int(v) for v in shape)
        if shape not in self._full_tokenizers:
            self._full_tokenizers[shape] = self._make_tokenizer(shape, whole_frame=True)
        return self._full_tokenizers[shape]

    def _check_patch_alignment(self) -> None:
        s = int(getattr(self.tokenizer, "subsample_factor", self.tokenizer_args.get("subsample", 1)) or 1)
        self.subsample = s
        if self.patch_size is None or s == 1:
            return
        sizes = {
            "patch_size": self.patch_size,
            "patch_stride": self.patch_stride,
            "image size": self.full_size,
        }
        for what, value in sizes.items():
            if value is not None and (value[0] % s or value[1] % s):
                raise DataError(
                    f"{what} {value} must be a multiple of the subsampling factor {s}, so that stitched "
                    "patch token masks line up with the whole image's token mask"
                )

    # ------------------------------------------------------------------ data
    def prepare_data(self) -> None:
        """Locate the raw files and cache the prepared arrays (once, on the first process of a node)."""
        self.source.prepare()

    def setup(self, stage: str | None = None) -> None:
        if not self.source.is_prepared():
            self.source.prepare()
        wanted = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
            None: ("train", "val", "test"),
        }
        for split in wanted.get(stage, ("train", "val", "test")):
            if split not in self.datasets:
                self.datasets[split] = self._make_dataset(split)

    def _make_dataset(self, split: str) -> Any:
        if split == "predict":
            if not self.predict_path:
                raise DataError(
                    "predict needs predict_path (a folder of images; clips as subfolders for video)"
                )
            return PredictDataset(self.predict_path, video=self.is_video)
        train = split == "train"
        data = self.source.split(split, video=self.is_video)
        if self.patch_size is None and self.image_size is None:
            for i in range(min(len(data), 1 if self.source.frame_shape else len(data))):
                if data.frame_shape(i) != tuple(self.input_size):
                    raise DataError(
                        f"{split} sequence {i} is {data.frame_shape(i)}, the model input is "
                        f"{self.input_size}; set image_size (resize) or patch_size"
                    )
        return SegDataset(
            data,
            self.tokenizer,
            labels=self.labels,
            frames=self.frames if self.is_video else 0,
            stride=self.train_stride if train else self.eval_stride,
            train=train,
            image_size=self.image_size,
            patch_size=self.patch_size,
            patch_stride=self.patch_stride,
            patch_jitter=self.patch_jitter,
            augmenter=self.augmenter,
            seed=self.seed + {"train": 0, "val": 1, "test": 2}[split],
            limit=self.limit_train if train else self.limit_val,
            full_tokenizer=self._full_tokenizer,
        )

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[split])
        ds = self.datasets[split]
        if split == "predict":  # raw images of any size, one at a time (rleseg.inference prepares them)
            return DataLoader(ds, batch_size=1, num_workers=self.num_workers, collate_fn=collate_items)
        return (ResumableDataLoader if split == "train" else DataLoader)(
            ds,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(ds), seed=self.seed) if split == "train" else None,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def describe(self) -> str:
        """One paragraph: source, classes, sizes, tokenizer."""
        return (
            f"{type(self).__name__}: source {self.source.name} ({self.num_classes} classes), input "
            f"{self.input_size}{f' x {self.frames} frames' if self.is_video else ''}, patches "
            f"{self.patch_size}/{self.patch_stride}, task {self.task}, max_seq_len {self.max_seq_len}\n"
            f"{self.tokenizer.describe()}"
        )


#: the arguments every DataModule shares (their help text in ``--data.help``)
_SHARED_ARGS = """\
        source: registered source name (``composites``, ``mri``, ``nuclei``, ``folder``).
        source_args: the source's knobs (e.g. ``{"preset": "fashion3", "num_train": 3000}``).
        tokenizer: registered tokenizer name, or the import path of a Tokenizer class.
        tokenizer_args: tokenizer knobs (``subsample``, ``max_run``, ...); ``shape`` and ``num_classes``
            are filled in from the data unless given.
        max_seq_len: model sequence length (prompt + content + EOS + PAD).
        batch_size: samples per batch (validation and test use the same).
        num_workers: DataLoader worker processes (0: load in the main process).
        seed: all sampling (shuffle, patch jitter, augmentation) derives from it.
        image_size: resize every frame to this (int or [h, w]); None keeps the source size.
        patch_size: cut inputs into patches of this size (int or [h, w]; None = whole images): training
            yields random grid patches, evaluation whole images scored patch by patch.
        patch_stride: distance between grid patches (default: ``patch_size``, no overlap).
        patch_jitter: training patches move by up to this many pixels off the grid.
        augment: albumentations config (see :mod:`rleseg.data.transforms`); None = off. Never in eval.
        limit_train: keep only the first N training samples (tiny runs, tests).
        limit_val: keep only the first N validation samples.
        predict_path: folder of images for ``predict``.
"""


class ImageSegDataModule(_SegDataModule):
    __doc__ = (
        """Semantic segmentation of images with an image tokenizer (``binary``, ``mc``, ``lac``,
    ``mc2d``, ``lac2d``, ``dense``, ``gap``, ``rowwise``).

    Args:
"""
        + _SHARED_ARGS
    )

    def __init__(
        self,
        source: str = "composites",
        source_args: dict[str, Any] | None = None,
        tokenizer: str = "lac",
        tokenizer_args: dict[str, Any] | None = None,
        max_seq_len: int = 512,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        image_size: Size | None = None,
        patch_size: Size | None = None,
        patch_stride: Size | None = None,
        patch_jitter: int = 0,
        augment: dict[str, Any] | None = None,
        limit_train: int | None = None,
        limit_val: int | None = None,
        predict_path: str | None = None,
    ) -> None:
        super().__init__(
            source=source,
            source_args=source_args,
            tokenizer=tokenizer,
            tokenizer_args=tokenizer_args,
            max_seq_len=max_seq_len,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            image_size=image_size,
            patch_size=patch_size,
            patch_stride=patch_stride,
            patch_jitter=patch_jitter,
            augment=augment,
            limit_train=limit_train,
            limit_val=limit_val,
            predict_path=predict_path,
        )


class PanopticDataModule(_SegDataModule):
    __doc__ = (
        """Panoptic segmentation: masks are panoptic ids ``class * 1000 + instance`` (instance 0 =
    stuff), tokenized by a panoptic tokenizer (``panoptic``); ``thing_classes`` come from the source.

    Args:
"""
        + _SHARED_ARGS
    )

    tasks = ("panoptic",)
    labels = "panoptic"
    kind = "panoptic"

    def __init__(
        self,
        source: str = "composites",
        source_args: dict[str, Any] | None = None,
        tokenizer: str = "panoptic",
        tokenizer_args: dict[str, Any] | None = None,
        max_seq_len: int = 512,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        image_size: Size | None = None,
        patch_size: Size | None = None,
        patch_stride: Size | None = None,
        patch_jitter: int = 0,
        augment: dict[str, Any] | None = None,
        limit_train: int | None = None,
        limit_val: int | None = None,
        predict_path: str | None = None,
    ) -> None:
        super().__init__(
            source=source,
            source_args=source_args,
            tokenizer=tokenizer,
            tokenizer_args=tokenizer_args,
            max_seq_len=max_seq_len,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            image_size=image_size,
            patch_size=patch_size,
            patch_stride=patch_stride,
            patch_jitter=patch_jitter,
            augment=augment,
            limit_train=limit_train,
            limit_val=limit_val,
            predict_path=predict_path,
        )


class VideoSegDataModule(_SegDataModule):
    __doc__ = (
        """Video segmentation: windows of ``frames`` consecutive frames, tokenized by a video tokenizer
    (``video_mc``, ``video_lac``, ``tac``, ``ltac``).

    Args:
        frames: T, frames per window.
        train_stride: window stride for training (default 1: every window).
        eval_stride: window stride for validation/test (default T: non-overlapping; the last window of a
            sequence ends flush with it, so every frame is evaluated).
        static: static-video mode (tac/ltac with ``static=True``): the batch still carries all T frames,
            the model looks at frame 0 only, the target is the whole window.
"""
        + _SHARED_ARGS
    )

    tasks = ("video", "static_video")
    is_video = True
    kind = "video"

    def __init__(
        self,
        source: str = "composites",
        source_args: dict[str, Any] | None = None,
        tokenizer: str = "tac",
        tokenizer_args: dict[str, Any] | None = None,
        max_seq_len: int = 512,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        image_size: Size | None = None,
        patch_size: Size | None = None,
        patch_stride: Size | None = None,
        patch_jitter: int = 0,
        augment: dict[str, Any] | None = None,
        limit_train: int | None = None,
        limit_val: int | None = None,
        predict_path: str | None = None,
        frames: int = 2,
        train_stride: int = 1,
        eval_stride: int | None = None,
        static: bool = False,
    ) -> None:
        super().__init__(
            source=source,
            source_args=source_args,
            tokenizer=tokenizer,
            tokenizer_args=tokenizer_args,
            max_seq_len=max_seq_len,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            image_size=image_size,
            patch_size=patch_size,
            patch_stride=patch_stride,
            patch_jitter=patch_jitter,
            augment=augment,
            limit_train=limit_train,
            limit_val=limit_val,
            predict_path=predict_path,
            frames=frames,
            train_stride=train_stride,
            eval_stride=eval_stride,
            static=static,
        )
