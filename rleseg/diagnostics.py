"""Token-level diagnostics of the token model, cheap enough for every validation epoch.

:class:`TokenDiagnostics` is a torchmetrics ``Metric`` (states are sums, reduced by summation across
processes, as in :mod:`rleseg.metrics`) fed from two places:

* **teacher forcing** — ``update_teacher_forced(logits, target)``: the logits of the training-style
  forward pass (the decoder reads the ground-truth prefix) and the target tokens. Accuracy of the argmax
  per grammar field, the field being the vocabulary range of the *target* token (``tf_acc_start``,
  ``tf_acc_lac``, ``tf_acc_eos``, ...; PAD targets ignored). For fields that pack a length and a class
  into one token (LAC: ``lac = M·(class−1) + length``, SPEC §3; TAC's ``ltac`` and the panoptic stuff
  runs use the same packing), the class part and the length part are also scored on their own
  (``tf_acc_lac_class``, ``tf_acc_lac_length``): a part is right when the predicted token lies in the same
  range and its part equals the target's. The teacher-forced argmax sequence (the prompt, then the
  argmax at every non-PAD target position; decoding stops at the first EOS) is decoded leniently into a
  token-resolution mask and scored against the decoded target sequence (``tf_dice_mean``).
* **generation** — ``update_generated(pred_token_masks, target_token_masks)``: the masks decoded from the
  freely generated sequences against the ground-truth token masks. Dice at token resolution, row-run
  errors and class errors inside objects (see :meth:`TokenDiagnostics.update_generated`).

``exposure_gap`` = ``tf_dice_mean`` − ``dice_classaware``: how much the model loses by reading its own
output instead of the ground truth (exposure bias), both at token resolution and with the Dice of SPEC §8.

``compute()`` returns a flat ``dict[str, float]``; a key whose field does not exist in the vocabulary,
or whose denominator is zero (nothing of it was seen), is absent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from rleseg.metrics import MetricInputError, per_image_scores
from rleseg.tokenizers.base import EOS, PAD, PROMPTS, Tokenizer, VocabLayout
from rleseg.tokenizers.runs import find_runs

__all__ = ["GEN_COUNTS", "TokenDiagnostics", "object_class_errors", "row_run_errors"]

#: the counters of the generation part, in the order of the ``gen_counts`` state
GEN_COUNTS: tuple[str, ...] = (
    "runs_target",
    "runs_matched",
    "runs_misplaced",
    "runs_missed",
    "runs_pred",
    "runs_spurious",
    "objects",
    "obj_class_ok",
    "obj_err_first_run",
    "obj_err_drift",
)


def _is_packed(name: str) -> bool:
    """A range whose tokens pack ``M·class_index + length`` (``lac``, and names such as ``stuff_lac``)."""
    return name == "lac" or name.endswith("_lac")


def _row_runs(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-runs (maximal horizontal segments of one foreground class) of ``[I, h, w]`` label maps.

    Returns ``(start, run_id, fg)`` over the flattened maps: ``start`` bool, True at the first cell of
    each run; ``run_id`` the index of the run (raster order over all images) of each foreground cell
    (meaningless on background); ``fg`` bool, foreground cells.
    """
    flat = masks.ravel()
    start = np.zeros(flat.size, dtype=bool)
    start[find_runs(flat, line=masks.shape[-1]).starts] = True  # runs never cross a row (or image) end
    fg = flat != 0
    # A foreground cell that does not start a run continues the run of its left neighbour (same row,
    # same class), which is the latest start before it in raster order.
    run_id = np.cumsum(start) - 1
    return start, run_id, fg


