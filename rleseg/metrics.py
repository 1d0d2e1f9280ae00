"""The paper's evaluation (SPEC §8) as torchmetrics ``Metric`` objects, so DDP syncs them correctly.

* :class:`SegmentationMetrics` — per-image, per-class recall / precision / Dice / IoU with the skip
  rule, averaged over the images where each class was evaluated; per class and the foreground mean.
* :class:`PanopticMetrics` — PQ / SQ / RQ on panoptic-id maps (``class * 1000 + instance``), by
  ``torchmetrics.detection.PanopticQuality``.
* :class:`ConfusionMatrix` — pixel counts of (true class, predicted class): where the errors go.
* :class:`SequenceStats` — validity rate, tokens per mask (p50 / p95 / max), decode seconds per image,
  truncated samples.

Every state is a sum (or a concatenation) with a ``dist_reduce_fx``, never a per-rank average, so a
2-process run reports exactly what a 1-process run over the same data reports.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.detection import PanopticQuality
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "ConfusionMatrix",
    "MetricInputError",
    "PanopticMetrics",
    "SegmentationMetrics",
    "SequenceStats",
    "WeightedMean",
    "per_image_scores",
]

SCORES: tuple[str, ...] = ("recall", "precision", "dice", "iou")


class MetricInputError(ValueError):
    """Predictions and targets of the wrong shape, dtype or value range."""


def _as_images(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """Validate label maps and flatten them to ``[I, P]`` (a video's frames are images)."""
    if preds.shape != target.shape:
        raise MetricInputError(
            f"preds and target differ in shape: {tuple(preds.shape)} vs {tuple(target.shape)}"
        )
    if preds.ndim not in (3, 4):
        raise MetricInputError(
            f"expected label maps [B, H, W] or [B, T, H, W]; got shape {tuple(preds.shape)}"
        )
    if preds.is_floating_point() or target.is_floating_point():
        raise MetricInputError(f"expected integer class maps; got {preds.dtype} and {target.dtype}")
    preds = preds.reshape(-1, preds.shape[-2] * preds.shape[-1]).long()
    target = target.reshape(-1, target.shape[-2] * target.shape[-1]).long()
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    for name, t in (("preds", preds), ("target", target[valid])):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise MetricInputError(
                f"{name} holds class ids {int(t.min())}..{int(t.max())}, outside 0..{num_classes - 1}"
                + ("" if ignore_index is None else f" (ignore_index={ignore_index})")
            )
    return preds.masked_fill(~valid, -1), target.masked_fill(~valid, -1)


def per_image_scores(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-image, per-class scores (SPEC §8) and which (image, class) pairs are evaluated.

    For image i and class c, with TP = |pred=c ∧ gt=c|: recall = TP/|gt=c|, precision = TP/|pred=c|,
    Dice = 2TP/(|gt=c|+|pred=c|), IoU = TP/(|gt=c|+|pred=c|-TP). A class is *evaluated* on an image
    when it is in the prediction or the target; absent from both it is skipped (not counted as 1.0).
    An evaluated class counts in all four scores, and a ratio whose denominator is 0 scores 0: a class
    the target has and the prediction misses gets precision 0 (and recall 0); a class predicted where
    the target has none gets recall 0 (and precision 0). This keeps one image count per class for all
    four scores and does not reward a model for predicting nothing on hard images.

    Args:
        preds: int ``[B, H, W]`` or ``[B, T, H, W]`` predicted class ids.
        target: same shape, ground-truth class ids.
        num_classes: N, background included.
        ignore_index: a target value whose pixels are left out (None: none).

    Returns:
        ``(scores, evaluated)``: ``scores[name]`` float64 ``[I, N]`` (0 where not evaluated) for each of
        recall / precision / dice / iou, and ``evaluated`` bool ``[I, N]``; ``I`` counts images (frames).

    >>> p = torch.tensor([[[1, 1], [0, 0]]])
    >>> t = torch.tensor([[[1, 0], [0, 0]]])
    >>> scores, evaluated = per_image_scores(p, t, num_classes=3)
    >>> scores["dice"][0].tolist(), evaluated[0].tolist()
    ([0.8, 0.6666666666666666, 0.0], [True, True, False])
    """
    preds, target = _as_images(preds, target, num_classes, ignore_index)
    images = preds.shape[0]
    offset = torch.arange(images, device=preds.device)[:, None] * num_classes

    def counts(labels: Tensor, where: Tensor) -> Tensor:
        flat = (labels + offset)[where & (labels >= 0)]
        return torch.bincount(flat, minlength=images * num_classes).reshape(images, num_classes).double()

    everywhere = target >= 0  # ignored pixels are excluded from both sides
    gt = counts(target, everywhere)
    pr = counts(preds, everywhere)
    tp = counts(target, everywhere & (preds == target))
    evaluated = (gt + pr) > 0

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))

    scores = {
        "recall": ratio(tp, gt),
        "precision": ratio(tp, pr),
        "dice": ratio(2 * tp, gt + pr),
        "iou": ratio(tp, gt + pr - tp),
    }
    return scores, evaluated


class _ClassMapMetric(Metric):
    """A metric over integer class maps: ``num_classes`` (background included) and ``ignore_index``."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise MetricInputError(f"num_classes must be >= 2 (background included); got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index


class SegmentationMetrics(_ClassMapMetric):
    """Per-class recall, precision, Dice and IoU, averaged over the images where each class is evaluated.

    ``update(preds, target)`` takes integer class maps ``[B, H, W]`` or clips ``[B, T, H, W]`` (each
    frame counts as an image). See :func:`per_image_scores` for the per-image rule (skip a class absent
    from both; 0/0 scores 0 for an evaluated class). States are per-class sums of per-image scores and
    per-class image counts, reduced by summation across processes.

    ``compute()`` returns float64 tensors: ``recall``, ``precision``, ``dice``, ``iou`` per class ``[N]``
    (NaN for a class never evaluated), ``images`` ``[N]`` (how many images evaluated each class), and
    ``mean_recall`` … ``mean_iou``: the mean over foreground classes 1..N-1, ignoring NaN.

    Args:
        num_classes: N, background included.
        ignore_index: target value whose pixels are ignored (None: none).
        **kwargs: ``torchmetrics.Metric`` options.

    >>> m = SegmentationMetrics(num_classes=3)
    >>> m.update(torch.tensor([[[1, 1], [0, 0]]]), torch.tensor([[[1, 0], [0, 0]]]))
    >>> out = m.compute()
    >>> round(float(out["dice"][1]), 3), bool(out["dice"][2].isnan()), round(float(out["mean_dice"]), 3)
    (0.667, True, 0.667)
    """

    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_classes, ignore_index, **kwargs)
        for name in SCORES:
            self.add_state(f"{name}_sum", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        scores, evaluated = per_image_scores(preds, target, self.num_classes, self.ignore_index)
        for name in SCORES:
            total = getattr(self, f"{name}_sum")
            total += (scores[name] * evaluated).sum(dim=0).to(total)
        self.images += evaluated.sum(dim=0).to(self.images)

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {"images": self.images.clone()}
        evaluated = self.images > 0
        for name in SCORES:
            per_class = getattr(self, f"{name}_sum") / self.images.clamp(min=1)
            per_class = per_class.masked_fill(~evaluated, float("nan"))
            out[name] = per_class
            out[f"mean_{name}"] = per_class[1:].nanmean()
        return out


class ConfusionMatrix(_ClassMapMetric):
    """Pixel counts ``[N, N]``: row = true class, column = predicted class (ignored pixels left out).

    >>> cm = ConfusionMatrix(3)
    >>> cm.update(torch.tensor([[[0, 1], [2, 2]]]), torch.tensor([[[0, 1], [1, 2]]]))
    >>> cm.compute().tolist()
    [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_classes, ignore_index, **kwargs)
        self.add_state(
            "counts", torch.zeros(num_classes * num_classes, dtype=torch.int64), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        preds, target = _as_images(preds, target, self.num_classes, self.ignore_index)
        valid = target >= 0
        pairs = target[valid] * self.num_classes + preds[valid]
        self.counts += torch.bincount(pairs, minlength=self.num_classes**2).to(self.counts)

    def compute(self) -> Tensor:
        return self.counts.reshape(self.num_classes, self.num_classes).clone()


class PanopticMetrics(PanopticQuality):
    """PQ, SQ and RQ of panoptic-id maps: ``torchmetrics.detection.PanopticQuality`` on our id format.

    Maps hold ``class * label_divisor + instance`` per pixel (instance 0: stuff / no instance), as in
    DATA.md §4; ``update`` splits them into torchmetrics' ``(category, instance)`` pairs (a clip's
    frames count as images). A category in neither ``things`` nor ``stuffs`` (typically background 0)
    is void: ignored in the target, and in the prediction too unless
    ``allow_unknown_preds_category=False`` (then it raises). The states, their DDP reduction and the
    PQ / SQ / RQ formulas are torchmetrics' own.

    Args:
        things: categories with instances.
        stuffs: categories without instances.
        label_divisor: the multiplier of the class in a panoptic id.
        allow_unknown_preds_category: see above.
        return_per_class: ``compute()`` also returns ``pq_per_class``, ``sq_per_class``, ``rq_per_class``
            (NaN for a category never seen) in the order of ``categories`` (things, then stuffs, sorted).
        ignore_index: a *class* value: target pixels whose class (``id // label_divisor``) is
            ``ignore_index`` are void (the data sources write void as ``ignore_index * label_divisor``),
            negative values included; None: none. It must be neither a thing nor a stuff.
        **kwargs: ``torchmetrics.Metric`` options.

    >>> m = PanopticMetrics(things=[1], stuffs=[2])
    >>> gt = torch.tensor([[[1001, 1001], [2000, 2000]]])
    >>> m.update(gt, gt)
    >>> {k: float(v) for k, v in m.compute().items()}
    {'pq': 1.0, 'sq': 1.0, 'rq': 1.0}

    Void target pixels (``ignore_index``) count neither as a miss nor as a false segment:

    >>> m = PanopticMetrics(things=[1], stuffs=[2], ignore_index=255)
    >>> m.update(torch.tensor([[[1001, 1001], [2000, 2000]]]), torch.tensor([[[1001, 255000], [2000, 2000]]]))
    >>> float(m.compute()["pq"])
    1.0
    """

    def __init__(
        self,
        things: Collection[int],
        stuffs: Collection[int],
        label_divisor: int = 1000,
        allow_unknown_preds_category: bool = True,
        return_per_class: bool = False,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            things=set(things),
            stuffs=set(stuffs),
            allow_unknown_preds_category=allow_unknown_preds_category,
            return_sq_and_rq=True,
            return_per_class=False,
            **kwargs,
        )
        if label_divisor < 1:
            raise MetricInputError(f"label_divisor must be >= 1; got {label_divisor}")
        self.label_divisor = label_divisor
        if ignore_index is not None and (ignore_index in self.things or ignore_index in self.stuffs):
            raise MetricInputError(f"ignore_index {ignore_index} is a thing or stuff category")
        self.ignore_index = ignore_index
        self.per_class = return_per_class
        self.categories = sorted(self.things) + sorted(self.stuffs)

    def to_pairs(self, panoptic: Tensor) -> Tensor:
        """``[B, H, W]`` / ``[B, T, H, W]`` panoptic ids → ``[I, H, W, 2]`` (category, instance) pairs."""
        if panoptic.is_floating_point() or panoptic.ndim not in (3, 4):
            raise MetricInputError(
                f"expected integer panoptic-id maps [B, H, W] or [B, T, H, W]; got {panoptic.dtype} "
                f"{tuple(panoptic.shape)}"
            )
        if panoptic.numel() and int(panoptic.min()) < 0:
            raise MetricInputError(f"panoptic ids must be >= 0; got {int(panoptic.min())}")
        panoptic = panoptic.long().reshape(-1, *panoptic.shape[-2:])
        return torch.stack([panoptic // self.label_divisor, panoptic % self.label_divisor], dim=-1)

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape:
            raise MetricInputError(
                f"preds and target differ in shape: {tuple(preds.shape)} vs {tuple(target.shape)}"
            )
        if self.ignore_index is not None and not target.is_floating_point():
            void = target.div(self.label_divisor, rounding_mode="floor") == self.ignore_index
            # torchmetrics' own void: a category that is neither thing nor stuff, left out of PQ
            target = target.masked_fill(void, int(self.void_color[0]) * self.label_divisor)
        super().update(self.to_pairs(preds), self.to_pairs(target))

    def compute(self) -> dict[str, Tensor]:
        pq, sq, rq = super().compute()
        out = {"pq": pq, "sq": sq, "rq": rq}
        if self.per_class:
            tp = self.true_positives.double()
            seen = tp + 0.5 * self.false_positives + 0.5 * self.false_negatives
            sq_c = torch.where(tp > 0, self.iou_sum / tp.clamp(min=1), 0.0)
            rq_c = tp / seen.clamp(min=1e-12)
            nan = torch.full_like(sq_c, float("nan"))
            out["pq_per_class"] = torch.where(seen > 0, sq_c * rq_c, nan)
            out["sq_per_class"] = torch.where(seen > 0, sq_c, nan)
            out["rq_per_class"] = torch.where(seen > 0, rq_c, nan)
        return out


class SequenceStats(Metric):
    """What the token model writes: validity rate, tokens per mask, decode time, truncation.

    ``update`` takes one batch:

    * ``tokens_per_mask`` — int ``[B]``, content tokens of each mask (prompt, EOS and PAD excluded);
    * ``runs_total`` / ``runs_dropped`` — runs decoded and dropped as invalid (``DecodeResult``), as
      ``[B]`` tensors or totals;
    * ``decode_seconds`` — wall time to generate and decode the batch;
    * ``truncated`` — bool ``[B]`` or a count of sequences cut to ``max_seq_len`` (optional).

    ``compute()`` returns: ``validity`` (1 - dropped / total, 1.0 with no runs), ``runs_total``,
    ``runs_dropped``, ``tokens_p50``, ``tokens_p95``, ``tokens_max``, ``tokens_mean``, ``images``,
    ``decode_seconds_per_image``, ``truncated`` and ``truncated_rate``.

    >>> s = SequenceStats()
    >>> s.update(torch.tensor([10, 20, 30]), runs_total=12, runs_dropped=3, decode_seconds=0.3)
    >>> out = s.compute()
    >>> float(out["validity"]), float(out["tokens_p50"]), round(float(out["decode_seconds_per_image"]), 3)
    (0.75, 20.0, 0.1)
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("tokens", [], dist_reduce_fx="cat")
        for name in ("runs_total", "runs_dropped", "images", "truncated"):
            self.add_state(name, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("seconds", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        tokens_per_mask: Tensor,
        runs_total: Tensor | int,
        runs_dropped: Tensor | int,
        decode_seconds: float,
        truncated: Tensor | int | None = None,
    ) -> None:
        lengths = torch.as_tensor(tokens_per_mask, device=self.device).reshape(-1).long()
        total = int(torch.as_tensor(runs_total).sum())
        dropped = int(torch.as_tensor(runs_dropped).sum())
        if dropped > total or dropped < 0:
            raise MetricInputError(f"runs_dropped={dropped} must be within 0..runs_total={total}")
        if decode_seconds < 0:
            raise MetricInputError(f"decode_seconds must be >= 0; got {decode_seconds}")
        self.tokens.append(lengths)
        self.runs_total += total
        self.runs_dropped += dropped
        self.images += lengths.numel()
        self.seconds += float(decode_seconds)
        if truncated is not None:
            self.truncated += int(torch.as_tensor(truncated).long().sum())

    def compute(self) -> dict[str, Tensor]:
        # a list before a DDP sync, a tensor after it
        empty = isinstance(self.tokens, list) and not self.tokens
        lengths = torch.zeros(0, dtype=torch.float64) if empty else dim_zero_cat(self.tokens).double()
        images = max(int(self.images), 1)
        nan = torch.tensor(float("nan"), dtype=torch.float64)

        def q(p: float) -> Tensor:
            return lengths.quantile(p) if lengths.numel() else nan

        total = self.runs_total.double()
        return {
            "validity": torch.where(total > 0, 1.0 - self.runs_dropped.double() / total.clamp(min=1), 1.0),
            "runs_total": self.runs_total.clone(),
            "runs_dropped": self.runs_dropped.clone(),
            "tokens_p50": q(0.5),
            "tokens_p95": q(0.95),
            "tokens_max": lengths.max() if lengths.numel() else nan,
            "tokens_mean": lengths.mean() if lengths.numel() else nan,
            "images": self.images.clone(),
            "decode_seconds_per_image": self.seconds / images,
            "truncated": self.truncated.clone(),
            "truncated_rate": self.truncated.double() / images,
        }


class WeightedMean(Metric):
    """The mean of per-batch means, each weighted by what it was taken over (tokens, pixels): the mean over
    the whole set, the same whatever the batch size or the number of processes. (States are made with
    ``torch.zeros``, which, unlike torchmetrics' ``MeanMetric``, builds under the fake tensors of
    :mod:`rleseg.memory`.)

    >>> m = WeightedMean()
    >>> m.update(torch.tensor(1.0), 3)
    >>> m.update(torch.tensor(5.0), 1)
    >>> float(m.compute())
    2.0
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: Tensor | float) -> None:
        weight = torch.as_tensor(weight, dtype=torch.float64, device=self.total.device)
        self.total += value.detach().to(torch.float64) * weight
        self.weight += weight

    def compute(self) -> Tensor:
        return (self.total / self.weight.clamp_min(1e-12)).float()
