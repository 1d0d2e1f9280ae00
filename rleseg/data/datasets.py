"""Torch datasets behind the DataModules: windows, patches, augmentation and tokenization per sample.

Everything random about a sample (patch jitter, augmentation) is drawn from a generator seeded by
``(seed, sample index, draw)``, where ``draw`` counts the epochs (see :class:`EpochSampler`). A sample is
therefore identical in any worker process and for any number of workers, and differs from epoch to epoch.
Tokenization happens here, in the workers (``tokenizer.encode_sequence``).

Void pixels (a source's ``ignore_index``, e.g. VOC's 255; see :mod:`rleseg.data.sources.base`): a token
sequence covers every pixel of the mask (runs cannot skip pixels), so the tokens are encoded from the mask
with void set to 0 (background), and ``token_mask`` is that mask subsampled, i.e. exactly what the ground-
truth tokens decode to (no void in it). The label-resolution ``mask`` keeps the void value, so that the
metrics (``ignore_index``) and a dense loss (``ignore_index``) leave those pixels out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from rleseg.data.errors import DataError
from rleseg.data.patches import cut_patches, jitter_origin, patch_origins
from rleseg.data.sources.base import LABEL_DIVISOR, SourceSplit
from rleseg.data.transforms import Augmenter, normalize, resize_clip

__all__ = [
    "EpochSampler",
    "ResumableDataLoader",
    "SegDataset",
    "collate",
    "window_starts",
]


def window_starts(num_frames: int, frames: int, stride: int, cover_end: bool) -> list[int]:
    """Start frames of windows of ``frames`` frames, ``stride`` apart, within a sequence.

    With ``cover_end`` one more window ends flush with the sequence so that every frame is in a window.

    >>> window_starts(10, 4, 4, cover_end=True), window_starts(10, 4, 4, cover_end=False)
    ([0, 4, 6], [0, 4])
    """
    if num_frames < frames:
        return []
    starts = list(range(0, num_frames - frames + 1, stride))
    if cover_end and starts[-1] != num_frames - frames:
        starts.append(num_frames - frames)
    return starts


@dataclass(frozen=True)
class _Item:
    sequence: int
    start: int
    origin: tuple[int, int] | None  # training patch (before jitter); None = whole frame


class EpochSampler(Sampler[int]):
    """Shuffles ``0..n-1`` with a permutation seeded by (seed, epoch) and yields ``epoch * n + index``.

    The dataset reads ``index = key % n`` and ``draw = key // n``: randomness then depends on the sample
    and the epoch only, never on the worker that loads it. Each ``iter()`` is one epoch, unless the
    epoch is set from outside (``set_epoch``, which Lightning calls at every epoch start: the epoch then
    follows the trainer's, also after a resume). ``skip(k)`` makes the next epoch start at its k-th
    sample (a run resumed mid-epoch, see :class:`ResumableDataLoader`).

    >>> s = EpochSampler(3, seed=0)
    >>> sorted(k % 3 for k in s), min(iter(s)) >= 3
    ([0, 1, 2], True)
    >>> s.set_epoch(1); s.skip(2); len(list(s))
    1
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), bool(shuffle), 0
        self.current_epoch = 0  # the epoch of the latest iter()
        self._managed = False
        self._skip = 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next ``iter()`` (and stop counting epochs by ``iter()`` calls)."""
        self.epoch, self._managed = int(epoch), True

    def skip(self, samples: int) -> None:
        """Start the next epoch at its ``samples``-th sample (once)."""
        self._skip = max(0, int(samples))

    def __iter__(self) -> Iterator[int]:
        epoch, skip, self._skip = self.epoch, self._skip, 0
        self.current_epoch = epoch
        if not self._managed:
            self.epoch += 1
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(self.n)
            if self.shuffle
            else np.arange(self.n)
        )
        return iter((epoch * self.n + order[skip:]).tolist())


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` whose position is saved in checkpoints.

    Lightning stores ``state_dict()`` of a training loader in every checkpoint (``_Stateful``) and calls
    ``load_state_dict`` on resume before the first ``iter()``: the resumed run continues the same epoch's
    permutation after the batches already trained on, so it sees exactly the samples, in the order, of
    an uninterrupted run (without it, a resumed run replayed epoch 0's shuffle from its beginning).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches = 0

    def _epoch_sampler(self) -> EpochSampler | None:
        # None under a sampler Lightning put in front of ours (DDP): its position is then not saved
        return self.sampler if isinstance(self.sampler, EpochSampler) else None

    def __iter__(self) -> Iterator[Any]:
        sampler = self._epoch_sampler()
        self._batches = (sampler._skip // (self.batch_size or 1)) if sampler is not None else 0
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler = self._epoch_sampler()
        if sampler is None:
            return {}
        return {"epoch": sampler.current_epoch, "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self._epoch_sampler()
        if sampler is None or not state:
            return
        if state["batches"] >= len(self):  # saved after the epoch's last batch: the next epoch is whole
            sampler.set_epoch(state["epoch"] + 1)
        else:
            sampler.set_epoch(state["epoch"])
            sampler.skip(state["batches"] * (self.batch_size or 1))


class SegDataset(Dataset):
    """Samples of one split: windows of ``frames`` frames, optional resize, patches and augmentation, tokens.

    Args:
        split: the source split (sequences of frames).
        tokenizer: the model-input tokenizer (shape = patch or image size; video: with T).
        labels: ``"semantic"`` or ``"panoptic"`` label maps.
        frames: T (0 for an image dataset: no time axis in the outputs).
        stride: window stride in frames (video).
        train: random patches and augmentation; else whole frames, no augmentation.
        image_size: resize every frame to (h, w) first; None keeps the source size.
        patch_size, patch_stride, patch_jitter: patches (None = whole frames). Training yields one random
            patch per item (grid position plus jitter); evaluation yields whole frames plus the tokens of
            every grid patch (``patch_tokens`` etc.), the model input being stitched back by the module.
        augmenter: joint augmentation (training only).
        seed: base seed of all per-sample randomness.
        limit: keep the first ``limit`` items.
        full_tokenizer: ``shape -> tokenizer`` for the whole-frame token mask in patched evaluation.
        ignore_index: the void value of the semantic labels; None (default): the split's own
            (``split.ignore_index``). Void is ``ignore_index`` in semantic labels and
            ``ignore_index * LABEL_DIVISOR`` in panoptic ones (their class is ``ignore_index``).

    Items: ``image``, ``index``, ``mask`` (labels at label resolution, void kept), ``tokens``,
    ``truncated``, ``num_runs`` and ``token_mask`` (from the labels with void as background; see the module
    docstring), or in patched evaluation ``token_mask`` and ``patch_*``; video items add ``clip`` and
    ``frame_ids``.
    """

    def __init__(
        self,
        split: SourceSplit,
        tokenizer: Any,
        *,
        labels: str = "semantic",
        frames: int = 0,
        stride: int = 1,
        train: bool = False,
        image_size: tuple[int, int] | None = None,
        patch_size: tuple[int, int] | None = None,
        patch_stride: tuple[int, int] | None = None,
        patch_jitter: int = 0,
        augmenter: Augmenter | None = None,
        seed: int = 0,
        limit: int | None = None,
        full_tokenizer: Callable[[tuple[int, ...]], Any] | None = None,
        ignore_index: int | None = None,
    ) -> None:
        self.split, self.tokenizer, self.labels = split, tokenizer, labels
        self.ignore_index = ignore_index if ignore_index is not None else getattr(split, "ignore_index", None)
        self.frames, self.train, self.image_size, self.seed = frames, train, image_size, int(seed)
        self.patch_size, self.patch_stride, self.patch_jitter = patch_size, patch_stride, int(patch_jitter)
        self.augmenter = augmenter if train and augmenter else None
        self.full_tokenizer = full_tokenizer
        T = max(frames, 1)
        items: list[_Item] = []
        too_short = 0
        for i in range(len(split)):
            starts = window_starts(split.num_frames(i), T, stride, cover_end=not train)
            too_short += not starts
            shape = self.image_size or split.frame_shape(i)
            origins = (
                [tuple(o) for o in patch_origins(shape, patch_size, patch_stride).tolist()]
                if train and patch_size is not None
                else [None]
            )
            items += [_Item(i, s, o) for s in starts for o in origins]
            if limit is not None and len(items) >= limit:
                break
        if not items:
            raise DataError(
                f"no samples: {len(split)} sequence(s), {too_short} shorter than frames={T}"
                if too_short
                else f"no samples in a split of {len(split)} sequence(s)"
            )
        self.items = items[:limit] if limit is not None else items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int) -> dict[str, Any]:
        index, draw = int(key) % len(self.items), int(key) // len(self.items)
        item = self.items[index]
        rng = np.random.default_rng([self.seed, index, draw])
        T = max(self.frames, 1)
        clip = self.split.load(item.sequence, item.start, item.start + T)
        labels = clip.panoptic if self.labels == "panoptic" else clip.semantic
        if labels is None:
            raise DataError(
                f"{clip.name}: this source has no instance labels; the panoptic DataModule needs them"
            )
        image = clip.image
        if self.image_size is not None:
            image, labels = resize_clip(image, labels, self.image_size)
        if item.origin is not None:
            y, x = jitter_origin(item.origin, self.patch_jitter, image.shape[1:3], self.patch_size, rng)
            h, w = self.patch_size
            image, labels = image[:, y : y + h, x : x + w], labels[:, y : y + h, x : x + w]
        if self.augmenter is not None:
            image, labels = self.augmenter(image, labels, seed=int(rng.integers(2**31)))
        if self.frames == 0:  # image datasets carry no time axis
            image, labels = image[0], labels[0]
        out: dict[str, Any] = {"image": torch.from_numpy(normalize(image)), "index": torch.tensor(index)}
        out["mask"] = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
        labels = self.without_void(labels)  # what the tokens describe: void as background
        try:
            if self.patch_size is not None and not self.train:
                out.update(self._patched_targets(labels))
            else:
                seq, truncated, num_runs = self.tokenizer.encode_sequence(labels)
                out["tokens"] = torch.from_numpy(np.asarray(seq, dtype=np.int64))
                out["truncated"] = torch.tensor(bool(truncated))
                out["num_runs"] = torch.tensor(int(num_runs), dtype=torch.int64)
                out["token_mask"] = torch.from_numpy(
                    np.asarray(self.tokenizer.subsample(labels), dtype=np.int64)
                )
        except ValueError as err:  # TokenizerError: unknown class id, wrong shape, ...
            raise DataError(f"{clip.name}: cannot tokenize its mask: {err}") from err
        if self.frames:
            out["clip"] = torch.tensor(item.sequence, dtype=torch.int64)
            out["frame_ids"] = torch.arange(item.start, item.start + T, dtype=torch.int64)
        return out

    def void(self, labels: np.ndarray) -> np.ndarray | None:
        """Where ``labels`` are void (bool, same shape), or None where nothing is."""
        if self.ignore_index is None:
            return None
        classes = labels // LABEL_DIVISOR if self.labels == "panoptic" else labels
        void = classes == self.ignore_index
        return void if void.any() else None

    def without_void(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` with void pixels set to 0 (background): what a token sequence can describe."""
        void = self.void(labels)
        return labels if void is None else np.where(void, 0, labels).astype(labels.dtype)

    def _patched_targets(self, labels: np.ndarray) -> dict[str, torch.Tensor]:
        """Whole-frame token mask plus the token sequences of every grid patch (evaluation with patches)."""
        patches, origins = cut_patches(labels, self.patch_size, self.patch_stride)
        encoded = [self.tokenizer.encode_sequence(p) for p in patches]
        full = self.full_tokenizer(labels.shape) if self.full_tokenizer else None
        token_mask = full.subsample(labels) if full is not None else labels
        return {
            "token_mask": torch.from_numpy(np.asarray(token_mask, dtype=np.int64)),
            "patch_tokens": torch.from_numpy(np.stack([np.asarray(e[0], dtype=np.int64) for e in encoded])),
            "patch_truncated": torch.tensor([bool(e[1]) for e in encoded]),
            "patch_num_runs": torch.tensor([int(e[2]) for e in encoded], dtype=torch.int64),
            "patch_origins": torch.from_numpy(origins),
        }


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` with a readable error when samples of one batch differ in size."""
    shapes = {tuple(b["image"].shape) for b in batch}
    if len(shapes) > 1:
        raise DataError(
            f"samples of one batch differ in size {sorted(shapes)}; set image_size (resize) or batch_size 1"
        )
    return default_collate(list(batch))
