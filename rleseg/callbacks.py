"""Lightning callbacks: Optuna pruning, peak memory, sequence lengths, and random state for exact resume.

* :class:`OptunaPruning` reports the validation metric to an Optuna trial and stops training when the
  pruner says so. The project owns it because Optuna's Lightning integration has broken across Lightning
  versions; this one uses only stable hooks, never raises from inside the fit loop (it asks the trainer
  to stop and lets the caller raise ``optuna.TrialPruned`` afterwards), and under DDP asks the pruner on
  rank 0 only and broadcasts the decision.
* :class:`PeakMemory` measures the peak tensor memory of real training steps (the figure the sweep's
  estimate is checked against).
* :class:`SequenceLengths` collects the ground-truth tokens per mask and the truncation of the
  validation batches (the encoding's own sequence lengths, independent of what the model generates).
* :class:`RunSummary` ends ``fit``, ``validate`` and ``test`` with what people look for: the Dice per class
  and overall (label and token resolution, the encoding's ceiling), validity, tokens per mask, the best
  checkpoint and the run folder.
* :class:`RandomState` saves the global random generators (Python, NumPy, torch) in every checkpoint and
  restores them before the first resumed step, so dropout draws continue as in an uninterrupted run.

>>> import optuna
>>> study = optuna.create_study(direction="maximize")
>>> callback = OptunaPruning(study.ask(), monitor="val/dice_mean")
>>> callback.pruned
False
"""

from __future__ import annotations

import math
import random
import warnings
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from rleseg.memory import MIB, _cpu_allocations, _running_peak, live_tensor_bytes
from rleseg.tokenizers.base import EOS, PAD

__all__ = ["MonitorError", "OptunaPruning", "PeakMemory", "RandomState", "RunSummary", "SequenceLengths"]


class MonitorError(ValueError):
    """The monitored metric was never logged (a misspelt key would otherwise silently never prune)."""


class OptunaPruning(Callback):
    """Report ``monitor`` to an Optuna trial after every validation run; stop training when pruned.

    The step reported is the number of validation runs completed before this one (0, 1, ...: the epoch
    when validating once per epoch), so trials with different batch sizes stay comparable.

    After ``trainer.fit`` returns, check :attr:`pruned` and raise ``optuna.TrialPruned(callback.message)``
    (raising inside the fit loop would run Lightning's exception teardown mid-epoch).

    Args:
        trial: the ``optuna.trial.Trial`` to report to (single-objective studies only: Optuna does not
            prune multi-objective trials).
        monitor: the logged metric to report, e.g. ``"val/dice_mean"``.
    """

    def __init__(self, trial: Any, monitor: str = "val/dice_mean") -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.pruned = False
        self.message = ""
        self.reports: list[tuple[int, float]] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step = len(self.reports)
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            available = sorted(k for k in trainer.callback_metrics if not k.startswith("train"))
            raise MonitorError(
                f"pruning monitor {self.monitor!r} was not logged; logged metrics: {available}"
            )
        value = float(value)
        self.reports.append((step, value))
        should_prune = False
        if trainer.is_global_zero:
            # A NaN intermediate value cannot be compared; report nothing for this step.
            if not math.isnan(value):
                self.trial.report(value, step)
            should_prune = bool(self.trial.should_prune())
        should_prune = bool(trainer.strategy.broadcast(should_prune, src=0))
        if should_prune:
            self.pruned = True
            self.message = (
                f"pruned at validation {step} (epoch {trainer.current_epoch}): {self.monitor}={value:.4f}"
            )
            trainer.should_stop = True


class PeakMemory(Callback):
    """Measure the peak tensor memory of real training steps.

    * CUDA: ``torch.cuda.max_memory_allocated`` over every training batch (the peak statistics are
      reset at each batch start, so validation and generation do not count).
    * CPU: the allocator events of one profiled training batch (batch ``profile_batch``, or the first if
      there are fewer), added to the tensors already live when the batch starts (parameters, gradients,
      optimizer state, the batch) — the same quantity as on CUDA.

    :attr:`peak_bytes` is ``None`` until a batch was measured; :attr:`method` says how.

    Args:
        profile_batch: which training batch to profile on the CPU (1: the optimizer state exists by then).
    """

    def __init__(self, profile_batch: int = 1) -> None:
        super().__init__()
        self.profile_batch = profile_batch
        self.peak_bytes: int | None = None
        self.method: str | None = None
        self._profiling: Any = None
        self._events: Any = None
        self._live = 0

    @property
    def peak_mib(self) -> float | None:
        return None if self.peak_bytes is None else self.peak_bytes / MIB

    def _device(self, pl_module: LightningModule) -> torch.device:
        return pl_module.device

    def _cpu_target(self, trainer: Trainer) -> int:
        batches = trainer.num_training_batches
        if isinstance(batches, (int, float)) and math.isfinite(batches) and batches <= self.profile_batch:
            return 0
        return self.profile_batch

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        device = self._device(pl_module)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        elif device.type == "cpu" and self.peak_bytes is None and batch_idx == self._cpu_target(trainer):
            self._live = live_tensor_bytes(pl_module, *trainer.optimizers, batch)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._profiling = _cpu_allocations()
                self._events = self._profiling.__enter__()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        device = self._device(pl_module)
        if device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(device))
            self.peak_bytes, self.method = max(peak, self.peak_bytes or 0), "cuda"
        elif self._profiling is not None:
            self._profiling.__exit__(None, None, None)
            self.peak_bytes = self._live + max(0, _running_peak(self._events()))
            self.method = "cpu-profiler"
            self._profiling = self._events = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self._profiling is not None:
            self._profiling.__exit__(None, None, None)
            self._profiling = None


