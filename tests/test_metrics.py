"""The paper's metrics (SPEC §8) on hand-made masks, PQ against torchmetrics, and the sequence statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.detection import PanopticQuality

from rleseg.metrics import (
    ConfusionMatrix,
    MetricInputError,
    PanopticMetrics,
    SegmentationMetrics,
    SequenceStats,
    per_image_scores,
)

# One 3×4 image, N = 3. Class 1: gt 4 pixels, pred 3, TP 2. Class 2: gt 2, pred 4, TP 2.
GT = torch.tensor([[[1, 1, 1, 1], [2, 2, 0, 0], [0, 0, 0, 0]]])
PRED = torch.tensor([[[1, 1, 0, 2], [2, 2, 1, 2], [0, 0, 0, 0]]])


def test_each_formula_on_a_hand_made_mask():
    scores, evaluated = per_image_scores(PRED, GT, num_classes=3)
    assert evaluated.tolist() == [[True, True, True]]
    # class 1: TP 2, |gt| 4, |pred| 3
    assert scores["recall"][0, 1].item() == pytest.approx(2 / 4)
    assert scores["precision"][0, 1].item() == pytest.approx(2 / 3)
    assert scores["dice"][0, 1].item() == pytest.approx(2 * 2 / (4 + 3))
    assert scores["iou"][0, 1].item() == pytest.approx(2 / (4 + 3 - 2))
    # class 2: TP 2, |gt| 2, |pred| 4
    assert scores["recall"][0, 2].item() == pytest.approx(1.0)
    assert scores["precision"][0, 2].item() == pytest.approx(0.5)
    assert scores["dice"][0, 2].item() == pytest.approx(4 / 6)
    assert scores["iou"][0, 2].item() == pytest.approx(2 / 4)
    # background: gt 6, pred 5, TP 4
    assert scores["dice"][0, 0].item() == pytest.approx(8 / 11)


def test_dice_and_iou_agree_with_their_identity():
    # Dice = 2 IoU / (1 + IoU) for every evaluated class of random masks
    gen = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 4, (5, 9, 9), generator=gen)
    target = torch.randint(0, 4, (5, 9, 9), generator=gen)
    scores, evaluated = per_image_scores(preds, target, num_classes=4)
    iou, dice = scores["iou"][evaluated], scores["dice"][evaluated]
    torch.testing.assert_close(dice, 2 * iou / (1 + iou))


def test_a_class_absent_from_both_is_skipped_not_counted_as_one():
    metric = SegmentationMetrics(num_classes=3)
    # image 1: class 2 absent from both -> skipped; image 2: class 2 perfect
    metric.update(torch.tensor([[[1, 0], [0, 0]]]), torch.tensor([[[1, 1], [0, 0]]]))
    metric.update(torch.tensor([[[2, 2], [0, 0]]]), torch.tensor([[[2, 2], [0, 0]]]))
    out = metric.compute()
    assert out["images"].tolist() == [2.0, 1.0, 1.0]
    assert out["dice"][2].item() == pytest.approx(1.0)  # averaged over the one image that has class 2
    assert out["dice"][1].item() == pytest.approx(2 / 3)  # image 2 has no class 1 anywhere: skipped
    assert out["mean_dice"].item() == pytest.approx((2 / 3 + 1.0) / 2)


def test_a_missed_class_scores_zero_and_a_hallucinated_class_too():
    scores, evaluated = per_image_scores(
        torch.tensor([[[0, 0], [2, 0]]]), torch.tensor([[[1, 0], [0, 0]]]), num_classes=3
    )
    assert evaluated[0].tolist() == [True, True, True]
    for name in ("recall", "precision", "dice", "iou"):
        assert scores[name][0, 1].item() == 0.0  # in gt, never predicted
        assert scores[name][0, 2].item() == 0.0  # predicted, not in gt


def test_dataset_score_averages_per_image_not_per_pixel():
    # a big perfect image and a small bad one: per-image averaging gives 0.5, pixel pooling would not
    big = torch.ones(1, 8, 8, dtype=torch.long)
    small_gt = torch.zeros(1, 8, 8, dtype=torch.long)
    small_gt[0, 0, 0] = 1
    small_pred = torch.zeros_like(small_gt)
    small_pred[0, 7, 7] = 1
    metric = SegmentationMetrics(num_classes=2)
    metric.update(torch.cat([big, small_pred]), torch.cat([big, small_gt]))
    assert metric.compute()["dice"][1].item() == pytest.approx(0.5)


def test_video_frames_count_as_images_and_class_never_seen_is_nan():
    clip_pred = torch.tensor([[[[1, 1]], [[0, 0]]]])  # [B=1, T=2, H=1, W=2]
    clip_gt = torch.tensor([[[[1, 0]], [[0, 0]]]])
    metric = SegmentationMetrics(num_classes=3)
    metric.update(clip_pred, clip_gt)
    out = metric.compute()
    assert out["images"].tolist() == [2.0, 1.0, 0.0]  # background on both frames, class 1 on frame 0
    assert out["dice"][1].item() == pytest.approx(2 / 3)
    assert math.isnan(out["dice"][2].item())
    assert out["mean_dice"].item() == pytest.approx(2 / 3)  # NaN classes left out of the mean


def test_ignore_index_leaves_pixels_out_of_both_sides():
    gt = torch.tensor([[[1, 255], [0, 0]]])
    pred = torch.tensor([[[1, 1], [0, 0]]])
    scores, _ = per_image_scores(pred, gt, num_classes=2, ignore_index=255)
    assert scores["dice"][0, 1].item() == 1.0  # the predicted 1 under the ignored pixel does not count


def test_segmentation_metrics_skip_void_and_still_reject_unknown_classes():
    target = torch.tensor([[[1, 255, 0], [2, 255, 0]]])
    preds = torch.tensor([[[1, 2, 0], [2, 1, 0]]])  # wrong only under the void pixels
    plain = SegmentationMetrics(3, ignore_index=255)
    plain.update(preds, target)
    out = plain.compute()
    assert out["mean_dice"].item() == 1.0 and out["mean_iou"].item() == 1.0
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(preds, target)
    assert int(cm.compute().sum()) == 4  # void pixels counted nowhere
    for metric in (SegmentationMetrics(3, ignore_index=255), ConfusionMatrix(3, ignore_index=255)):
        with pytest.raises(MetricInputError, match=r"outside 0..2 \(ignore_index=255\)"):
            metric.update(preds, torch.tensor([[[1, 255, 0], [7, 255, 0]]]))  # 7: unknown, not void
        with pytest.raises(MetricInputError, match="outside 0..2"):
            metric.update(torch.full((1, 2, 3), 255), target)  # predictions are never void


def test_panoptic_metrics_leave_void_target_pixels_out():
    gt = torch.tensor([[[1001, 1001, 1001, 1001], [2000, 2000, 255000, 255000]]])
    pred = torch.tensor([[[1001, 1001, 1001, 1001], [2000, 2000, 1002, 1002]]])  # a segment on void
    metric = PanopticMetrics(things=[1], stuffs=[2], ignore_index=255)
    metric.update(pred, gt)
    assert {k: float(v) for k, v in metric.compute().items()} == {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    negative = PanopticMetrics(things=[1], stuffs=[2], ignore_index=-1)
    negative.update(pred, torch.where(gt == 255000, -1000, gt))  # labelme's -1 class: -1 * 1000
    assert float(negative.compute()["pq"]) == 1.0
    strict = PanopticMetrics(things=[1], stuffs=[2])
    strict.update(pred, gt)  # class 255 is neither thing nor stuff: torchmetrics' void anyway
    assert float(strict.compute()["pq"]) == 1.0
    with pytest.raises(MetricInputError, match="ignore_index 2 is a thing or stuff"):
        PanopticMetrics(things=[1], stuffs=[2], ignore_index=2)


def test_batched_updates_equal_one_update():
    gen = torch.Generator().manual_seed(3)
    preds = torch.randint(0, 3, (6, 7, 7), generator=gen)
    target = torch.randint(0, 3, (6, 7, 7), generator=gen)
    one, two = SegmentationMetrics(3), SegmentationMetrics(3)
    one.update(preds, target)
    two.update(preds[:2], target[:2])
    two.update(preds[2:], target[2:])
    a, b = one.compute(), two.compute()
    for key in a:
        torch.testing.assert_close(a[key], b[key], equal_nan=True)


@pytest.mark.parametrize(
    ("preds", "target", "kwargs", "message"),
    [
        (torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), {}, "differ in shape"),
        (torch.zeros(2, 2), torch.zeros(2, 2), {}, r"\[B, H, W\]"),
        (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), {}, "integer class maps"),
        (torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long), {}, "outside 0..2"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), -1), {}, "outside 0..2"),
    ],
)
def test_bad_inputs_are_named(preds, target, kwargs, message):
    with pytest.raises(MetricInputError, match=message):
        per_image_scores(preds, target, num_classes=3, **kwargs)


def test_confusion_matrix_counts_pixels_by_true_and_predicted_class():
    target = torch.tensor([[[0, 1, 1], [2, 2, 9]]])
    preds = torch.tensor([[[0, 1, 2], [1, 2, 0]]])
    cm = ConfusionMatrix(3, ignore_index=9)
    cm.update(preds, target)
    cm.update(preds[:, :1], target[:, :1])  # a second batch adds up
    assert cm.compute().tolist() == [[2, 0, 0], [0, 2, 2], [0, 1, 1]]
    video = ConfusionMatrix(3)
    video.update(torch.zeros(2, 4, 2, 2, dtype=torch.long), torch.ones(2, 4, 2, 2, dtype=torch.long))
    assert video.compute()[1, 0] == 32  # every frame's pixels count
    with pytest.raises(MetricInputError, match="outside 0..2"):
        ConfusionMatrix(3).update(preds, target)  # 9 is a class id without ignore_index


def test_num_classes_below_two_is_an_error():
    with pytest.raises(MetricInputError, match="num_classes must be >= 2"):
        SegmentationMetrics(num_classes=1)


# ------------------------------------------------------------------------------------------- panoptic
def random_panoptic(gen: np.random.Generator, shape=(3, 16, 16)) -> torch.Tensor:
    """Panoptic ids ``class*1000+instance``: things 1, 2 (instances 1..3) and stuff 3, 4 (instance 0)."""
    out = np.zeros(shape, dtype=np.int64)
    for i in range(shape[0]):
        out[i, :, : shape[2] // 2] = 3000
        out[i, :, shape[2] // 2 :] = 4000
        for _ in range(gen.integers(1, 5)):
            cls, inst = int(gen.integers(1, 3)), int(gen.integers(1, 4))
            y, x = gen.integers(0, shape[1] - 4, size=2)
            h, w = gen.integers(2, 7, size=2)
            out[i, y : y + h, x : x + w] = cls * 1000 + inst
        if gen.random() < 0.3:
            out[i, :2, :2] = 0  # void
    return torch.from_numpy(out)


def torchmetrics_pq(preds: torch.Tensor, target: torch.Tensor, per_class: bool = False):
    ref = PanopticQuality(
        things={1, 2},
        stuffs={3, 4},
        return_sq_and_rq=True,
        return_per_class=per_class,
        allow_unknown_preds_category=True,
    )

    def pairs(p: torch.Tensor) -> torch.Tensor:
        return torch.stack([p // 1000, p % 1000], dim=-1)

    ref.update(pairs(preds), pairs(target))
    return ref.compute()


@pytest.mark.parametrize("seed", range(5))
def test_pq_matches_torchmetrics(seed):
    gen = np.random.default_rng(seed)
    target = random_panoptic(gen)
    preds = target.clone()
    # perturb: shift some pixels, drop an instance, add a false one
    preds[:, 5:9, 3:8] = 2002
    preds[:, -3:, -3:] = 1003
    metric = PanopticMetrics(things=[1, 2], stuffs=[3, 4])
    metric.update(preds, target)
    ours = metric.compute()
    pq, sq, rq = torchmetrics_pq(preds, target)
    assert ours["pq"].item() == pytest.approx(pq.item())
    assert ours["sq"].item() == pytest.approx(sq.item())
    assert ours["rq"].item() == pytest.approx(rq.item())
    assert 0.0 < ours["pq"].item() < 1.0


def test_per_class_pq_matches_torchmetrics_per_class():
    gen = np.random.default_rng(7)
    target = random_panoptic(gen, (4, 20, 20))
    preds = random_panoptic(gen, (4, 20, 20))
    metric = PanopticMetrics(things=[1, 2], stuffs=[3, 4], return_per_class=True)
    metric.update(preds, target)
    ours = metric.compute()
    ref = torchmetrics_pq(preds, target, per_class=True)  # [C, 3]: things then stuffs, sorted
    for i, key in enumerate(("pq_per_class", "sq_per_class", "rq_per_class")):
        seen = ~ours[key].isnan()  # torchmetrics scores a category never seen 0; we say NaN
        assert seen.sum() >= 3
        torch.testing.assert_close(ours[key][seen].float(), ref[:, i][seen].float(), atol=1e-6, rtol=1e-5)


def test_pq_of_a_video_counts_frames_as_images():
    gen = np.random.default_rng(1)
    frames = random_panoptic(gen, (4, 12, 12))
    preds = frames.clone()
    preds[1:, :3] = 1001
    clip = PanopticMetrics(things=[1, 2], stuffs=[3, 4])
    clip.update(preds.reshape(2, 2, 12, 12), frames.reshape(2, 2, 12, 12))
    flat = PanopticMetrics(things=[1, 2], stuffs=[3, 4])
    flat.update(preds, frames)
    assert clip.compute()["pq"].item() == pytest.approx(flat.compute()["pq"].item())


def test_panoptic_bad_inputs():
    metric = PanopticMetrics(things=[1], stuffs=[2])
    with pytest.raises(MetricInputError, match="differ in shape"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(MetricInputError, match="integer panoptic-id maps"):
        metric.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(MetricInputError, match=">= 0"):
        metric.update(torch.full((1, 2, 2), -1), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(MetricInputError, match="label_divisor"):
        PanopticMetrics(things=[1], stuffs=[2], label_divisor=0)


# ---------------------------------------------------------------------------------- sequence stats
def test_sequence_stats():
    stats = SequenceStats()
    stats.update(torch.tensor([4, 8]), runs_total=torch.tensor([2, 4]), runs_dropped=1, decode_seconds=0.5)
    stats.update(torch.tensor([100]), runs_total=50, runs_dropped=0, decode_seconds=0.1, truncated=1)
    out = stats.compute()
    assert out["validity"].item() == pytest.approx(1 - 1 / 56)
    assert out["tokens_max"].item() == 100 and out["tokens_p50"].item() == 8
    assert out["tokens_mean"].item() == pytest.approx(112 / 3)
    assert out["decode_seconds_per_image"].item() == pytest.approx(0.2)
    assert out["truncated"].item() == 1 and out["truncated_rate"].item() == pytest.approx(1 / 3)
    assert out["images"].item() == 3


def test_sequence_stats_empty_and_errors():
    out = SequenceStats().compute()
    assert out["validity"].item() == 1.0 and math.isnan(out["tokens_p50"].item())
    with pytest.raises(MetricInputError, match="runs_dropped"):
        SequenceStats().update(torch.tensor([1]), runs_total=1, runs_dropped=2, decode_seconds=0.0)
    with pytest.raises(MetricInputError, match="decode_seconds"):
        SequenceStats().update(torch.tensor([1]), runs_total=1, runs_dropped=0, decode_seconds=-1.0)


def test_weighted_mean_is_the_mean_over_the_whole_set_whatever_the_batching():
    """val/loss: per-batch means weighted by their token counts give the mean over all tokens, so one
    process with batches of 4 and two processes with batches of 2 report the same number."""
    from rleseg.metrics import WeightedMean

    values = torch.arange(12, dtype=torch.float32) ** 2  # per-token losses
    whole = values.mean()
    for sizes in ([4, 4, 4], [2, 5, 5], [1, 11]):
        metric = WeightedMean()
        for chunk in values.split(sizes):
            metric.update(chunk.mean(), chunk.numel())
        assert float(metric.compute()) == pytest.approx(float(whole), rel=1e-6)
    # a plain average of the batch means would not be (what Lightning's epoch mean of a float gives)
    assert float(torch.stack([c.mean() for c in values.split([1, 11])]).mean()) != pytest.approx(float(whole))
