"""Storage, samplers, pruners and study bookkeeping: the only module that touches Optuna's internals
(system attributes, trial ids, constraints, the grid sampler's bookkeeping).

**Storage.** SQLite by default (``<output>/study.db``), or any SQLAlchemy URL (PostgreSQL, MySQL: several
machines on one study). Heartbeats mark trials whose process died as failed, and they are retried.

**Sampler seeds.** A seeded sampler (``sampler: {name: tpe, seed: 0}``) gets a distinct seed per worker
and per start of the sweep on the study (:func:`sampler_seed`): the first start's first worker keeps the
seed as written; every other (start, worker) pair derives its own from it, so no two processes, and no
resume, replay the same start-up trials.

**Budgets.** Every trial of a sweep with budgets carries the Optuna constraint
:data:`~rleseg.sweep.record.CONSTRAINT` (estimated peak minus the largest budget) through
``Trial.set_constraint``: TPE and NSGA-II learn the infeasible region from it, and optuna-dashboard draws
over-budget trials as infeasible. Objective names are set with ``Study.set_metric_names``.

>>> sampler_seed(0, run=0, worker=0), sampler_seed(0, run=0, worker=1) != sampler_seed(0, run=1, worker=0)
(0, True)
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rleseg.sweep import record as rec
from rleseg.sweep.spec import SweepError, SweepSpec


# ========================================================================================= storage
def open_storage(
    url: str, heartbeat: bool = True, heartbeat_interval: int = 30, grace_period: int = 90, max_retry: int = 3
) -> Any:
    """An Optuna ``RDBStorage`` for ``url``, with heartbeats that fail and retry trials of dead processes.

    SQLite gets a long lock timeout so several local workers can share one file. ``postgresql://`` without
    a driver means psycopg 3 (``pip install 'rleseg[postgres]'``). A storage that cannot be opened (driver
    missing, server unreachable, authentication failed, no such database) is a one-line :class:`SweepError`
    that never shows the password.
    """
    import optuna

    url = storage_url(url)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    if url.startswith("postgresql") and "connect_timeout=" not in url:
        engine_kwargs = {"connect_args": {"connect_timeout": 15}}  # a firewalled host fails, not hangs
    kwargs: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats and their retry callback are "experimental" in Optuna
        if heartbeat:
            retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
            name = "heartbeat_stale_trial_callback"
            if retry is None:  # Optuna < 4.9
                retry, name = optuna.storages.RetryFailedTrialCallback, "failed_trial_callback"
            kwargs = {
                "heartbeat_interval": heartbeat_interval,
                "grace_period": grace_period,
                name: retry(max_retry),
            }
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except Exception as err:
            if url.startswith("sqlite"):
                raise
            raise _storage_error(url, err) from err  # driver and connection errors: one line


def storage_url(url: str) -> str:
    """``url`` as SQLAlchemy should open it: ``postgresql://`` (or ``postgres://``) naming no driver gets
    psycopg 3, the driver of the ``postgres`` extra; a driver named explicitly is kept.

    >>> storage_url("postgresql://me:pw@db.example:5432/sweeps")
    'postgresql+psycopg://me:pw@db.example:5432/sweeps'
    >>> storage_url("postgresql+psycopg2://me@db/sweeps"), storage_url("sqlite:///study.db")
    ('postgresql+psycopg2://me@db/sweeps', 'sqlite:///study.db')
    """
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def shown_url(url: str) -> str:
    """``url`` with its password masked, for messages and logs.

    >>> shown_url("postgresql://me:s3cret@db.example/sweeps")
    'postgresql://me:***@db.example/sweeps'
    """
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: mask what looks like user:password@
        import re

        return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", url)


def _storage_error(url: str, err: BaseException) -> SweepError:
    """One line saying why the storage at ``url`` cannot be opened (no password, no traceback)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001
        return SweepError(
            f"storage {shown_url(url)}: not an SQLAlchemy URL (dialect+driver://user:password@host:port/db)"
        )
    shown = shown_url(url)
    postgres = parsed.get_backend_name() == "postgresql"
    cause = err.__cause__ if isinstance(err, ImportError) and err.__cause__ is not None else err
    if isinstance(cause, ImportError) or type(err).__name__ == "NoSuchModuleError":
        extra = "pip install 'rleseg[postgres]' (psycopg 3, which postgresql:// uses)"
        if type(err).__name__ == "NoSuchModuleError":
            hint = f"; for PostgreSQL: {extra}" if postgres else ""
            return SweepError(f"storage {shown}: SQLAlchemy knows no driver {parsed.drivername!r}{hint}")
        driver = getattr(cause, "name", None) or parsed.drivername
        if not postgres:
            hint = f"install it (pip install {driver})"
        elif parsed.drivername == "postgresql+psycopg":
            hint = extra
        else:
            hint = f"install it (pip install {driver}), or write postgresql:// and {extra}"
        return SweepError(f"storage {shown}: the database driver {driver!r} is not installed: {hint}")
    text = str(getattr(err, "orig", None) or err)
    if parsed.password:
        text = text.replace(parsed.password, "***")
    detail = " ".join(text.split())  # the driver's message, on one line
    lower = detail.lower()
    where = f"{parsed.host or 'localhost'}:{parsed.port or (5432 if postgres else 'default port')}"
    if (
        "authentication failed" in lower
        or "no password supplied" in lower
        or "pg_hba.conf" in lower
        or ("role" in lower and "does not exist" in lower)
    ):
        return SweepError(
            f"storage {shown}: authentication failed for user {parsed.username!r} on {where} "
            "(check the user name and password in the URL)"
        )
    if "database" in lower and "does not exist" in lower:
        return SweepError(
            f"storage {shown}: database {parsed.database!r} does not exist on {where} "
            f"(create it, e.g. createdb -h {parsed.host or 'localhost'} {parsed.database}, or name another)"
        )
    for symptom in (
        "connection refused",
        "could not connect",
        "timeout",
        "timed out",
        "resolve host",
        "name or service not known",
        "no route to host",
        "network is unreachable",
        "could not translate",
    ):
        if symptom in lower:
            return SweepError(f"storage {shown}: cannot reach the database server at {where} ({detail})")
    return SweepError(f"storage {shown}: cannot open it: {type(cause).__name__}: {detail}")


