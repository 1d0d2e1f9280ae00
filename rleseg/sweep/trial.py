"""One trial: its config's sequence length and memory estimate, and its training — in this process
(``runner: inline``) or in a child process (``runner: process``, ``python -m rleseg.sweep --run-trial``:
a crash, an out-of-memory kill or a leak costs one trial, not the sweep).

Training builds the run exactly as ``rleseg fit --config CONFIG`` does and returns the trial's record
(see :mod:`rleseg.sweep.record`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rleseg.sweep import record as rec
from rleseg.sweep.spec import SweepError, SweepSpec, set_dotted

#: the environment variable that hands a trial's child process the study's storage URL (runner: process)
STORAGE_VARIABLE = "RLESEG_SWEEP_STORAGE"


class TrialFailed(RuntimeError):
    """A trial whose training did not finish (exception, non-finite loss, killed child process).

    ``detail`` holds the child process's traceback (the parent's own says only where it re-raised).
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def _encoded_lengths(datamodule: Any, samples: int) -> list[int]:
    """Content tokens of the first ``samples`` training masks, before any truncation."""
    import numpy as np

    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    lengths = []
    for i in range(min(samples, len(dataset))):
        mask = dataset[i]["mask"]
        mask = mask.numpy() if hasattr(mask, "numpy") else np.asarray(mask)
        lengths.append(len(datamodule.tokenizer.encode(mask)))
    return lengths


def auto_max_seq_len(
    config: dict[str, Any], quantile: float = 0.99, samples: int = 256, multiple_of: int = 16
) -> int:
    """``max_seq_len`` covering ``quantile`` of the training masks (prompt + content + EOS).

    Sweeps over encodings need it: a fixed length is too short for one scheme and wastes memory (and so
    budget) for another; the paper's whole point is that shorter sequences cost less.
    """
    from rleseg.memory import instantiate_data

    if not 0 < quantile <= 1:
        raise SweepError(f"auto_max_seq_len.quantile must be in (0, 1], got {quantile}")
    probe = copy.deepcopy(config)
    # Long enough for any scheme's minimum (the dense baseline needs H*W + 2); only `encode` is used.
    set_dotted(probe, "data.init_args.max_seq_len", 1 << 16)
    dm = instantiate_data(probe)
    import numpy as np

    lengths = _encoded_lengths(dm, int(samples))
    need = float(np.quantile(lengths, quantile)) if lengths else 0.0
    from rleseg.data.datamodules import min_sequence_length

    length = max(int(math.ceil(need)) + 2, min_sequence_length(dm.tokenizer))
    return int(math.ceil(length / multiple_of) * multiple_of)


