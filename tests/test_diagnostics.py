"""Token-level diagnostics (rleseg.diagnostics) on hand-made cases with exactly known answers, and their
wiring into RLESegModule's validation logging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rleseg.diagnostics import TokenDiagnostics, object_class_errors, row_run_errors
from rleseg.tokenizers import EOS, PAD, create_tokenizer, list_tokenizers
from rleseg.tokenizers.registry import tokenizer_class


def perfect_logits(target: torch.Tensor, vocab: int) -> torch.Tensor:
    """Logits whose argmax is the target token everywhere."""
    return F.one_hot(target, vocab).float()


def swap_class(tok, tokens: np.ndarray) -> np.ndarray:
    """LAC tokens with the class part swapped 1 <-> 2 and the length kept."""
    r, m = tok.vocab["lac"], tok.max_run
    value = tokens - r.lo + r.value_min
    cls, length = (value - 1) // m + 1, (value - 1) % m + 1
    return r.lo - r.value_min + m * ((3 - cls) - 1) + length


# two 4×4 masks of N = 3 (background, 1, 2); the second has fewer runs, so its sequence has PAD
MASK_A = np.array([[0, 1, 1, 0], [2, 2, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2]], dtype=np.uint8)
MASK_B = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [2, 2, 2, 2], [0, 0, 0, 0]], dtype=np.uint8)


@pytest.fixture
def lac():
    return create_tokenizer("lac", num_classes=3, shape=(4, 4), max_run=4, max_seq_len=16)


def lac_batch(tok) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.from_numpy(tok.encode_batch([MASK_A, MASK_B]).tokens)
    return tokens, tokens[:, 1:]


# ---------------------------------------------------------------------- teacher forcing
def test_lac_wrong_class_right_length(lac) -> None:
    tokens, target = lac_batch(lac)
    pred = target.clone()
    is_lac = (target >= lac.vocab["lac"].lo) & (target < lac.vocab["lac"].hi)
    pred[is_lac] = torch.from_numpy(swap_class(lac, target[is_lac].numpy()))
    logits = perfect_logits(pred, lac.vocab_size)
    logits[target == PAD] = perfect_logits(torch.tensor(lac.vocab["start"].lo), lac.vocab_size)  # ignored

    diag = TokenDiagnostics(lac)
    diag.update_teacher_forced(logits, target)
    out = diag.compute()
    runs = 5 + 2  # MASK_A has 5 runs (SPEC §3), MASK_B 2
    assert out["tf_acc_start"] == 1.0
    assert out["tf_acc_eos"] == 1.0
    assert out["tf_acc_lac"] == 0.0
    assert out["tf_acc_lac_class"] == 0.0
    assert out["tf_acc_lac_length"] == 1.0
    assert out["tf_acc"] == pytest.approx((runs + 2) / (2 * runs + 2))  # starts and EOS right, lac wrong
    # the teacher-forced masks swap the classes: every class Dice is 0, foreground is exact
    assert out["tf_dice_mean"] == 0.0
    assert out["tf_dice_agnostic"] == 1.0
    assert not any(k.startswith(("tf_acc_class", "tf_acc_length", "dice_", "runs_", "obj_")) for k in out)
    assert "exposure_gap" not in out  # needs the generated side


def test_lac_wrong_length_right_class(lac) -> None:
    tokens, target = lac_batch(lac)
    pred = target.clone()
    first_lac = 1  # the first run's lac token: (1, 2, class 1) -> write length 1, class 1
    pred[0, first_lac] = lac.vocab["lac"].lo  # lac value 1: class 1, length 1
    diag = TokenDiagnostics(lac)
    diag.update_teacher_forced(perfect_logits(pred, lac.vocab_size), target)
    out = diag.compute()
    assert out["tf_acc_lac"] == pytest.approx(6 / 7)
    assert out["tf_acc_lac_class"] == 1.0
    assert out["tf_acc_lac_length"] == pytest.approx(6 / 7)
    assert out["tf_acc_start"] == 1.0


def test_lac_part_of_token_in_other_field_is_wrong(lac) -> None:
    """A start token written where a lac belongs gets neither part right."""
    _, target = lac_batch(lac)
    pred = target.clone()
    pred[0, 1] = lac.vocab["start"].lo
    diag = TokenDiagnostics(lac)
    diag.update_teacher_forced(perfect_logits(pred, lac.vocab_size), target)
    out = diag.compute()
    assert out["tf_acc_lac_class"] == pytest.approx(6 / 7)
    assert out["tf_acc_lac_length"] == pytest.approx(6 / 7)


def test_early_eos_cuts_the_teacher_forced_mask() -> None:
    tok = create_tokenizer("lac", num_classes=3, shape=(4, 4), max_run=4)
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0, :2] = 1
    mask[2] = 2
    tokens = torch.from_numpy(tok.encode_batch([mask]).tokens)
    target = tokens[:, 1:]  # start, lac, start, lac, EOS
    pred = target.clone()
    pred[0, 2] = EOS  # stop after the first run
    diag = TokenDiagnostics(tok)
    diag.update_teacher_forced(perfect_logits(pred, tok.vocab_size), target)
    out = diag.compute()
    assert out["tf_acc_start"] == 0.5
    assert out["tf_acc_lac"] == 1.0
    # class 1 exact, class 2 missed: mean 0.5; foreground 2 of 6 cells: 2·2 / (6 + 2)
    assert out["tf_dice_mean"] == 0.5
    assert out["tf_dice_agnostic"] == 0.5


def test_mc_fields_and_no_lac_keys() -> None:
    tok = create_tokenizer("mc", num_classes=3, shape=(4, 4), max_run=4)
    tokens = torch.from_numpy(tok.encode_batch([MASK_A]).tokens)
    target = tokens[:, 1:]
    pred = target.clone()
    pred[0, 2] = tok.vocab["class"].lo + 1  # first run's class 1 -> 2
    diag = TokenDiagnostics(tok)
    diag.update_teacher_forced(perfect_logits(pred, tok.vocab_size), target)
    out = diag.compute()
    assert out["tf_acc_class"] == pytest.approx(4 / 5)
    assert out["tf_acc_length"] == 1.0 and out["tf_acc_start"] == 1.0 and out["tf_acc_eos"] == 1.0
    assert not any("lac" in k for k in out)


def test_vocab_only_gives_accuracies(lac) -> None:
    _, target = lac_batch(lac)
    diag = TokenDiagnostics(lac.vocab, num_classes=3, max_run=4)
    diag.update_teacher_forced(perfect_logits(target, lac.vocab_size), target)
    out = diag.compute()
    assert out["tf_acc_lac_class"] == 1.0
    assert not any(k.startswith("tf_dice") for k in out)


@pytest.mark.parametrize("name", list_tokenizers())
def test_every_tokenizer_perfect(name: str) -> None:
    kw = {"stuff_classes": (2,)} if name == "panoptic" else {}
    video = tokenizer_class(name).task in ("video", "static_video")
    shape = (2, 8, 8) if video else (8, 8)
    tok = create_tokenizer(name, num_classes=3, shape=shape, **kw)
    mask = np.zeros(shape, dtype=np.int64)
    mask[..., 1:4, 2:6] = 1
    mask[..., 5:7, :] = 2
    if name == "panoptic":
        mask = mask * 1000 + (mask == 1)
    elif name.startswith("binary"):
        mask = (mask != 0).astype(np.int64)
    tokens = torch.from_numpy(tok.encode_batch([mask, mask]).tokens)
    target = tokens[:, 1:]
    diag = TokenDiagnostics(tok)
    diag.update_teacher_forced(perfect_logits(target, tok.vocab_size), target)
    token_mask = np.stack([tok.subsample(mask)] * 2)
    if name == "panoptic":
        token_mask = token_mask // 1000
    diag.update_generated(token_mask, token_mask)
    out = diag.compute()
    seen = {r.name for r in tok.vocab.ranges if np.isin(target.numpy(), np.arange(r.lo, r.hi)).any()}
    assert {f"tf_acc_{f}" for f in seen} | {"tf_acc_eos"} <= set(out)
    assert all(out[k] == 1.0 for k in out if k.startswith("tf_acc"))
    assert out["tf_dice_mean"] == 1.0 and out["dice_classaware"] == 1.0 and out["exposure_gap"] == 0.0
    assert out["runs_missed"] == 0.0 and out["runs_spurious"] == 0.0 and out["obj_class_ok"] == 1.0


# ---------------------------------------------------------------------- generated masks
TARGET = np.array(
    [
        [0, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [2, 2, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0],
    ]
)
PRED = np.array(
    [
        [0, 0, 1, 1, 1, 0],  # shifted by one: misplaced
        [0, 0, 0, 0, 0, 0],
        [2, 2, 0, 0, 0, 0],  # matched
        [0, 0, 0, 0, 0, 0],  # missed
        [1, 1, 0, 0, 0, 0],  # spurious
    ]
)


def test_identical_masks() -> None:
    diag = TokenDiagnostics(create_tokenizer("lac", num_classes=3, shape=(5, 6)))
    diag.update_generated(torch.from_numpy(TARGET[None]), torch.from_numpy(TARGET[None]))
    out = diag.compute()
    assert out["dice_classaware"] == 1.0 and out["dice_agnostic"] == 1.0
    assert out["runs_missed"] == 0.0 and out["runs_misplaced"] == 0.0 and out["runs_spurious"] == 0.0
    assert out["obj_class_ok"] == 1.0 and out["obj_err_first_run"] == 0.0 and out["obj_err_drift"] == 0.0
    assert not any(k.startswith("tf_") for k in out) and "exposure_gap" not in out


def test_shifted_missed_and_spurious_runs() -> None:
    counts = row_run_errors(PRED[None], TARGET[None])
    assert counts == {
        "runs_target": 3,
        "runs_matched": 1,
        "runs_misplaced": 1,
        "runs_missed": 1,
        "runs_pred": 3,
        "runs_spurious": 1,
    }
    diag = TokenDiagnostics(create_tokenizer("lac", num_classes=3, shape=(5, 6)))
    diag.update_generated(PRED[None], TARGET[None])
    out = diag.compute()
    assert out["runs_missed"] == pytest.approx(1 / 3)
    assert out["runs_misplaced"] == pytest.approx(1 / 3)
    assert out["runs_spurious"] == pytest.approx(1 / 3)
    # class 1: |gt| 5, |pred| 5, TP 2 -> 0.4; class 2 exact -> mean 0.7; foreground: 2·4 / 14
    assert out["dice_classaware"] == pytest.approx(0.7)
    assert out["dice_agnostic"] == pytest.approx(4 / 7)


def test_run_classes_decide_misplaced_not_matched() -> None:
    target = np.array([[[0, 1, 1, 1, 0, 0], [0, 0, 2, 2, 2, 0]]])
    pred = np.array([[[0, 2, 2, 0, 0, 0], [0, 0, 0, 1, 1, 1]]])
    counts = row_run_errors(pred, target)
    # row 0: a run starts at the target's start cell (another class): matched
    # row 1: the overlapping run has another class and another start: missed, not misplaced
    assert (counts["runs_matched"], counts["runs_misplaced"], counts["runs_missed"]) == (1, 0, 1)
    assert counts["runs_spurious"] == 0
    # runs stop at class changes and row ends: 1 1 | 2 2 inside one row are two runs
    assert row_run_errors(np.array([[[1, 1, 2, 2]]]), np.array([[[1, 1, 2, 2]]]))["runs_target"] == 2
    assert row_run_errors(np.array([[[1, 1], [1, 1]]]), np.array([[[1, 1], [1, 1]]]))["runs_target"] == 2


def test_object_class_errors() -> None:
    target = np.zeros((3, 4, 4), dtype=np.int64)
    pred = np.zeros((3, 4, 4), dtype=np.int64)
    # image 0: one object (3 runs); the second run is mostly class 2: drift
    target[0, :3] = 1
    pred[0, :3] = 1
    pred[0, 1, :3] = 2
    # image 1: a class-2 object whose first run is predicted class 1 (first-run error), and a class-1
    # object predicted right but for one cell of four (the majority holds: ok)
    target[1, :2, :2] = 2
    pred[1, 0, :2] = 1
    pred[1, 1, :2] = 2
    target[1, 3, :] = 1
    pred[1, 3, :] = [1, 1, 1, 0]
    # image 2: two class-1 cells touching diagonally are two objects (4-connectivity), both missed
    target[2, 0, 0] = target[2, 1, 1] = 1
    counts = object_class_errors(pred, target, num_classes=3)
    assert counts == {"objects": 5, "obj_class_ok": 1, "obj_err_first_run": 3, "obj_err_drift": 1}
    diag = TokenDiagnostics(create_tokenizer("mc", num_classes=3, shape=(4, 4)))
    diag.update_generated(pred, target)
    out = diag.compute()
    assert out["obj_class_ok"] == pytest.approx(1 / 5)
    assert out["obj_err_first_run"] == pytest.approx(3 / 5)
    assert out["obj_err_drift"] == pytest.approx(1 / 5)


def test_adjacent_classes_are_separate_objects() -> None:
    target = np.array([[[1, 1, 2, 2], [1, 1, 2, 2]]])
    pred = np.array([[[1, 1, 1, 1], [1, 1, 1, 1]]])
    assert object_class_errors(pred, target, 3) == {
        "objects": 2,
        "obj_class_ok": 1,
        "obj_err_first_run": 1,
        "obj_err_drift": 0,
    }


def test_exposure_gap_and_accumulation(lac) -> None:
    _, target = lac_batch(lac)
    whole = TokenDiagnostics(lac)
    whole.update_teacher_forced(perfect_logits(target, lac.vocab_size), target)  # tf Dice 1
    pred = np.stack([MASK_A, MASK_B]).astype(np.int64)
    pred[1, 0, :2] = 0  # image B loses its class-1 run: class 1 Dice 0 there
    gt = np.stack([MASK_A, MASK_B]).astype(np.int64)
    whole.update_generated(pred, gt)
    out = whole.compute()
    # class 1: image A 1.0, image B 0.0 -> 0.5; class 2: 1.0 -> mean 0.75
    assert out["dice_classaware"] == pytest.approx(0.75)
    assert out["tf_dice_mean"] == 1.0
    assert out["exposure_gap"] == pytest.approx(0.25)
    assert out["runs_missed"] == pytest.approx(1 / 7)

    split = TokenDiagnostics(lac)
    for i in range(2):
        split.update_teacher_forced(perfect_logits(target[i : i + 1], lac.vocab_size), target[i : i + 1])
        split.update_generated(pred[i : i + 1], gt[i : i + 1])
    assert split.compute() == pytest.approx(out)
    whole.reset()
    assert whole.tf_counts.sum() == 0 and whole.gen_counts.sum() == 0


# ---------------------------------------------------------------------- the module
def tiny_module(diagnostics: bool):
    from rleseg.module import DataInfo, RLESegModule

    tok = create_tokenizer("lac", num_classes=3, shape=(32, 32), subsample=2, max_seq_len=48)
    info = DataInfo(
        task="image", num_classes=3, vocab_size=tok.vocab_size, max_seq_len=48, input_size=(32, 32)
    )
    torch.manual_seed(0)
    module = RLESegModule(
        data_info=info,
        backbone="resnet10t",
        feature_stride=8,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        num_heads=2,
        mlp_dim=64,
        diagnostics=diagnostics,
    )
    module.attach_tokenizer(tok)
    masks = np.zeros((2, 32, 32), dtype=np.int64)
    masks[0, 4:12, 2:20] = 1
    masks[1, 16:30, 8:24] = 2
    enc = tok.encode_batch(list(masks))
    batch = {
        "image": torch.rand(2, 3, 32, 32),
        "mask": torch.from_numpy(masks),
        "tokens": torch.from_numpy(enc.tokens),
        "truncated": torch.from_numpy(enc.truncated),
        "token_mask": torch.from_numpy(np.stack([tok.subsample(m) for m in masks]).astype(np.int64)),
    }
    logged: dict[str, object] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)  # type: ignore[method-assign]
    return module, batch, logged


def test_module_logs_diagnostics() -> None:
    module, batch, logged = tiny_module(diagnostics=True)
    module.eval()
    with torch.no_grad():
        module._eval_step(batch, 0, "val")
    module._log_metrics("val")
    diag = {k for k in logged if k.startswith("val/diag/")}
    expected = {
        f"val/diag/{k}"
        for k in (
            "tf_acc",
            "tf_acc_start",
            "tf_acc_lac",
            "tf_acc_lac_class",
            "tf_acc_lac_length",
            "tf_acc_eos",
            "tf_dice_mean",
            "tf_dice_agnostic",
            "dice_classaware",
            "dice_agnostic",
            "exposure_gap",
            "runs_missed",
            "runs_misplaced",
            "obj_class_ok",
            "obj_err_first_run",
            "obj_err_drift",
        )
    }
    assert expected <= diag
    assert diag <= expected | {"val/diag/runs_spurious"}  # spurious needs a predicted run
    values = {k: float(logged[k]) for k in diag}
    for key, value in values.items():
        assert math.isfinite(value)
        low = -1.0 if key.endswith("exposure_gap") else 0.0
        assert low <= value <= 1.0, key
    assert values["val/diag/exposure_gap"] == pytest.approx(
        values["val/diag/tf_dice_mean"] - values["val/diag/dice_classaware"]
    )
    # the token metrics' Dice at token resolution is the generated-side Dice of the diagnostics
    assert values["val/diag/dice_classaware"] == pytest.approx(float(logged["val/token_dice_mean"]))
    assert not module.val_diag.update_called  # reset for the next epoch


def test_module_without_diagnostics() -> None:
    module, batch, logged = tiny_module(diagnostics=False)
    module.eval()
    with torch.no_grad():
        module._eval_step(batch, 0, "val")
    module._log_metrics("val")
    assert module.val_diag is None
    assert "val/loss" in logged or "val/token_dice_mean" in logged
    assert not any(k.startswith("val/diag/") for k in logged)


def test_module_with_fine_memory_anchors_and_probe() -> None:
    """memory_stride 4 + anchor + coarse cross-attention: anchors index the fine grid after the coarse
    tokens, the aux head reads the fine grid, and the probe Dice is logged beside the diagnostics."""
    from rleseg.module import DataInfo, RLESegModule

    tok = create_tokenizer("lac", num_classes=3, shape=(32, 32), subsample=2, max_seq_len=48)
    info = DataInfo(
        task="image", num_classes=3, vocab_size=tok.vocab_size, max_seq_len=48, input_size=(32, 32)
    )
    module = RLESegModule(
        data_info=info, backbone="resnet10t", feature_stride=8, d_model=32, encoder_layers=1,
        decoder_layers=1, num_heads=2, mlp_dim=64, memory_stride=4, anchor=True, cross_memory="coarse",
        fine_smooth=True, aux_dense_weight=1.0,
    )  # fmt: skip
    module.attach_tokenizer(tok)
    module._configure_anchor(tok)
    start = next(r for r in tok.vocab.ranges if r.name == "start")
    index = module.model.decoder.anchor_index
    assert module.model.decoder.anchor_lo == start.lo and len(index) == 16 * 16
    # cell (r, c) of the 16x16 token mask lies over fine token (r // 2, c // 2) of the 8x8 grid, which
    # follows the 4x4 coarse tokens cross-attention reads
    assert index.reshape(16, 16)[5, 9].item() == 16 + (5 // 2) * 8 + 9 // 2
    assert module.model.encoder.cross_stride == 8 and module.model.encoder.stride == 4
    _, batch, _ = tiny_module(diagnostics=True)
    memory = module.model.encode(batch["image"])
    assert memory.shape == (2, 16 + 64, 32) and module.model.decoder.cross_tokens == 16
    assert module._aux_logits(memory, (32, 32)).shape == (2, 3, 32, 32)
    logged: dict[str, object] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)  # type: ignore[method-assign]
    module.eval()
    with torch.no_grad():
        module._eval_step(batch, 0, "val")
    module._log_metrics("val")
    assert 0.0 <= float(logged["val/diag/probe_dice_mean"]) <= 1.0
    assert "val/diag/tf_acc_lac_class" in logged


def test_dense_module_scores_its_prediction_at_the_token_grid() -> None:
    """A dense model that predicts the labels exactly keeps, at the token grid, the encoding's ceiling."""
    from rleseg.metrics import SegmentationMetrics
    from rleseg.module import DataInfo, DenseSegModule
    from rleseg.tokenizers.runs import upsample

    info = DataInfo(task="image", num_classes=3, vocab_size=10, max_seq_len=48, input_size=(32, 32))
    module = DenseSegModule(data_info=info, backbone="resnet10t", feature_stride=8, decoder_channels=8)
    _, batch, _ = tiny_module(diagnostics=False)
    batch["mask"][0, 5, 3] = 2  # a one-pixel speck the token grid cannot keep
    module.predict_masks = lambda b: {"mask": b["mask"].clone(), "token_mask": None}  # type: ignore[method-assign]
    logged: dict[str, object] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)  # type: ignore[method-assign]
    module._eval_step(batch, 0, "val")
    module._log_metrics("val")
    ceiling = SegmentationMetrics(3)
    cells = batch["mask"][..., 1::2, 1::2].numpy()
    ceiling.update(torch.from_numpy(upsample(cells, (32, 32))), batch["mask"])
    assert float(logged["val/dice_mean"]) == pytest.approx(1.0)
    expected = float(ceiling.compute()["mean_dice"])
    assert expected < 1.0 and float(logged["val/token_grid_dice_mean"]) == pytest.approx(expected)
