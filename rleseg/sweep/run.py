"""Running a sweep: workers, budgets, resume, progress lines and the dry run.

**Budgets.** Every trial's peak training memory is estimated *before* training
(:func:`rleseg.memory.estimate_step_memory`); a trial over the largest budget is never trained: its outcome
is ``over_budget`` (see :mod:`rleseg.sweep.record`). A trial that fits is trained once and records the
budgets it fits under, so "the best configuration under B MiB" is a filter over one study.

**Resume.** A study is bound to what it ran (:meth:`~rleseg.sweep.spec.SweepSpec.binding`): ``--resume``
with a different resolved base config (or search space, or objectives) refuses and names the keys that
differ. ``--n-trials`` is a total across runs, so a resumed sweep never redoes finished trials; trials
whose process died are retried. ``--workers K`` runs K processes on one study; a grid point is never
trained twice. Each start of the sweep is recorded in the study (``runs``: date, version, commit, machine,
the workers' sampler seeds).

**Progress.** One line per finished trial: ``[k/n]``, the trial's outcome and values, elapsed time, an
ETA from this run's pace, and the best trial so far; the last line names the best trial and the
``rleseg report`` command to run.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rleseg.sweep import record as rec
from rleseg.sweep import study as st
from rleseg.sweep.spec import SweepError, SweepSpec, check_keys, config_differences
from rleseg.sweep.trial import STORAGE_VARIABLE, Estimator, TrialFailed, train_trial

Log = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


def _clock(seconds: float) -> str:
    """``h:mm:ss``.

    >>> _clock(3725.2)
    '1:02:05'
    """
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _threads() -> int | None:
    """Intra-op threads each training process uses (``OMP_NUM_THREADS``, else torch's default)."""
    try:
        import torch

        return int(torch.get_num_threads())
    except ImportError:  # pragma: no cover - torch is a dependency
        return None


def machine() -> str:
    """The machine in words (processor, cores, GPU): written into each run of a study."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{name}, {os.cpu_count()} CPUs"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - the description is informative only
        pass
    return text


# ======================================================================================== progress
def _label(spec: SweepSpec, params: Mapping[str, Any]) -> str:
    names = {p.name for p in spec.params}
    return " ".join(spec.param(k).describe(v) for k, v in params.items() if k in names)


def best_so_far(spec: SweepSpec, study: Any) -> str | None:
    """``#N (params): metric=value`` of the best complete trial (single objective), or the Pareto set."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if not done:
        return None
    if len(spec.objectives) == 1:
        sign = 1.0 if spec.objectives[0].direction == "maximize" else -1.0
        best = max(done, key=lambda t: (sign * t.values[0], -t.number))
        return (
            f"#{best.number} ({_label(spec, best.params)}): {spec.objectives[0].metric}={best.values[0]:.4f}"
        )
    front = sorted(t.number for t in study.best_trials)
    return "Pareto front " + ", ".join(f"#{n}" for n in front)


class Progress:
    """``[k/n]``, elapsed, ETA (this run's pace) and the best trial so far, for each finished trial."""

    def __init__(self, spec: SweepSpec, target: int, done_at_start: int) -> None:
        self.spec, self.target, self.done_at_start = spec, target, done_at_start
        self.start = time.monotonic()

    def suffix(self, study: Any) -> str:
        done = st.study_progress(study).done
        elapsed = time.monotonic() - self.start
        finished = done - self.done_at_start
        eta = "?" if finished <= 0 else _clock(elapsed / finished * max(self.target - done, 0))
        best = best_so_far(self.spec, study)
        parts = [f"elapsed {_clock(elapsed)}, ETA {eta}"]
        if best:
            parts.append(f"best {best}")
        return " | ".join(parts), done

    def line(self, study: Any, trial: Any, tag: str = "") -> str:
        spec, attrs = self.spec, trial.user_attrs
        outcome = rec.outcome(trial.state.name, attrs)
        suffix, done = self.suffix(study)
        parts = [f"{tag}[{done}/{self.target}] trial {trial.number} {outcome.replace('_', ' ')}: "
                 f"{_label(spec, trial.params)}"]  # fmt: skip
        est = attrs.get(rec.ESTIMATED_PEAK)
        if est is not None:
            measured = attrs.get(rec.MEASURED_PEAK)
            parts.append(f"est {est:.1f} MiB" + (f", measured {measured:.1f}" if measured else ""))
        if trial.values:
            parts.append(
                " ".join(f"{o.metric}={v:.4f}" for o, v in zip(spec.objectives, trial.values, strict=False))
            )
        elif attrs.get(rec.ERROR):
            parts.append(str(attrs[rec.ERROR]).splitlines()[0][:200])
        elif outcome == rec.OVER_BUDGET:
            parts.append(f"over budget ({spec.budget_mib:g} MiB): not trained")
        elif outcome == rec.DUPLICATE:
            parts.append(f"duplicate of trial {attrs.get(rec.DUPLICATE_OF)}")
        elif attrs.get(rec.PRUNED_MESSAGE):
            parts.append(str(attrs[rec.PRUNED_MESSAGE]))
        duration = trial.duration.total_seconds() if trial.duration else 0.0
        parts.append(f"{duration:.1f} s")
        parts.append(suffix)
        return " | ".join(parts)


# ========================================================================================= workers
class _Worker:
    """One process's loop over a study: estimate, skip what does not fit, train the rest."""

    def __init__(
        self, spec: SweepSpec, storage_url: str, target: int, worker_id: int = 0, log: Log | None = None
    ) -> None:
        self.spec = spec
        self.storage_url = storage_url
        self.target = target
        self.tag = f"[w{worker_id}] " if worker_id else ""
        self.log = log or _print
        self.estimator = Estimator(spec)
        self.output_dir = spec.resolved_output_dir()
        self.progress: Progress | None = None

    # ------------------------------------------------------------------ the objective
    def objective(self, trial: Any) -> Any:
        import optuna

        spec = self.spec
        trial_dir = self.output_dir / f"trial_{trial.number:04d}"
        try:
            raw = {p.name: p.suggest(trial) for p in spec.params}
            self._check_duplicate(trial)
            trial.set_user_attr(rec.WORKER, f"{socket.gethostname()}:{os.getpid()}")
            retry = st.retry_of(st.system_attrs(trial))
            if retry is not None:
                trial.set_user_attr(rec.RETRY_OF, retry)
            config = self.estimator.config(raw, trial_dir)
            trial_dir.mkdir(parents=True, exist_ok=True)
            config_path = trial_dir / "config.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            trial.set_user_attr(rec.TRIAL_DIR, trial_dir.name)
            record, peak = self.estimator.estimate(config)
            over = rec.is_over_budget(peak, spec.budgets_mib)
            record.update(
                {
                    rec.BUDGETS_FIT: rec.budgets_fit(peak, spec.budgets_mib),
                    rec.BUDGET: spec.budget_mib,
                    rec.INFEASIBLE: over,
                }
            )
            for key, value in record.items():
                trial.set_user_attr(key, value)
            if spec.budget_mib is not None:
                st.set_budget_constraint(trial, peak, spec.budget_mib)
            if over:
                trial.set_user_attr(rec.OUTCOME, rec.OVER_BUDGET)
                raise optuna.TrialPruned(f"over budget: estimated {peak:.1f} MiB > {spec.budget_mib:g} MiB")
            self.log(f"{self.tag}trial {trial.number} started: {_label(spec, raw)} | est {peak:.1f} MiB")
            record, pruned = self._train(trial, trial_dir, config_path)
            for key, value in record.items():
                if value is not None:
                    trial.set_user_attr(key, value)
            if pruned:
                trial.set_user_attr(rec.OUTCOME, rec.PRUNED)
                trial.set_user_attr(rec.PRUNED_MESSAGE, pruned)
                raise optuna.TrialPruned(pruned)
            values = self._values(record)
            trial.set_user_attr(rec.OUTCOME, rec.COMPLETE)
            return values
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(rec.INTERRUPTED_FLAG, True)
            trial.set_user_attr(rec.ERROR, "KeyboardInterrupt")
            trial.set_user_attr(rec.OUTCOME, rec.INTERRUPTED)
            raise
        except Exception as err:
            trial.set_user_attr(rec.ERROR, f"{type(err).__name__}: {err}"[:2000])
            trial.set_user_attr(rec.OUTCOME, rec.FAILED)
            trial_dir.mkdir(parents=True, exist_ok=True)
            detail = getattr(err, "detail", "")
            (trial_dir / "error.txt").write_text(
                traceback.format_exc() + (f"\nin the trial process:\n{detail}" if detail else "")
            )
            trial.set_user_attr(rec.ERROR_LOG, f"{trial_dir.name}/error.txt")
            raise

    def _check_duplicate(self, trial: Any) -> None:
        """Prune a grid trial whose point another trial holds (a race between workers at the grid's end)."""
        import optuna
        from optuna.trial import TrialState

        if self.spec.sampler[0] != "grid":
            return
        trials = trial.study.get_trials(deepcopy=False)
        mine = next((st.grid_id(t) for t in trials if t.number == trial.number), None)
        if mine is None:
            return
        for other in trials:
            if (
                other.number == trial.number
                or st.grid_id(other) != mine
                or rec.DUPLICATE_OF in other.user_attrs
            ):
                continue
            holds = other.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                other.state == TrialState.RUNNING and other.number < trial.number
            )
            if holds:
                trial.set_user_attr(rec.DUPLICATE_OF, other.number)
                trial.set_user_attr(rec.OUTCOME, rec.DUPLICATE)
                trial.study.stop()
                raise optuna.TrialPruned(f"grid point {mine} is trial {other.number}'s")

    def _values(self, record: Mapping[str, Any]) -> float | list[float]:
        values = []
        for objective in self.spec.objectives:
            value = record.get(objective.metric)
            if value is None:
                keys = sorted(k for k, v in record.items() if isinstance(v, (int, float)))
                raise TrialFailed(f"objective {objective.metric!r} was not recorded; recorded: {keys}")
            values.append(float(value))
        return values[0] if len(values) == 1 else values

    def _train(self, trial: Any, trial_dir: Path, config_path: Path) -> tuple[dict[str, Any], str | None]:
        prune = len(self.spec.objectives) == 1 and self.spec.pruner[0] != "none"
        monitor = self.spec.objectives[0].metric
        if self.spec.runner == "inline":
            return train_trial(config_path, trial if prune else None, monitor)
        job = {
            "config": str(config_path),
            "result": str(trial_dir / "result.json"),
            "prune": prune,
            "monitor": monitor,
            "study_name": self.spec.study_name,
            "trial_id": st.trial_id(trial),
            "pruner": list(self.spec.pruner),
        }
        job_path = trial_dir / "job.json"
        job_path.write_text(json.dumps(job))
        result_path = Path(job["result"])
        result_path.unlink(missing_ok=True)
        log_path = trial_dir / "train.log"
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "rleseg.sweep", "--run-trial", str(job_path)],
                    # The storage URL (it may hold a password) reaches the child through its environment,
                    # never through job.json in the trial folder.
                    env={**os.environ, STORAGE_VARIABLE: self.storage_url},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=self.spec.trial_timeout_s,
                    check=False,
                )
                code = proc.returncode
            except subprocess.TimeoutExpired:
                raise TrialFailed(
                    f"trial timed out after {self.spec.trial_timeout_s:g} s (trial_timeout_s)"
                ) from None
        trial.set_user_attr(rec.LOG_PATH, f"{trial_dir.name}/train.log")
        if not result_path.is_file():
            tail = log_path.read_text()[-1500:].strip()
            raise TrialFailed(f"trial process exited with code {code} and no result; log tail:\n{tail}")
        result = json.loads(result_path.read_text())
        if result["status"] == "failed":
            raise TrialFailed(result["error"], result.get("traceback", ""))
        return result["record"], result.get("message")

    # ------------------------------------------------------------------ the loop
    def report(self, study: Any, trial: Any) -> None:
        if self.progress is not None:
            self.log(self.progress.line(study, trial, self.tag))

    def run(self, study: Any) -> None:
        poll = max(1.0, min(float(self.spec.heartbeat_interval), 10.0))
        self.progress = Progress(self.spec, self.target, st.study_progress(study).done)
        while True:
            st.fail_stale_trials(study)
            progress = st.study_progress(study)
            if progress.waiting or progress.done + progress.running < self.target:
                study.optimize(self.objective, n_trials=1, catch=(Exception,), callbacks=[self.report])
                continue
            if progress.running:
                # Another worker holds the last trials, or a dead one does: its heartbeat will go stale and
                # the trial will be queued for a retry. Wait for either.
                time.sleep(poll)
                continue
            return


