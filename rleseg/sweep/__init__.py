"""Optuna sweeps under fixed memory budgets: ``rleseg sweep --config sweeps/NAME.yaml``.

The package, along the path a sweep takes:

* :mod:`~rleseg.sweep.spec` — the sweep file (knobs, objectives, sampler, budgets, scales, ``repeats``)
  and the trial configs it defines; no Optuna;
* :mod:`~rleseg.sweep.record` — the trial record: every attribute the sweep writes and the report reads,
  the trial outcomes, and the budget rule;
* :mod:`~rleseg.sweep.study` — storage, samplers (a distinct seed per worker and per resume), pruners,
  constraints and study bookkeeping: Optuna's internals live here only;
* :mod:`~rleseg.sweep.trial` — one trial: sequence length, memory estimate, training (in a child process
  by default);
* :mod:`~rleseg.sweep.run` — workers, budgets, resume (a study is bound to the configuration it ran),
  progress lines and the dry run.

Each trial writes ``trial_NNNN/config.yaml`` in the sweep's output folder (``rleseg fit --config`` on it
reproduces the trial). Browse a study with optuna-dashboard (``pip install optuna-dashboard``; objectives
are named, over-budget trials show as infeasible)::

    optuna-dashboard sqlite:///runs/sweeps/encodings/cpu/study.db

Export a study's trials to CSV with ``rleseg sweep --config ... --export trials.csv``; write its report with
the ``rleseg report`` command the sweep prints last.
"""

from rleseg.sweep.record import budgets_fit, is_over_budget
from rleseg.sweep.run import DryRunPoint, estimate_points, run_sweep
from rleseg.sweep.spec import (
    Objective,
    ParamSpec,
    SweepError,
    SweepSpec,
    check_keys,
    config_differences,
    full_config,
    set_dotted,
)
from rleseg.sweep.study import (
    StudyProgress,
    export_trials,
    make_pruner,
    make_sampler,
    open_storage,
    requeue_interrupted,
    sampler_seed,
    shown_url,
    storage_url,
    study_progress,
)
from rleseg.sweep.trial import TrialFailed, auto_max_seq_len, train_trial

__all__ = [
    "DryRunPoint",
    "Objective",
    "ParamSpec",
    "StudyProgress",
    "SweepError",
    "SweepSpec",
    "TrialFailed",
    "auto_max_seq_len",
    "budgets_fit",
    "check_keys",
    "config_differences",
    "estimate_points",
    "export_trials",
    "full_config",
    "is_over_budget",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "requeue_interrupted",
    "run_sweep",
    "sampler_seed",
    "set_dotted",
    "shown_url",
    "storage_url",
    "study_progress",
    "train_trial",
]