class SequenceLengths(Callback):
    """Ground-truth tokens per mask and truncation of the last validation run.

    Content tokens are counted as in :class:`rleseg.metrics.SequenceStats`: prompt, EOS and PAD excluded.
    Batches without ``tokens`` (evaluation on whole images cut into patches) use ``patch_tokens``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lengths: list[int] = []
        self.truncated: list[bool] = []
        self._current: tuple[list[int], list[bool]] = ([], [])

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._current = ([], [])

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(batch, dict):
            return
        tokens = batch.get("tokens", batch.get("patch_tokens"))
        if tokens is None:
            return
        tokens = tokens.reshape(-1, tokens.shape[-1])
        flags = batch.get("truncated", batch.get("patch_truncated"))
        content = ((tokens != PAD) & (tokens != EOS)).sum(dim=1) - 1  # minus the task prompt
        self._current[0].extend(int(n) for n in content.clamp_min(0).cpu())
        if flags is not None:
            self._current[1].extend(bool(f) for f in flags.reshape(-1).cpu())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._current[0]:
            self.lengths, self.truncated = self._current

    def summary(self) -> dict[str, float]:
        """``tokens_per_mask_p50/p95/max/mean`` and ``truncated_fraction`` (empty before any validation)."""
        if not self.lengths:
            return {}
        lengths = np.asarray(self.lengths, dtype=np.float64)
        out = {
            "tokens_per_mask_p50": float(np.percentile(lengths, 50)),
            "tokens_per_mask_p95": float(np.percentile(lengths, 95)),
            "tokens_per_mask_max": float(lengths.max()),
            "tokens_per_mask_mean": float(lengths.mean()),
        }
        if self.truncated:
            out["truncated_fraction"] = float(np.mean(self.truncated))
        return out


class RandomState(Callback):
    """Keeps the global random generators in checkpoints so a resumed run draws what the original would.

    The state is taken when the checkpoint is written (after a training step) and restored at the first
    training step after a resume (not when the checkpoint is read: setting up the resumed run draws
    numbers of its own, e.g. the DataLoader's base seed). Stored as plain lists and tensors, so checkpoints
    stay loadable weights-only.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the global one is the point)
        version, internal, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss],
            "python": [version, list(internal), gauss_next],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class RunSummary(Callback):
    """Prints a short table at the end of ``fit`` (the last validation), ``validate`` and ``test``."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._print(trainer, pl_module, "val", "fit")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # after Lightning's own results table, so that the summary is what a run ends with
        if stage in ("validate", "test"):
            self._print(trainer, pl_module, "val" if stage == "validate" else "test", stage)

    @staticmethod
    def lines(metrics: dict[str, Any], stage: str, class_names: list[str]) -> list[str]:
        """The table for logged ``metrics`` of ``stage`` (``val``/``test``)."""

        def get(key: str) -> float | None:
            value = metrics.get(f"{stage}/{key}")
            return None if value is None else float(value)

        def fmt(value: float | None, spec: str = ".3f") -> str:
            return "-" if value is None or math.isnan(value) else format(value, spec)

        out = [f"{'class':<24}{'Dice':>8}"]
        for name in class_names[1:]:
            out.append(f"{name[:23]:<24}{fmt(get(f'dice_{name}')):>8}")
        mean = f"{'mean (foreground)':<24}{fmt(get('dice_mean')):>8}"
        token, ceiling = get("token_dice_mean"), get("ceiling_dice_mean")
        if token is not None:
            mean += f"   token resolution {fmt(token)}   ceiling {fmt(ceiling)}"
        out.append(mean)
        extra = []
        if get("validity") is not None:
            extra.append(f"validity {fmt(get('validity'))}")
        if get("tokens_p50") is not None:
            extra.append(
                f"tokens per mask p50 {fmt(get('tokens_p50'), '.0f')} / p95 {fmt(get('tokens_p95'), '.0f')}"
            )
        if get("pq") is not None:
            extra.append(f"PQ {fmt(get('pq'))}")
        if extra:
            out.append("   ".join(extra))
        return out

    def _print(self, trainer: Trainer, pl_module: LightningModule, stage: str, verb: str) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
        names = list(getattr(getattr(pl_module, "info", None), "class_names", []) or [])
        what = "validation" if stage == "val" else "test"
        lines = [f"rleseg {verb}: {what} at step {trainer.global_step} (epoch {trainer.current_epoch})"]
        if f"{stage}/dice_mean" in metrics:
            lines += ["  " + line for line in self.lines(metrics, stage, names)]
        else:
            lines.append(f"  no {what} ran (no {stage} metrics were logged)")
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if verb == "fit" else ""
        if best:
            score = trainer.checkpoint_callback.best_model_score
            monitor = trainer.checkpoint_callback.monitor
            lines.append(
                f"  best checkpoint: {best}"
                + (f" ({monitor} {float(score):.4f})" if score is not None else "")
            )
        if verb != "fit" and trainer.ckpt_path:
            lines.append(f"  checkpoint: {trainer.ckpt_path}")
        if verb == "fit":
            lines.append(f"  run folder: {trainer.log_dir or trainer.default_root_dir}")
        print("\n".join(lines), flush=True)