class Estimator:
    """Builds trial configs and estimates their memory; caches DataModules and sequence lengths."""

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec
        self.base = spec.base_config()
        self._lengths: dict[str, int] = {}

    def config(self, params: Mapping[str, Any], trial_dir: Path | None) -> dict[str, Any]:
        config = self.spec.trial_config(params, base=self.base, trial_dir=trial_dir)
        if self.spec.auto_max_seq_len is not None:
            data = copy.deepcopy(config.get("data") or {})
            (data.get("init_args") or {}).pop("max_seq_len", None)
            key = json.dumps(data, sort_keys=True, default=str)
            if key not in self._lengths:
                self._lengths[key] = auto_max_seq_len(config, **self.spec.auto_max_seq_len)
            set_dotted(config, "data.init_args.max_seq_len", self._lengths[key])
        return config

    def estimate(self, config: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Record attributes of the estimate, and the estimated peak in MiB."""
        from rleseg.memory import build_training_step, estimate_step_memory

        make_step, dm = build_training_step(config)
        estimate = estimate_step_memory(make_step)
        record: dict[str, Any] = estimate.record("estimated_")
        record.update(
            {
                rec.NUM_PARAMETERS: estimate.num_parameters,
                rec.VOCAB_SIZE: int(getattr(dm, "vocab_size", 0)),
                rec.MAX_SEQ_LEN: int(getattr(dm, "max_seq_len", 0)),
                rec.ESTIMATE_SECONDS: round(estimate.seconds, 3),
            }
        )
        return record, estimate.peak_mib


# ======================================================================================== training
def train_trial(
    config_path: str | Path, trial: Any | None = None, monitor: str = "val/dice_mean"
) -> tuple[dict[str, Any], str | None]:
    """Train one trial config in this process and return ``(record, pruned_message)``.

    Builds the run exactly as ``rleseg fit --config CONFIG`` does (``RlesegCLI(run=False)`` then
    ``trainer.fit``), with :class:`~rleseg.callbacks.PeakMemory`, :class:`~rleseg.callbacks.SequenceLengths`
    and, given a ``trial``, :class:`~rleseg.callbacks.OptunaPruning` added.

    Args:
        config_path: the trial's experiment YAML.
        trial: an ``optuna.trial.Trial`` to report ``monitor`` to for pruning (None: no pruning).
        monitor: the metric reported for pruning.

    Returns:
        The record (``train_seconds``, ``measured_peak_mib``, token statistics, every logged metric, ...)
        and, if the pruner stopped training, its message (else None).
    """
    from rleseg.callbacks import OptunaPruning, PeakMemory, SequenceLengths
    from rleseg.lightning_cli import RlesegCLI

    with warnings.catch_warnings():
        # LightningCLI warns when args are given while sys.argv has some (the sweep's own): intended here.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = RlesegCLI(args=["--config", str(config_path)], run=False)
    peak, lengths = PeakMemory(), SequenceLengths()
    callbacks: list[Any] = [peak, lengths]
    pruning = OptunaPruning(trial, monitor) if trial is not None else None
    if pruning is not None:
        callbacks.append(pruning)
    cli.trainer.callbacks.extend(callbacks)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    metrics = {
        k: float(v) for k, v in cli.trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1
    }
    record: dict[str, Any] = {
        rec.TRAIN_SECONDS: round(seconds, 3),
        rec.EPOCHS: int(cli.trainer.current_epoch),
        rec.GLOBAL_STEP: int(cli.trainer.global_step),
        rec.MEASURED_PEAK: None if peak.peak_mib is None else round(peak.peak_mib, 3),
        rec.MEASURED_METHOD: peak.method,
        rec.DECODE_SECONDS: metrics.get("val/decode_seconds_per_image"),
        rec.VALIDITY: metrics.get("val/validity"),
        **lengths.summary(),
        **metrics,
    }
    if not math.isfinite(metrics.get("train/loss", 0.0)):
        raise TrialFailed(f"training loss is {metrics['train/loss']}")
    return record, (pruning.message if pruning is not None and pruning.pruned else None)


def _parent_watchdog() -> Callable[[], None]:
    """Stop this child when its sweep process is gone; returns a check to call before writing results.

    A child whose sweep process was killed (SIGKILL leaves no chance to clean up) must not train on, and
    must never leave a result for a sweep that no longer waits for it: the thread polls while training
    runs, and the returned check closes the window between its last poll and the result file.
    """
    parent = os.getppid()

    def orphaned() -> None:
        if os.getppid() != parent:
            os._exit(137)

    def watch() -> None:
        while True:
            time.sleep(0.25)
            orphaned()

    threading.Thread(target=watch, daemon=True).start()
    return orphaned


def child_main(job_path: str) -> int:
    """Entry point of a trial's child process (``runner: process``)."""
    exit_if_orphaned = _parent_watchdog()
    job = json.loads(Path(job_path).read_text())
    result_path = Path(job["result"])
    try:
        trial = None
        if job.get("prune"):
            from rleseg.sweep.study import attach_trial

            trial = attach_trial(
                os.environ[STORAGE_VARIABLE], job["study_name"], int(job["trial_id"]), tuple(job["pruner"])
            )
        record, pruned = train_trial(job["config"], trial, job.get("monitor", "val/dice_mean"))
        result = {"status": "pruned" if pruned else "complete", "record": record, "message": pruned}
        code = 0
    except Exception as err:  # noqa: BLE001 - every failure is reported to the parent, which records it
        result = {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        }
        code = 1
    exit_if_orphaned()
    result_path.write_text(json.dumps(result, default=_json_default))
    return code


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