# ======================================================================================== samplers
def sampler_seed(seed: int | None, run: int, worker: int) -> int | None:
    """The seed of worker ``worker`` (0: the main process) in start ``run`` (0: the first) of a sweep.

    ``(0, 0)`` keeps ``seed``; every other pair hashes ``(seed, run, worker)`` to 32 bits, so seeds are
    deterministic (a rerun of the same commands reproduces them) and distinct between processes and runs.
    """
    if seed is None:
        return None
    if run == 0 and worker == 0:
        return int(seed)
    digest = hashlib.sha256(f"rleseg-sweep:{int(seed)}:{int(run)}:{int(worker)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(spec: SweepSpec, run: int = 0, worker: int = 0) -> Any:
    """The sampler of ``spec`` for worker ``worker`` of start ``run`` (see :func:`sampler_seed`).

    Budgets reach TPE / NSGA-II as trial constraints (:func:`set_budget_constraint`), not through the
    deprecated ``constraints_func``.
    """
    import optuna

    name, kwargs = spec.sampler
    kwargs = dict(kwargs)
    if "seed" in kwargs and name != "grid":
        # The grid sampler's seed orders its grid ids: every worker must share it (a grid never replays).
        kwargs["seed"] = sampler_seed(kwargs["seed"], run, worker)
    try:
        if name == "grid":
            return optuna.samplers.GridSampler(spec.grid(), **kwargs)
        if name == "random":
            return optuna.samplers.RandomSampler(**kwargs)
        if name == "tpe":
            return optuna.samplers.TPESampler(**kwargs)
        return optuna.samplers.NSGAIISampler(**kwargs)
    except TypeError as err:
        raise SweepError(f"sampler {name!r}: bad option(s) {dict(spec.sampler[1])}: {err}") from None


def make_pruner(pruner: tuple[str, dict[str, Any]]) -> Any:
    import optuna

    name, kwargs = pruner
    classes = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "threshold": optuna.pruners.ThresholdPruner,
    }
    try:
        return classes[name](**kwargs)
    except TypeError as err:
        raise SweepError(f"pruner {name!r}: bad option(s) {kwargs}: {err}") from None


