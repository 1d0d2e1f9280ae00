"""Planning statistics for a tokenizer on a set of masks (SPEC §8): sequence lengths, vocabulary, truncation
and the metric ceiling at token resolution. Also seeded synthetic blob masks, so planning and benchmarks
work with no data.

>>> from rleseg.tokenizers import create_tokenizer
>>> tok = create_tokenizer("lac", num_classes=3, shape=(80, 80), subsample=2, max_seq_len=256)
>>> s = token_stats(synthetic_masks(4, (80, 80), 3, seed=0), tok)
>>> s.masks, s.vocab_size == tok.vocab_size, 0.0 <= s.truncated_fraction <= 1.0, s.dice_ceiling > 0.8
(4, True, True, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from rleseg.tokenizers.base import Tokenizer
from rleseg.tokenizers.panoptic import IDS_PER_CLASS
from rleseg.tokenizers.runs import upsample


def _interpolation(size: int, cells: int) -> np.ndarray:
    """Matrix (size × cells) of linear interpolation from ``cells`` control points to ``size`` pixels."""
    x = np.linspace(0, cells - 1, size)
    lo = np.minimum(np.floor(x).astype(int), cells - 2)
    frac = x - lo
    out = np.zeros((size, cells))
    out[np.arange(size), lo] = 1 - frac
    out[np.arange(size), lo + 1] = frac
    return out


def synthetic_masks(
    count: int,
    shape: tuple[int, ...] = (80, 80),
    num_classes: int = 3,
    *,
    seed: int = 0,
    cells: int = 6,
    coverage: float = 0.5,
    noise: float = 0.0,
    kind: str = "image",
) -> Iterator[np.ndarray]:
    """Seeded random blob label masks: smooth random fields per class, the strongest wins where it is
    in the top ``coverage`` fraction, background elsewhere.

    Args:
        shape: (H, W), or (T, H, W) for clips (the blobs drift one pixel right per frame).
        cells: control points per side of the random fields (more cells: smaller blobs).
        noise: fraction of pixels replaced by a random class (salt-and-pepper, the worst case for RLE).
        kind: ``"image"`` (class ids) or ``"panoptic"`` (``class*1000 + instance``, the instance being
            the quadrant of the mask a pixel lies in).
    """
    rng = np.random.default_rng(seed)
    *lead, h, w = shape
    frames = lead[0] if lead else 1
    rows, cols = _interpolation(h, cells), _interpolation(w + frames - 1, cells)
    for _ in range(count):
        low = rng.standard_normal((num_classes - 1, cells, cells))
        fields = rows @ low @ cols.T
        top = fields.max(axis=0)
        labels = np.where(top > np.quantile(top, 1 - coverage), fields.argmax(axis=0) + 1, 0).astype(np.uint8)
        clip = np.stack([labels[:, frames - 1 - t : frames - 1 - t + w] for t in range(frames)])
        if noise:
            flip = rng.random(clip.shape) < noise
            clip[flip] = rng.integers(0, num_classes, size=int(flip.sum()))
        if kind == "panoptic":
            yy, xx = np.indices((h, w))
            quadrant = 1 + 2 * (yy >= h // 2) + (xx >= w // 2)
            clip = np.where(clip > 0, clip.astype(np.int32) * IDS_PER_CLASS + quadrant, 0)
        yield clip if lead else clip[0]


@dataclass
class TokenStats:
    """What :func:`token_stats` measures for one tokenizer on one set of masks."""

    tokenizer: str
    masks: int
    vocab_size: int
    tokens_per_run: int
    runs: tuple[float, float, int]  # p50, p95, max
    tokens: tuple[float, float, int]  # sequence length (prompt + content + EOS): p50, p95, max
    max_seq_len: int | None
    truncated_fraction: float  # 0 without max_seq_len
    dice_ceiling: float  # mean foreground Dice of the token-resolution round trip, upsampled
    dice_truncated: float | None  # the same through the truncated sequence (max_seq_len set)
    class_dice: dict[int, float] = field(default_factory=dict)
    void_fraction: float = 0.0  # share of void pixels (encoded as background, not scored)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a side-by-side table."""

        def dist(x: tuple[float, float, int]) -> str:
            return f"{x[0]:.0f} / {x[1]:.0f} / {x[2]}"

        rows = [
            ("masks", str(self.masks)),
            ("vocab size", str(self.vocab_size)),
            ("tokens per run", str(self.tokens_per_run)),
            ("runs p50/p95/max", dist(self.runs)),
            ("tokens p50/p95/max", dist(self.tokens)),
            ("max_seq_len", "-" if self.max_seq_len is None else str(self.max_seq_len)),
            ("truncated", f"{100 * self.truncated_fraction:.1f}%"),
            ("Dice ceiling", f"{self.dice_ceiling:.4f}"),
        ]
        if self.dice_truncated is not None:
            rows.append(("Dice ceiling, truncated", f"{self.dice_truncated:.4f}"))
        if self.void_fraction:
            rows.append(("void pixels", f"{100 * self.void_fraction:.1f}%"))
        return rows


