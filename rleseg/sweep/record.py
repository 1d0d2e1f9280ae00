"""The trial record: every user attribute a sweep writes on a trial and the study, declared once.

:mod:`rleseg.sweep` writes these keys and :mod:`rleseg.report` reads them; neither side spells a key
out. A trial's record also holds every metric its training logged (``val/dice_mean``, ``val/dice_<class>``,
``train/loss``, ``val/diag/*``, ...) under the logged name, and the memory estimate's parts
(``estimated_<part>_mib``, see :meth:`rleseg.memory.MemoryEstimate.record`).

**Outcome.** :data:`OUTCOME` says what became of a trial, in words a person and optuna-dashboard read:

* ``complete`` — trained, objective values set (Optuna state COMPLETE);
* ``over_budget`` — its estimated peak is over the largest budget, never trained (state PRUNED, so the
  samplers count the point as visited, and an Optuna constraint ``estimated_peak_over_budget_mib`` > 0,
  which optuna-dashboard draws as an infeasible trial);
* ``pruned`` — the pruner stopped its training (state PRUNED, constraint <= 0);
* ``duplicate`` — a grid point another worker holds (state PRUNED, never trained);
* ``failed`` / ``interrupted`` — an error or Ctrl-C (state FAIL).

**The budget rule** (:func:`budgets_fit`) lives here so the sweep (which trials to train) and the report
(which trials a budget admits) cannot disagree.

>>> budgets_fit(120.0, [100, 140, 200])
[140.0, 200.0]
>>> is_over_budget(250.0, [100, 200]), is_over_budget(250.0, [])
(True, False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# ------------------------------------------------------------------------------ study attributes
#: Study attribute: the sweep's summary (name, scale, knobs, objectives, sampler, budgets, fingerprint).
STUDY_SWEEP = "sweep"
#: Study attribute: the budgets (MiB), also in the summary (kept for studies written before it was).
STUDY_BUDGETS = "budgets_mib"
#: Study attribute: what the study ran — the resolved base config, the sweep file's text, the package
#: version and git commit (see :func:`rleseg.sweep.spec.SweepSpec.binding`).
STUDY_BINDING = "binding"
#: Study attribute: one entry per start of the sweep on the study (a new run or a ``--resume``): when,
#: the package version and commit, the machine, the number of workers and their sampler seeds.
STUDY_RUNS = "runs"

# ------------------------------------------------------------------------------ trial attributes
OUTCOME = "outcome"
COMPLETE, OVER_BUDGET, PRUNED, DUPLICATE, FAILED, INTERRUPTED = (
    "complete",
    "over_budget",
    "pruned",
    "duplicate",
    "failed",
    "interrupted",
)
OUTCOMES = (COMPLETE, OVER_BUDGET, PRUNED, DUPLICATE, FAILED, INTERRUPTED)

WORKER = "worker"  # host:pid of the process that ran the trial
TRIAL_DIR = "trial_dir"  # the trial's folder, relative to the study's output folder (trial_NNNN)
CONFIG_PATH = "config_path"  # older studies: the trial's config.yaml (absolute path)
ERROR = "error"  # "Type: message" of a failed trial
ERROR_LOG = "error_log"  # the traceback file, relative to the output folder (older studies: absolute)
LOG_PATH = "log_path"  # the trial process's stdout/stderr, relative like ERROR_LOG
RETRY_OF = "retry_of"  # the number of the trial this one retries (its process died)
DUPLICATE_OF = "duplicate_of"  # the trial that holds this grid point
INTERRUPTED_FLAG = "interrupted"  # True: stopped by Ctrl-C (retried on --resume)
PRUNED_MESSAGE = "pruned_message"  # what the pruner said

ESTIMATED_PEAK = "estimated_peak_mib"
MEASURED_PEAK = "measured_peak_mib"
MEASURED_METHOD = "measured_method"
BUDGETS_FIT = "budgets_fit"  # the budgets the estimate fits under (list of MiB)
BUDGET = "budget_mib"  # the largest budget (a trial over it is not trained)
INFEASIBLE = "infeasible"  # True: over every budget (older studies' only marker of over_budget)
NUM_PARAMETERS = "num_parameters"
VOCAB_SIZE = "vocab_size"
MAX_SEQ_LEN = "max_seq_len"
ESTIMATE_SECONDS = "estimate_seconds"
TOKENS_P50, TOKENS_P95, TOKENS_MAX, TOKENS_MEAN = (
    "tokens_per_mask_p50",
    "tokens_per_mask_p95",
    "tokens_per_mask_max",
    "tokens_per_mask_mean",
)
TRUNCATED = "truncated_fraction"
TRAIN_SECONDS = "train_seconds"
EPOCHS = "epochs"
GLOBAL_STEP = "global_step"
DECODE_SECONDS = "decode_seconds_per_image"
VALIDITY = "validity_rate"

#: The Optuna constraint every trial of a sweep with budgets carries: estimated peak minus the largest
#: budget (<= 0 is feasible).
CONSTRAINT = "estimated_peak_over_budget_mib"

#: Record columns first in the export, in this order (the rest follow alphabetically).
LEADING_COLUMNS = (
    OUTCOME,
    INFEASIBLE,
    BUDGETS_FIT,
    ESTIMATED_PEAK,
    MEASURED_PEAK,
    NUM_PARAMETERS,
    VOCAB_SIZE,
    MAX_SEQ_LEN,
    TOKENS_P50,
    TOKENS_P95,
    TOKENS_MAX,
    TRUNCATED,
    TRAIN_SECONDS,
    DECODE_SECONDS,
    VALIDITY,
    "val/dice_mean",
)


# ----------------------------------------------------------------------------------- the rules
def budgets_fit(peak_mib: float, budgets_mib: Sequence[float]) -> list[float]:
    """The budgets an estimated peak fits under (``peak <= budget``), in the order given."""
    return [float(b) for b in budgets_mib if peak_mib <= float(b)]


def is_over_budget(peak_mib: float, budgets_mib: Sequence[float]) -> bool:
    """Over every budget: the trial is not trained. No budgets: nothing is over."""
    return bool(budgets_mib) and not budgets_fit(peak_mib, budgets_mib)


def fits_budget(attrs: Mapping[str, Any], budget_mib: float | None) -> bool:
    """Whether a recorded trial fits ``budget_mib`` (None: no budget, everything fits).

    Reads the recorded :data:`BUDGETS_FIT`; a record without it falls back to the estimate itself.
    """
    if budget_mib is None:
        return True
    fit = attrs.get(BUDGETS_FIT)
    if isinstance(fit, str):  # a CSV cell
        import json

        try:
            fit = json.loads(fit)
        except ValueError:
            fit = None
    if isinstance(fit, list) and fit:
        return any(abs(float(b) - float(budget_mib)) < 1e-9 for b in fit)
    peak = attrs.get(ESTIMATED_PEAK)
    try:
        return peak is not None and float(peak) <= float(budget_mib)
    except (TypeError, ValueError):
        return False


def outcome(state: str, attrs: Mapping[str, Any]) -> str:
    """A trial's :data:`OUTCOME` from its Optuna state name and attributes (studies written before the
    outcome was recorded derive it from the older markers)."""
    recorded = attrs.get(OUTCOME)
    if recorded in OUTCOMES:
        return str(recorded)
    if state == "COMPLETE":
        return COMPLETE
    if state == "PRUNED":
        if attrs.get(INFEASIBLE):
            return OVER_BUDGET
        return DUPLICATE if DUPLICATE_OF in attrs else PRUNED
    if state == "FAIL":
        return INTERRUPTED if attrs.get(INTERRUPTED_FLAG) else FAILED
    return state.lower()