def row_run_errors(pred: np.ndarray, target: np.ndarray) -> dict[str, int]:
    """Counts of row-run errors of predicted ``[I, h, w]`` label maps against the target maps.

    A target run is *matched* when a predicted run starts at its start cell (whatever its class: class
    errors are :func:`object_class_errors`' business), *misplaced* when none does but a predicted run of
    the same class overlaps it, *missed* otherwise. A predicted run is *spurious* when it overlaps no
    target foreground.

    >>> t = np.array([[[0, 1, 1, 0]]])
    >>> row_run_errors(np.array([[[0, 0, 1, 1]]]), t)["runs_misplaced"]
    1
    """
    t_start, t_id, t_fg = _row_runs(target)
    p_start, p_id, p_fg = _row_runs(pred)
    t_flat, p_flat = target.ravel(), pred.ravel()
    n_t, n_p = int(np.count_nonzero(t_start)), int(np.count_nonzero(p_start))
    matched = p_start[t_start]  # runs in raster order: start cells in raster order
    same = t_fg & (p_flat == t_flat)
    overlapped = np.bincount(t_id[same], minlength=n_t) > 0
    misplaced = ~matched & overlapped
    hits = np.bincount(p_id[p_fg & (t_flat != 0)], minlength=n_p) > 0
    return {
        "runs_target": n_t,
        "runs_matched": int(np.count_nonzero(matched)),
        "runs_misplaced": int(np.count_nonzero(misplaced)),
        "runs_missed": int(n_t - np.count_nonzero(matched) - np.count_nonzero(misplaced)),
        "runs_pred": n_p,
        "runs_spurious": int(n_p - np.count_nonzero(hits)),
    }


def _components(target: np.ndarray) -> np.ndarray:
    """Label (1, 2, ...; 0 on background) of the 4-connected component of each cell of ``[I, h, w]`` maps,
    components taken per image and per class, all in one ``scipy.ndimage.label`` call."""
    from scipy import ndimage

    classes = np.unique(target[target != 0])
    labels = np.zeros(target.shape, dtype=np.int64)
    if classes.size == 0:
        return labels
    stacked = target[None] == classes[:, None, None, None]  # [K, I, h, w]
    structure = np.zeros((3, 3, 3, 3), dtype=bool)  # connect along rows and columns only
    structure[1, 1] = ndimage.generate_binary_structure(2, 1)
    per_class, _ = ndimage.label(stacked, structure=structure)
    return per_class.max(axis=0)  # classes are disjoint: one non-zero label per foreground cell


def object_class_errors(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, int]:
    """Where class errors start inside the objects of the target, for ``[I, h, w]`` label maps.

    An object is a 4-connected component of one foreground class of one target image. Its row-runs are
    taken in raster order and each is given the majority predicted class over its cells (ties go to the
    lower class id). The object is *ok* when every run's majority is the target class, a *first run*
    error when its first run already differs, *drift* when it starts right and goes wrong later.

    >>> t = np.array([[[1, 1], [1, 1]]])
    >>> object_class_errors(np.array([[[1, 1], [2, 2]]]), t, 3)["obj_err_drift"]
    1
    """
    t_start, t_id, t_fg = _row_runs(target)
    t_flat, p_flat = target.ravel(), pred.ravel().astype(np.int64)
    n_t = int(np.count_nonzero(t_start))
    out = dict.fromkeys(("objects", "obj_class_ok", "obj_err_first_run", "obj_err_drift"), 0)
    if n_t == 0:
        return out
    width = max(int(num_classes), int(p_flat.max()) + 1, int(t_flat.max()) + 1)
    votes = np.bincount(t_id[t_fg] * width + p_flat[t_fg], minlength=n_t * width).reshape(n_t, width)
    wrong = votes.argmax(axis=1) != t_flat[t_start]
    obj = _components(target).ravel()[t_start]  # a run lies in one object: the object of its start
    objects, first_run = np.unique(obj, return_index=True)  # run ids are raster order: first = min
    err_obj, first_err = np.unique(obj[wrong], return_index=True)
    first_err = np.flatnonzero(wrong)[first_err]
    at_first = first_err == first_run[np.searchsorted(objects, err_obj)]
    out["objects"] = int(objects.size)
    out["obj_err_first_run"] = int(np.count_nonzero(at_first))
    out["obj_err_drift"] = int(err_obj.size - np.count_nonzero(at_first))
    out["obj_class_ok"] = int(objects.size - err_obj.size)
    return out