def set_budget_constraint(trial: Any, estimated_peak_mib: float, budget_mib: float) -> None:
    """Record ``estimate - budget`` as the trial's budget constraint (<= 0: feasible)."""
    trial.set_constraint(rec.CONSTRAINT, float(estimated_peak_mib) - float(budget_mib))


def constraints(frozen: Any) -> dict[str, float]:
    """A stored trial's constraint values (``{}`` for trials of older studies)."""
    return dict(getattr(frozen, "constraints", {}) or {})


# ===================================================================================== the study
def create_study(spec: SweepSpec, storage: Any, sampler: Any, load_if_exists: bool = True) -> Any:
    """Create (or load) the sweep's study and name its objectives (optuna-dashboard shows the names)."""
    import optuna

    study = optuna.create_study(
        study_name=spec.study_name,
        storage=storage,
        sampler=sampler,
        pruner=make_pruner(spec.pruner),
        directions=spec.directions,
        load_if_exists=load_if_exists,
    )
    names = [o.metric for o in spec.objectives]
    if list(study.metric_names or []) != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable since 3.2
            study.set_metric_names(names)
    return study


def load_study(spec: SweepSpec, storage: Any, sampler: Any = None, pruner: Any = None) -> Any:
    import optuna

    return optuna.load_study(study_name=spec.study_name, storage=storage, sampler=sampler, pruner=pruner)


def study_names(storage: Any) -> dict[str, int]:
    """``{study name: number of trials}`` of a storage."""
    import optuna

    return {
        s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }


def trial_id(trial: Any) -> int:
    """The storage's id of a live trial (the child process attaches to it)."""
    return int(trial._trial_id)


def attach_trial(storage_url: str, study_name: str, trial_id: int, pruner: tuple[str, dict[str, Any]]) -> Any:
    """The live ``optuna.trial.Trial`` with id ``trial_id`` (in a trial's child process, for pruning)."""
    import optuna

    storage = open_storage(storage_url, heartbeat=False)
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner(pruner))
    return optuna.trial.Trial(study, int(trial_id))


def system_attrs(trial: Any) -> dict[str, Any]:
    """A live trial's system attributes (``Trial`` has none public in Optuna 5; stored trials do)."""
    return dict(trial.study._storage.get_trial_system_attrs(trial_id(trial)))


def grid_id(frozen: Any) -> int | None:
    """The grid point a trial of the grid sampler holds."""
    value = frozen.system_attrs.get("grid_id")
    return None if value is None else int(value)


def grid_size(frozen_trials: Sequence[Any]) -> int:
    """The number of grid points of the grid sampler's trials (0 without any)."""
    import math

    for t in frozen_trials:
        space = t.system_attrs.get("search_space")
        if space:
            return math.prod(len(v) for v in space.values())
    return 0


def retry_of(system: Mapping[str, Any]) -> int | None:
    """The trial a queued retry repeats (Optuna's heartbeat retry and ours both set ``failed_trial``)."""
    value = system.get("failed_trial")
    return None if value is None else int(value)


def fail_stale_trials(study: Any) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


@dataclass(frozen=True)
class StudyProgress:
    """Trials that count toward the total (``done``), in flight, and queued for a retry."""

    done: int
    running: int
    waiting: int
    superseded: frozenset[int]