def _worker_main(
    sweep_file: str,
    scale: str | None,
    storage_url: str,
    target: int,
    worker_id: int,
    n_trials: int | None,
    run_index: int,
) -> None:
    """Entry point of a ``--workers K`` process."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = SweepSpec.load(sweep_file, scale=scale)
    if n_trials is not None:
        spec.n_trials = n_trials
    storage = st.open_storage(storage_url, True, spec.heartbeat_interval, spec.grace_period, spec.max_retry)
    sampler = st.make_sampler(spec, run=run_index, worker=worker_id)
    study = st.load_study(spec, storage, sampler=sampler, pruner=st.make_pruner(spec.pruner))
    _Worker(spec, storage_url, target, worker_id).run(study)


# ========================================================================================= dry run
@dataclass(frozen=True)
class DryRunPoint:
    """One point's estimate (a dry run trains and stores nothing)."""

    params: dict[str, Any]
    peak_mib: float | None
    budgets_fit: list[float]
    error: str | None = None


def estimate_points(spec: SweepSpec, target: int, log: Log | None = None) -> list[DryRunPoint]:
    """Estimate every point's memory and print ``fits`` / ``over budget`` per point and a summary line.

    The grid's points are its combinations (seeds do not change memory: a point with ``repeats: N`` is
    estimated once); other samplers propose ``target`` points from an in-memory study.
    """
    import optuna

    log = log or _print
    seedless = [p for p in spec.params if not (spec.repeats > 1 and p.name == "seed")]
    if spec.sampler[0] == "grid":
        grid = {p.name: p.grid_values() for p in seedless}
        points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
        if spec.n_trials is not None:
            points = points[: max(1, -(-target // spec.repeats))]
    else:
        study = optuna.create_study(directions=spec.directions, sampler=st.make_sampler(spec))
        points = []
        for _ in range(target):
            trial = study.ask()
            points.append({p.name: p.suggest(trial) for p in seedless})
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    estimator = Estimator(spec)
    out: list[DryRunPoint] = []
    budgets = spec.budgets_mib
    for k, params in enumerate(points, 1):
        label = _label(spec, params)
        try:
            _, peak = estimator.estimate(estimator.config(params, None))
        except Exception as err:  # noqa: BLE001 - a point that cannot be built is reported, not fatal
            out.append(DryRunPoint(params, None, [], f"{type(err).__name__}: {err}"))
            log(
                f"point {k}/{len(points)} {label}: error: "
                f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            )
            continue
        fit = rec.budgets_fit(peak, budgets)
        out.append(DryRunPoint(params, peak, fit))
        if not budgets:
            verdict = "no budget"
        elif not fit:
            verdict = f"over budget ({peak:.1f} > {max(budgets):g} MiB)"
        elif len(fit) == len(budgets):
            verdict = f"fits ({', '.join(f'{b:g}' for b in budgets)} MiB)"
        else:
            others = ", ".join(f"{b:g}" for b in budgets if b not in fit)
            verdict = f"fits {', '.join(f'{b:g}' for b in fit)} MiB (not {others})"
        log(f"point {k}/{len(points)} {label}: est {peak:.1f} MiB, {verdict}")
    over = [p for p in out if p.error is None and budgets and not p.budgets_fit]
    errors = [p for p in out if p.error is not None]
    fitting = len(out) - len(over) - len(errors)
    summary = f"dry run {spec.study_name}: {fitting} of {len(out)} points fit"
    summary += f" {max(budgets):g} MiB" if budgets else " (no budget)"
    if over:
        summary += f", {len(over)} over budget ({'; '.join(_label(spec, p.params) for p in over)})"
    if errors:
        summary += f", {len(errors)} could not be estimated"
    if spec.repeats > 1:
        summary += f"; {spec.repeats} seeds each: {fitting * spec.repeats} trials to train"
    log(summary + "; nothing was trained or stored")
    return out


# ========================================================================================= the run
def _bind(study: Any, spec: SweepSpec, binding: dict[str, Any], shown: str) -> None:
    """Store what a new study runs; refuse to continue one that ran something else."""
    attrs = study.user_attrs
    stored = attrs.get(rec.STUDY_SWEEP)
    if stored is None:
        study.set_user_attr(rec.STUDY_SWEEP, spec.summary())
        study.set_user_attr(rec.STUDY_BUDGETS, spec.budgets_mib)
        study.set_user_attr(rec.STUDY_BINDING, binding)
        return
    new_study = (
        "to run this configuration, start a new study (another --storage, or another `name:`/`output_dir:` "
        "in the sweep file)"
    )
    if stored.get("fingerprint") != spec.fingerprint():
        raise SweepError(
            f"study {spec.study_name!r} in {shown} was created with another search space or objectives "
            f"(stored: {json.dumps(stored.get('params'))}, {json.dumps(stored.get('objectives'))}); "
            + new_study
        )
    old = attrs.get(rec.STUDY_BINDING)
    if old is None or "resolved_base" not in old:
        raise SweepError(
            f"study {spec.study_name!r} in {shown} does not record the configuration it ran (made by an "
            f"older rleseg), so it cannot be resumed safely; {new_study}"
        )
    diffs = config_differences(old["resolved_base"], binding["resolved_base"])
    if diffs:
        raise SweepError(
            f"study {spec.study_name!r} in {shown} ran another configuration; differing keys: "
            f"{', '.join(diffs)} (stored: base {old.get('base')}, commit {old.get('commit') or 'unknown'}); "
            f"resume it with the configuration it ran, or {new_study}"
        )


def run_sweep(
    spec: SweepSpec,
    resume: bool = False,
    n_trials: int | None = None,
    storage: str | None = None,
    workers: int = 1,
    dry_run: bool = False,
    log: Log | None = None,
) -> Any:
    """Run (or resume) a sweep until its study holds the target number of finished trials.

    Args:
        spec: the sweep (see :class:`~rleseg.sweep.spec.SweepSpec`).
        resume: continue an existing study (required when it already has trials); refused when the study
            ran another configuration.
        n_trials: total trials wanted (default: the grid's size, or the sweep file's ``n_trials``).
        storage: an SQLAlchemy URL (default: ``sqlite:///<output_dir>/study.db``).
        workers: processes working on the study at once.
        dry_run: estimate every point's memory and print whether it fits; train nothing, store nothing.
        log: where progress lines go (default: print).

    Returns:
        The ``optuna.Study`` (a dry run: the list of :class:`DryRunPoint`).

    >>> spec = SweepSpec.load("sweeps/encodings.yaml")  # doctest: +SKIP
    >>> points = run_sweep(spec, dry_run=True)  # doctest: +SKIP
    point 1/10 tokenizer=mc subsample=2: est 150.3 MiB, over budget (150.3 > 140 MiB)
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    log = log or _print
    if n_trials is not None:
        spec.n_trials = n_trials
    target = spec.target_trials(n_trials)
    check_keys(spec)
    if dry_run:
        return estimate_points(spec, target, log)

    url = storage or spec.resolved_storage()
    shown = st.shown_url(url)  # messages and logs never show the password
    binding = spec.binding()
    spec.resolved_output_dir().mkdir(parents=True, exist_ok=True)
    backend = st.open_storage(url, True, spec.heartbeat_interval, spec.grace_period, spec.max_retry)
    existing = st.study_names(backend)
    if existing.get(spec.study_name) and not resume:
        raise SweepError(
            f"study {spec.study_name!r} in {shown} already has {existing[spec.study_name]} trials; "
            "pass --resume to continue it (or to add a worker to it), or choose another --storage"
        )
    if resume and spec.study_name not in existing:
        raise SweepError(f"nothing to resume: no study {spec.study_name!r} in {shown}")
    study = st.create_study(spec, backend, sampler=None)
    _bind(study, spec, binding, shown)
    runs = list(study.user_attrs.get(rec.STUDY_RUNS) or [])
    run_index = len(runs)
    ids = [0] if workers <= 1 else list(range(1, workers + 1))
    seed = spec.sampler[1].get("seed")
    runs.append(
        {
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "version": binding["version"],
            "commit": binding["commit"],
            "machine": machine(),
            "workers": workers,
            "threads": _threads(),
            "sampler_seeds": [st.sampler_seed(seed, run_index, w) for w in ids]
            if seed is not None and spec.sampler[0] != "grid"
            else seed,
        }
    )
    study.set_user_attr(rec.STUDY_RUNS, runs)
    study.sampler = st.make_sampler(spec, run=run_index, worker=0)
    requeued = st.requeue_interrupted(study, spec.max_retry)
    progress = st.study_progress(study)
    log(
        f"sweep {spec.study_name}: {progress.done}/{target} trials done, {progress.running} running, "
        f"{progress.waiting + requeued} queued; storage {shown}; budgets {spec.budgets_mib or 'none'} MiB; "
        f"{workers} worker(s)" + (f"; {spec.repeats} seeds per point" if spec.repeats > 1 else "")
    )
    start = time.monotonic()
    if workers <= 1:
        _Worker(spec, url, target, log=log).run(study)
    else:
        import multiprocessing

        if spec.path is None:
            raise SweepError("--workers needs a sweep file (workers reload it)")
        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(
                target=_worker_main,
                args=(str(spec.path), spec.scale, url, target, i, spec.n_trials, run_index),
                name=f"rleseg-sweep-w{i}",
            )
            for i in ids
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.name for p in procs if p.exitcode != 0]
        if bad:
            log(f"warning: worker(s) {bad} exited with an error; run again with --resume to finish")
    st.export_trials(study, spec.resolved_output_dir() / "trials.csv")
    progress = st.study_progress(study)
    best = best_so_far(spec, study)
    log(
        f"sweep {spec.study_name}: {progress.done}/{target} trials done "
        f"in {_clock(time.monotonic() - start)}; "
        + (f"best trial {best}; " if best else "no complete trial; ")
        + f"trials in {spec.resolved_output_dir()}; report: {spec.report_command(shown)}"
    )
    return study