def _as_numpy(masks: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(masks, Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.dtype.kind not in "biu":
        raise MetricInputError(f"expected integer label maps; got dtype {masks.dtype}")
    return masks.astype(np.int64, copy=False)


class TokenDiagnostics(Metric):
    """Teacher-forced field accuracies, exposure-bias gap, and run / object errors of generated masks.

    Args:
        tokenizer: the tokenizer of the sequences (its vocabulary names the fields; it decodes the
            teacher-forced sequences). A bare :class:`~rleseg.tokenizers.base.VocabLayout` gives the
            field accuracies only (no ``tf_dice_*``); pass ``max_run`` for the parts of packed fields.
        num_classes: N (background included) of the token masks; default the tokenizer's.
        max_run: M of packed (LAC) fields; default the tokenizer's ``max_run``.
        **kwargs: ``torchmetrics.Metric`` options.

    ``compute()`` keys (each only where it applies and was seen):

    * ``tf_acc`` (all non-PAD targets), ``tf_acc_<field>`` for every vocabulary range and ``tf_acc_eos``;
      ``tf_acc_<field>_class`` and ``tf_acc_<field>_length`` for packed fields (``lac``);
    * ``tf_dice_mean``, ``tf_dice_agnostic``: Dice of the decoded teacher-forced masks;
    * ``dice_classaware`` (mean over foreground classes of the per-class Dice averaged over the images
      that have the class in prediction or target, SPEC §8), ``dice_agnostic`` (the same for foreground
      vs background), ``exposure_gap`` = ``tf_dice_mean`` − ``dice_classaware``;
    * ``runs_missed``, ``runs_misplaced`` (over target row-runs), ``runs_spurious`` (over predicted
      row-runs), see :func:`row_run_errors`;
    * ``obj_class_ok``, ``obj_err_first_run``, ``obj_err_drift`` (over target objects), see
      :func:`object_class_errors`.

    A clip's frames ``[B, T, h, w]`` count as images throughout.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self,
        tokenizer: Tokenizer | VocabLayout,
        num_classes: int | None = None,
        *,
        max_run: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(tokenizer, VocabLayout):
            self.tokenizer, vocab = None, tokenizer
        else:
            self.tokenizer, vocab = tokenizer, tokenizer.vocab
            max_run = getattr(tokenizer, "max_run", None) if max_run is None else max_run
            num_classes = tokenizer.num_classes if num_classes is None else num_classes
        if num_classes is None or num_classes < 2:
            raise MetricInputError(f"num_classes must be >= 2 (background included); got {num_classes}")
        self.vocab, self.num_classes = vocab, int(num_classes)
        self.max_run = None if max_run is None else int(max_run)
        self.field_names = [r.name for r in vocab.ranges] + ["eos"]
        self.packed = [_is_packed(r.name) and self.max_run is not None for r in vocab.ranges] + [False]
        if self.tokenizer is not None:
            self.prompt = int(getattr(self.tokenizer, "prompt", PROMPTS[self.tokenizer.task]))
            self.panoptic = self.tokenizer.task == "panoptic"
        # token id -> field slot (-1: PAD / prompts / unassigned), and the parts of packed tokens
        size = vocab.size
        field = np.full(size, -1, dtype=np.int64)
        cls_part = np.full(size, -1, dtype=np.int64)
        len_part = np.full(size, -1, dtype=np.int64)
        for i, r in enumerate(vocab.ranges):
            field[r.lo : r.hi] = i
            if self.packed[i]:
                value = np.arange(r.count, dtype=np.int64) + r.value_min - 1
                cls_part[r.lo : r.hi], len_part[r.lo : r.hi] = np.divmod(value, self.max_run)
        field[EOS] = len(vocab.ranges)
        # numpy here, tensors on first use: the constructor makes no tensor but the states (torch.zeros), so
        # the module builds under the fake tensors of rleseg.memory
        self._luts_np = np.stack([field, cls_part, len_part])
        self._luts: dict[tuple[torch.device, int], Tensor] = {}

        f, n = len(self.field_names), self.num_classes
        # [total, correct, class part correct, length part correct] per field
        self.add_state("tf_counts", torch.zeros(4, f, dtype=torch.int64), dist_reduce_fx="sum")
        for prefix in ("tf", "gen"):
            self.add_state(f"{prefix}_dice_sum", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}_dice_images", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}_agn_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}_agn_images", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("gen_counts", torch.zeros(len(GEN_COUNTS), dtype=torch.int64), dist_reduce_fx="sum")

    # ------------------------------------------------------------------ updates
    def update_teacher_forced(
        self, logits: Tensor, target: Tensor, target_masks: Tensor | np.ndarray | None = None
    ) -> None:
        """``logits`` ``[B, L, V]`` of a teacher-forced pass, ``target`` ``[B, L]`` the tokens they predict
        (the model sequence without its prompt). ``target_masks`` (token-resolution label maps) is the
        reference of ``tf_dice_*``; by default the target sequences decoded."""
        self.update(logits=logits, target=target, target_masks=target_masks)

    def update_generated(
        self, pred_token_masks: Tensor | np.ndarray, target_token_masks: Tensor | np.ndarray
    ) -> None:
        """Integer label maps ``[B, h, w]`` (or ``[B, T, h, w]``) at token resolution: decoded from the
        generated sequences, and the ground truth."""
        self.update(pred_token_masks=pred_token_masks, target_token_masks=target_token_masks)

    def update(
        self,
        logits: Tensor | None = None,
        target: Tensor | None = None,
        target_masks: Tensor | np.ndarray | None = None,
        pred_token_masks: Tensor | np.ndarray | None = None,
        target_token_masks: Tensor | np.ndarray | None = None,
    ) -> None:
        """Either part, or both (use the two named methods; this one keeps torchmetrics' bookkeeping)."""
        if logits is not None or target is not None:
            if logits is None or target is None:
                raise MetricInputError("teacher-forced diagnostics need both logits and target")
            self._update_tf(logits, target, target_masks)
        if pred_token_masks is not None or target_token_masks is not None:
            if pred_token_masks is None or target_token_masks is None:
                raise MetricInputError("generated diagnostics need both predicted and target token masks")
            self._update_gen(_as_numpy(pred_token_masks), _as_numpy(target_token_masks))

    def _lut(self, device: torch.device, vocab: int) -> Tensor:
        key = (device, vocab)
        if key not in self._luts:
            lut = self._luts_np
            if vocab > lut.shape[1]:  # tokens past the layout belong to no field
                lut = np.concatenate([lut, np.full((3, vocab - lut.shape[1]), -1, dtype=np.int64)], axis=1)
            self._luts[key] = torch.from_numpy(lut).to(device)
        return self._luts[key]

    def _update_tf(self, logits: Tensor, target: Tensor, target_masks: Tensor | np.ndarray | None) -> None:
        if logits.ndim != 3 or target.shape != logits.shape[:2]:
            raise MetricInputError(
                f"expected logits [B, L, V] and target [B, L]; got {tuple(logits.shape)} and "
                f"{tuple(target.shape)}"
            )
        pred = logits.detach().argmax(dim=-1)
        target = target.to(pred.device).long()
        field, cls_part, len_part = self._lut(pred.device, max(logits.shape[-1], int(target.max()) + 1))
        slot = field[target]
        keep = (target != PAD) & (slot >= 0)
        same = field[pred] == slot
        hits = torch.stack(
            [
                torch.ones_like(same),
                pred == target,
                same & (cls_part[pred] == cls_part[target]),
                same & (len_part[pred] == len_part[target]),
            ]
        )[:, keep]
        f = len(self.field_names)
        index = slot[keep] + f * torch.arange(4, device=pred.device)[:, None]
        counts = torch.bincount(index[hits], minlength=4 * f).reshape(4, f)
        self.tf_counts += counts.to(self.tf_counts)
        if self.tokenizer is None:
            return
        # the teacher-forced sequence: prompt + argmax at each non-PAD target position (a prefix)
        lengths = (target != PAD).sum(dim=1).cpu().tolist()
        pred_np, target_np = pred.cpu().numpy(), target.cpu().numpy()
        tf_masks = [self._decode(pred_np[b, :n]) for b, n in enumerate(lengths)]
        if target_masks is None:
            ref = np.stack([self._decode(target_np[b, :n]) for b, n in enumerate(lengths)])
        else:
            ref = _as_numpy(target_masks)
        self._add_dice("tf", np.stack(tf_masks), ref)

    def _decode(self, content: np.ndarray) -> np.ndarray:
        seq = np.concatenate([[self.prompt], content]).astype(np.int64)
        mask = self.tokenizer.decode_report(seq).mask.astype(np.int64)
        if self.panoptic:
            from rleseg.tokenizers.panoptic import IDS_PER_CLASS

            mask = mask // IDS_PER_CLASS
        return mask

    def _add_dice(self, prefix: str, pred: np.ndarray, target: np.ndarray) -> None:
        if pred.shape != target.shape:
            raise MetricInputError(
                f"predicted and target token masks differ in shape: {pred.shape} vs {target.shape}"
            )
        p, t = torch.from_numpy(pred), torch.from_numpy(target)
        scores, evaluated = per_image_scores(p, t, self.num_classes)
        total = getattr(self, f"{prefix}_dice_sum")
        total += (scores["dice"] * evaluated).sum(dim=0).to(total)
        images = getattr(self, f"{prefix}_dice_images")
        images += evaluated.sum(dim=0).to(images)
        fg_scores, fg_evaluated = per_image_scores((p != 0).long(), (t != 0).long(), 2)
        agn = getattr(self, f"{prefix}_agn_sum")
        agn += (fg_scores["dice"][:, 1] * fg_evaluated[:, 1]).sum().to(agn)
        agn_images = getattr(self, f"{prefix}_agn_images")
        agn_images += fg_evaluated[:, 1].sum().to(agn_images)

    def _update_gen(self, pred: np.ndarray, target: np.ndarray) -> None:
        if pred.shape != target.shape or pred.ndim not in (3, 4):
            raise MetricInputError(
                f"expected token masks [B, h, w] or [B, T, h, w] of one shape; got {pred.shape} and "
                f"{target.shape}"
            )
        self._add_dice("gen", pred, target)
        pred = pred.reshape(-1, *pred.shape[-2:])
        target = target.reshape(-1, *target.shape[-2:])
        counts = {**row_run_errors(pred, target), **object_class_errors(pred, target, self.num_classes)}
        vec = torch.tensor([counts[k] for k in GEN_COUNTS], dtype=torch.int64)
        self.gen_counts += vec.to(self.gen_counts.device)

    # ------------------------------------------------------------------ result
    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        total, correct, cls_ok, len_ok = self.tf_counts.double().cpu()
        if total.sum() > 0:
            out["tf_acc"] = float(correct.sum() / total.sum())
        for i, name in enumerate(self.field_names):
            if total[i] == 0:
                continue
            out[f"tf_acc_{name}"] = float(correct[i] / total[i])
            if self.packed[i]:
                out[f"tf_acc_{name}_class"] = float(cls_ok[i] / total[i])
                out[f"tf_acc_{name}_length"] = float(len_ok[i] / total[i])
        for prefix, mean_key, agn_key in (
            ("tf", "tf_dice_mean", "tf_dice_agnostic"),
            ("gen", "dice_classaware", "dice_agnostic"),
        ):
            images = getattr(self, f"{prefix}_dice_images")[1:].cpu()
            per_class = getattr(self, f"{prefix}_dice_sum")[1:].cpu() / images.clamp(min=1)
            if (images > 0).any():
                out[mean_key] = float(per_class[images > 0].mean())
            agn_images = float(getattr(self, f"{prefix}_agn_images"))
            if agn_images > 0:
                out[agn_key] = float(getattr(self, f"{prefix}_agn_sum")) / agn_images
        if "tf_dice_mean" in out and "dice_classaware" in out:
            out["exposure_gap"] = out["tf_dice_mean"] - out["dice_classaware"]
        c = dict(zip(GEN_COUNTS, self.gen_counts.cpu().tolist(), strict=True))
        if c["runs_target"]:
            out["runs_missed"] = c["runs_missed"] / c["runs_target"]
            out["runs_misplaced"] = c["runs_misplaced"] / c["runs_target"]
        if c["runs_pred"]:
            out["runs_spurious"] = c["runs_spurious"] / c["runs_pred"]
        if c["objects"]:
            for key in ("obj_class_ok", "obj_err_first_run", "obj_err_drift"):
                out[key] = c[key] / c["objects"]
        return out