def superseded(frozen_trials: Sequence[Any]) -> frozenset[int]:
    """Trials whose process died and that were retried as a later trial (their numbers)."""
    return frozenset(n for t in frozen_trials for n in t.system_attrs.get("retry_history", []))


def study_progress(study: Any) -> StudyProgress:
    """Count a study's trials the way the sweep's total counts them.

    Finished trials count once; a trial retried after its process died (its number is in a later
    trial's ``retry_history``) does not, nor does a duplicate grid trial; an interrupted trial (Ctrl-C)
    does not either, since it is retried on resume.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    gone = superseded(trials)
    done = running = waiting = 0
    for t in trials:
        if t.number in gone or rec.DUPLICATE_OF in t.user_attrs:
            continue
        if t.state == TrialState.RUNNING:
            running += 1
        elif t.state == TrialState.WAITING:
            waiting += 1
        elif t.state == TrialState.FAIL and t.user_attrs.get(rec.INTERRUPTED_FLAG):
            continue
        elif t.state.is_finished():
            done += 1
    return StudyProgress(done, running, waiting, gone)


def requeue_interrupted(study: Any, max_retry: int) -> int:
    """Queue a retry of every trial interrupted by Ctrl-C (heartbeats only catch killed processes)."""
    import optuna
    from optuna.trial import TrialState

    progress = study_progress(study)
    count = 0
    for t in study.get_trials(deepcopy=True, states=(TrialState.FAIL,)):
        if t.user_attrs.get(rec.INTERRUPTED_FLAG) and t.number not in progress.superseded:
            system = {"failed_trial": t.number, "retry_history": [], **t.system_attrs}
            system["retry_history"] = [*system["retry_history"], t.number]
            if len(system["retry_history"]) > max_retry:
                continue
            drop = (rec.INTERRUPTED_FLAG, rec.ERROR, rec.OUTCOME)
            user_attrs = {k: v for k, v in t.user_attrs.items() if k not in drop}
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.WAITING,
                    params=t.params,
                    distributions=t.distributions,
                    user_attrs=user_attrs,
                    system_attrs=system,
                )
            )
            count += 1
    return count


# ========================================================================================== export
def export_trials(study: Any, path: str | Path | None = None) -> Any:
    """One row per trial (params, objective values, every record attribute) as a DataFrame; CSV to ``path``.

    ``superseded`` marks a trial whose process died and that was retried as a later trial (``retry_of``);
    ``outcome`` says complete / over_budget / pruned / duplicate / failed / interrupted.
    """
    import pandas as pd

    sweep = study.user_attrs.get(rec.STUDY_SWEEP) or {}
    objectives = [m for m, _ in sweep.get("objectives", [])] or ["value"]
    trials = study.get_trials(deepcopy=False)
    gone = superseded(trials)
    rows = []
    for t in trials:
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "superseded": t.number in gone,
            "duration_s": round(t.duration.total_seconds(), 3) if t.duration else None,
        }
        row.update({f"param_{k}": v for k, v in t.params.items()})
        for i, metric in enumerate(objectives):
            row[f"objective_{metric}"] = t.values[i] if t.values and i < len(t.values) else None
        for key, value in t.user_attrs.items():
            row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
        row[rec.OUTCOME] = rec.outcome(t.state.name, t.user_attrs)
        for key, value in constraints(t).items():
            row[f"constraint_{key}"] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        head = [c for c in frame.columns if c in ("number", "state", "superseded", "duration_s")]
        params = [c for c in frame.columns if c.startswith("param_")]
        objs = [c for c in frame.columns if c.startswith("objective_")]
        lead = [c for c in rec.LEADING_COLUMNS if c in frame.columns]
        rest = sorted(c for c in frame.columns if c not in {*head, *params, *objs, *lead})
        frame = frame[head + params + objs + lead + rest]
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
    return frame