class DiceAccumulator:
    """Per-class Dice averaged over the images where the class is present in prediction or truth (SPEC §8)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.total = np.zeros(num_classes)
        self.count = np.zeros(num_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add one image; ``valid`` (bool, same shape) leaves the other pixels (void) out."""
        if valid is not None:
            pred, truth = np.asarray(pred)[valid], np.asarray(truth)[valid]
        n = self.num_classes
        joint = np.bincount(truth.ravel().astype(np.int64) * n + pred.ravel(), minlength=n * n).reshape(n, n)
        tp = np.diag(joint).astype(np.float64)
        size = joint.sum(axis=0) + joint.sum(axis=1)
        seen = size > 0
        self.total[seen] += 2 * tp[seen] / size[seen]
        self.count[seen] += 1

    def per_class(self) -> dict[int, float]:
        return {c: self.total[c] / self.count[c] for c in range(1, self.num_classes) if self.count[c]}

    def mean(self) -> float:
        scores = list(self.per_class().values())
        return float(np.mean(scores)) if scores else float("nan")


def _metric_labels(tokenizer: Tokenizer, labels: np.ndarray) -> np.ndarray:
    """Class labels to score: panoptic ids to classes, everything to 0/1 for a binary token mask."""
    labels = np.asarray(labels)
    if tokenizer.task == "panoptic":
        return labels // IDS_PER_CLASS
    return labels


def void_pixels(tokenizer: Tokenizer, mask: np.ndarray, ignore_index: int | None) -> np.ndarray | None:
    """Where ``mask`` is void: its class (panoptic: ``id // 1000``) is ``ignore_index``, or it is -1
    (labelme's ignore); None where nothing is (or ``ignore_index`` is None)."""
    if ignore_index is None:
        return None
    mask = np.asarray(mask)
    classes = mask // IDS_PER_CLASS if tokenizer.task == "panoptic" else mask
    void = (classes == ignore_index) | (mask == -1)
    return void if void.any() else None


def token_stats(
    masks: Iterable[np.ndarray], tokenizer: Tokenizer, *, ignore_index: int | None = None
) -> TokenStats:
    """Runs and tokens per mask, vocabulary, truncation at ``tokenizer.max_seq_len`` and the round-trip
    fidelity at token resolution: each mask is encoded, decoded, upsampled (nearest) to full resolution
    and compared with the full-resolution mask (mean foreground Dice: the metric ceiling of SPEC §8).

    Void pixels (``ignore_index``, see :func:`void_pixels`) are encoded as background, as the training
    data does (a token sequence cannot skip pixels), and left out of the Dice ceiling."""
    binary = getattr(tokenizer, "max_label", None) == 1
    classes = 2 if binary else tokenizer.num_classes
    exact, truncated_dice = DiceAccumulator(classes), DiceAccumulator(classes)
    runs, lengths, truncated = [], [], []
    pixels = voids = 0
    for mask in masks:
        void = void_pixels(tokenizer, mask, ignore_index)
        pixels += np.size(mask)
        voids += 0 if void is None else int(void.sum())
        valid = None if void is None else ~void
        if void is not None:
            mask = np.where(void, 0, mask)
        truth = _metric_labels(tokenizer, mask)
        if binary:
            truth = (truth > 0).astype(np.uint8)
        content = tokenizer.encode(mask)
        decoded = tokenizer.decode(content)
        exact.update(_metric_labels(tokenizer, upsample(decoded, tokenizer.shape)), truth, valid)
        sequence, cut, num_runs = tokenizer.encode_sequence(mask)
        if tokenizer.max_seq_len is not None:
            kept = tokenizer.decode_report(sequence, strict=True).mask
            truncated_dice.update(_metric_labels(tokenizer, upsample(kept, tokenizer.shape)), truth, valid)
        runs.append(num_runs)
        lengths.append(content.size + 2)
        truncated.append(cut)
    if not runs:
        raise ValueError("token_stats needs at least one mask")

    def dist(x: list[int]) -> tuple[float, float, int]:
        return float(np.percentile(x, 50)), float(np.percentile(x, 95)), int(np.max(x))

    return TokenStats(
        tokenizer=tokenizer.name,
        masks=len(runs),
        vocab_size=tokenizer.vocab_size,
        tokens_per_run=tokenizer.tokens_per_run,
        runs=dist(runs),
        tokens=dist(lengths),
        max_seq_len=tokenizer.max_seq_len,
        truncated_fraction=float(np.mean(truncated)),
        dice_ceiling=exact.mean(),
        dice_truncated=truncated_dice.mean() if tokenizer.max_seq_len is not None else None,
        class_dice=exact.per_class(),
        void_fraction=voids / pixels if pixels else 0.0,
    )


def format_table(stats: list[TokenStats], titles: list[str] | None = None) -> str:
    """The stats of several tokenizers side by side, one column each."""
    titles = titles or [s.tokenizer for s in stats]
    columns = [dict(s.rows()) for s in stats]
    labels = list(dict.fromkeys(label for s in stats for label, _ in s.rows()))
    width = max(len(x) for x in labels)
    widths = [
        max(len(t), *(len(c.get(label, "")) for label in labels))
        for t, c in zip(titles, columns, strict=True)
    ]
    lines = ["  ".join([" " * width, *(t.rjust(w) for t, w in zip(titles, widths, strict=True))])]
    for label in labels:
        cells = (c.get(label, "").rjust(w) for c, w in zip(columns, widths, strict=True))
        lines.append("  ".join([label.ljust(width), *cells]))
    return "\n".join(lines)
