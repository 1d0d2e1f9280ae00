"""Optuna sweeps under fixed memory budgets: ``rleseg sweep --config sweeps/NAME.yaml``.

A sweep file names a base experiment (an ``experiments/*.yaml`` that ``rleseg fit`` accepts), the knobs to
vary as dotted keys of that config, the objective(s), the sampler, the pruner and the memory budgets::

    name: encodings
    base: ../experiments/quickstart.yaml          # relative to the sweep file
    search_space:
      data.init_args.tokenizer: [mc, lac, mc2d, gap]             # a list: categorical
      data.init_args.tokenizer_args.subsample: [2, 4]
      model.init_args.d_model: {low: 64, high: 256, step: 64}    # int range
      model.init_args.lr: {low: 1.0e-4, high: 3.0e-3, log: true} # float range
    objectives:                       # one: single-objective; several: a Pareto front
      - val/dice_mean: maximize
      - tokens_per_mask_p95: minimize
    sampler: grid                     # grid | tpe | nsga2 | random, or {name: tpe, seed: 0, ...}
    pruner: none                      # none | median | percentile | hyperband | threshold | ...
    budgets_mib: [256, 512]
    overrides: {trainer.max_epochs: 2, seed_everything: 0}      # fixed for every trial
    auto_max_seq_len: {quantile: 0.99}                          # size max_seq_len to each encoding
    scales:                           # --scale NAME; `cpu` is the default
      cpu: {}
      gpu: {budgets_mib: [16384], overrides: {trainer.max_epochs: 50}}

**Named choices** move several knobs together: ``{name: variant, choices: {LABEL: VALUE, ...}}`` stores
the label in Optuna, and a VALUE that is a mapping sets each of its keys under the knob's key (see
``sweeps/video.yaml``: a static model only exists for the TAC/LTAC tokenizers). The knob ``.`` is the
config's root: its choices map dotted keys to values, so one variant can set model and data keys together
(``sweeps/token_efficiency.yaml``).

**Budgets.** One study per sweep (and scale); the budgets are a study attribute. Every trial's peak
training memory is estimated *before* training (:func:`rleseg.memory.estimate_config_memory`); a trial
over the largest budget is never trained: it is recorded as PRUNED with ``infeasible=True`` and its
estimate (and, for TPE/NSGA-II, a constraint value ``estimate - budget`` through ``constraints_func``).
A trial that fits is trained once and records ``budgets_fit``, the budgets it fits under, so "the best
configuration under B MiB" is a filter over one study rather than a second training of the same config.

**Trials.** Each trial writes ``trial_NNNN/config.yaml`` in the sweep's output folder (``rleseg fit
--config`` on it reproduces the trial) and trains it, by default in a child process (``runner:
process``: a crash, an out-of-memory kill or a leak costs one trial, not the sweep; ``runner: inline``
trains in the worker process, faster for tiny trials). Records (user attributes): estimated and measured
peak memory, parameters, vocabulary size, tokens per mask p50/p95/max, truncated fraction, train time,
decode time per image, validity rate, every final metric, the config path — or the error of a failed trial.

**Storage, resume, workers.** SQLite by default (``<output>/study.db``), or any SQLAlchemy URL with
``--storage`` (PostgreSQL, MySQL: several machines on one study). Heartbeats mark trials whose process
died as failed, and they are retried (``--resume``); ``--n-trials`` is a total across runs, so a
resumed sweep never redoes finished trials. ``--workers K`` runs K processes on one study; a grid point is
never trained twice. Browse a study with optuna-dashboard (``pip install optuna-dashboard``)::

    optuna-dashboard sqlite:///runs/sweeps/encodings/cpu/study.db

Export a study's trials to CSV with ``rleseg sweep --config ... --export trials.csv``.

>>> spec = SweepSpec.from_dict({"name": "demo", "base": "experiments/quickstart.yaml",
...     "search_space": {"data.init_args.tokenizer": ["mc", "lac"],
...                      "data.init_args.tokenizer_args.subsample": [2, 4]},
...     "budgets_mib": [512]})
>>> [p.name for p in spec.params], len(spec.grid())
(['tokenizer', 'subsample'], 4)
>>> spec.trial_config({"tokenizer": "mc", "subsample": 2}, base={"data": {"init_args": {}}})["data"]
{'init_args': {'tokenizer': 'mc', 'tokenizer_args': {'subsample': 2}}}
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import io
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Objective",
    "ParamSpec",
    "SweepError",
    "SweepSpec",
    "TrialFailed",
    "export_trials",
    "open_storage",
    "run_sweep",
    "shown_url",
    "storage_url",
    "study_progress",
    "train_trial",
]

#: Keys a sweep file (and, except ``scales``/``base``/``name``, a scale section) may hold.
SWEEP_KEYS = (
    "name",
    "description",
    "base",
    "search_space",
    "objectives",
    "sampler",
    "pruner",
    "budgets_mib",
    "overrides",
    "auto_max_seq_len",
    "n_trials",
    "runner",
    "trial_timeout_s",
    "storage",
    "output_dir",
    "default_scale",
    "scales",
)
SCALE_KEYS = tuple(
    k for k in SWEEP_KEYS if k not in ("name", "description", "base", "default_scale", "scales")
)
SAMPLERS = ("grid", "tpe", "nsga2", "random")
PRUNERS = ("none", "median", "percentile", "hyperband", "successive_halving", "threshold")
RUNNERS = ("process", "inline")
DIRECTIONS = ("maximize", "minimize")
PRIMITIVES = (str, int, float, bool, type(None))


class SweepError(ValueError):
    """A bad sweep file, an unknown config key, or a study in a state the command cannot continue."""


class TrialFailed(RuntimeError):
    """A trial whose training did not finish (exception, non-finite loss, killed child process).

    ``detail`` holds the child process's traceback (the parent's own says only where it re-raised).
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


# ================================================================================== the sweep file
@dataclass(frozen=True)
class Objective:
    """A value to optimise: a logged metric (``val/dice_mean``) or a record key (``tokens_per_mask_p95``)."""

    metric: str
    direction: str = "maximize"


@dataclass(frozen=True)
class ParamSpec:
    """One searched knob: the dotted config key it sets and its distribution.

    ``kind`` is ``categorical`` (``choices``), ``int`` or ``float`` (``low``, ``high``, ``step``, ``log``).
    Choices that are not plain scalars (lists such as ``[64, 64]``) are stored in Optuna as JSON strings.
    Named choices (``labels``) are stored as their labels; a named choice that is a mapping sets each of
    its keys under ``key`` (knobs that only make sense together, e.g. a tokenizer and its static mode).
    """

    key: str
    name: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    labels: tuple[str, ...] = ()

    @property
    def encoded(self) -> bool:
        return (
            self.kind == "categorical"
            and not self.labels
            and not all(isinstance(c, PRIMITIVES) for c in self.choices)
        )

    def optuna_choices(self) -> list[Any]:
        if self.labels:
            return list(self.labels)
        return [json.dumps(c) if self.encoded else c for c in self.choices]

    def decode(self, value: Any) -> Any:
        """The config value of an Optuna parameter value."""
        if self.labels:
            return self.choices[self.labels.index(value)] if value in self.labels else value
        return json.loads(value) if self.encoded and isinstance(value, str) else value

    def settings(self, value: Any) -> list[tuple[str, Any]]:
        """The ``(dotted key, config value)`` pairs an Optuna parameter value sets."""
        decoded = self.decode(value)
        if self.labels and isinstance(decoded, Mapping):
            # the knob "." sits at the config's root: its choices set dotted keys anywhere (model and data)
            return [(k if self.key == "." else f"{self.key}.{k}", v) for k, v in decoded.items()]
        return [(self.key, decoded)]

    def config_keys(self) -> list[str]:
        """Every dotted config key this knob may set."""
        keys = {k: None for label in self.labels for k, _ in self.settings(label)}
        return list(keys) or [self.key]

    def suggest(self, trial: Any) -> Any:
        """Ask ``trial`` for this parameter (raw Optuna value: JSON strings stay encoded)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.optuna_choices())
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self) -> list[Any]:
        """All values, for the grid sampler (ranges need a step)."""
        if self.kind == "categorical":
            return self.optuna_choices()
        if self.log or (self.kind == "float" and self.step is None):
            raise SweepError(
                f"the grid sampler needs a finite set of values; {self.key!r} is a continuous range "
                f"{{low: {self.low}, high: {self.high}{', log: true' if self.log else ''}}}: give a list, a "
                "`step`, or use sampler tpe/random"
            )
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def describe(self, value: Any) -> str:
        if self.labels:
            return f"{self.name}={value}"
        value = self.decode(value)
        return f"{self.name}={value:.3g}" if isinstance(value, float) else f"{self.name}={value}"


def _parse_param(key: str, spec: Any, name: str) -> ParamSpec:
    if isinstance(spec, list):
        if not spec:
            raise SweepError(f"search_space.{key}: an empty list of choices")
        return ParamSpec(key, name, "categorical", tuple(spec))
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"choices", "low", "high", "step", "log", "type", "name"}
        if unknown:
            raise SweepError(
                f"search_space.{key}: unknown field(s) {sorted(unknown)}; a knob is a list of choices, "
                "{choices: [...] or {label: value, ...}, name?}, or {low, high, step?, log?, type?, name?}"
            )
        name = str(spec.get("name") or name)
        choices = spec.get("choices")
        if isinstance(choices, Mapping):
            if not choices:
                raise SweepError(f"search_space.{key}: an empty mapping of named choices")
            labels = tuple(str(label) for label in choices)
            return ParamSpec(key, name, "categorical", tuple(choices.values()), labels=labels)
        if "choices" in spec:
            return _parse_param(key, list(choices), name)
        if "low" not in spec or "high" not in spec:
            raise SweepError(f"search_space.{key}: a range needs both `low` and `high`, got {dict(spec)}")
        low, high, step = spec["low"], spec["high"], spec.get("step")
        for what, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise SweepError(f"search_space.{key}.{what} must be a number, got {v!r}")
        if low > high:
            raise SweepError(f"search_space.{key}: low={low} is above high={high}")
        is_int = spec.get("type", None) == "int" or (
            spec.get("type", None) is None
            and all(isinstance(v, int) for v in (low, high, step) if v is not None)
        )
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise SweepError(f"search_space.{key}: a log range needs low > 0, got {low}")
        kind = "int" if is_int else "float"
        return ParamSpec(key, name, kind, low=low, high=high, step=step, log=log)
    raise SweepError(
        f"search_space.{key}: {spec!r} is not a list of choices or a {{low, high}} range; "
        "put fixed values under `overrides:`"
    )


def _param_names(keys: Sequence[str]) -> dict[str, str]:
    """Short Optuna parameter names: the last component of each key, unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _parse_objectives(raw: Any) -> list[Objective]:
    if raw is None:
        return [Objective("val/dice_mean", "maximize")]
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(Objective(item, "maximize"))
            continue
        if isinstance(item, Mapping) and "metric" in item:
            metric, direction = item["metric"], item.get("direction", "maximize")
        elif isinstance(item, Mapping) and len(item) == 1:
            ((metric, direction),) = item.items()
        else:
            raise SweepError(f"objectives: each entry is `METRIC: maximize|minimize`; got {item!r}")
        if direction not in DIRECTIONS:
            raise SweepError(
                f"objectives: direction of {metric!r} must be one of {DIRECTIONS}, got {direction!r}"
            )
        out.append(Objective(str(metric), str(direction)))
    if not out:
        raise SweepError("objectives: give at least one (e.g. `- val/dice_mean: maximize`)")
    return out


def _named(raw: Any, what: str, valid: Sequence[str]) -> tuple[str, dict[str, Any]]:
    if raw is None:
        raw = valid[0]
    if isinstance(raw, str):
        name, kwargs = raw, {}
    elif isinstance(raw, Mapping) and "name" in raw:
        name, kwargs = raw["name"], {k: v for k, v in raw.items() if k != "name"}
    else:
        raise SweepError(f"{what}: give a name ({', '.join(valid)}) or {{name: ..., <options>}}, got {raw!r}")
    name = str(name).lower().replace("-", "_")
    name = {"nsgaii": "nsga2", "nsga_ii": "nsga2", "nop": "none"}.get(name, name)
    if name not in valid:
        raise SweepError(f"{what}: unknown {what} {name!r}; choose one of {list(valid)}")
    return name, dict(kwargs)


def _merge_scale(data: dict[str, Any], scale: str | None, path: str) -> tuple[dict[str, Any], str]:
    scales = data.get("scales") or {}
    if not isinstance(scales, Mapping):
        raise SweepError(f"{path}: `scales` must map a scale name to its settings, got {scales!r}")
    chosen = (
        scale or data.get("default_scale") or ("cpu" if "cpu" in scales or not scales else next(iter(scales)))
    )
    if scales and chosen not in scales:
        raise SweepError(f"{path}: unknown scale {chosen!r}; the sweep defines {sorted(scales)}")
    if not scales and scale not in (None, "cpu"):
        raise SweepError(f"{path}: the sweep defines no `scales:`, so --scale {scale!r} means nothing")
    section = dict(scales.get(chosen) or {})
    unknown = set(section) - set(SCALE_KEYS)
    if unknown:
        raise SweepError(
            f"{path}: scales.{chosen} has unknown key(s) {sorted(unknown)}; valid: {list(SCALE_KEYS)}"
        )
    merged = {k: v for k, v in data.items() if k != "scales"}
    for key, value in section.items():
        if key in ("search_space", "overrides") and isinstance(value, Mapping):
            # Per-key merge; `KEY: null` in a scale removes a knob from the search space.
            base = dict(merged.get(key) or {})
            base.update(value)
            merged[key] = {k: v for k, v in base.items() if not (key == "search_space" and v is None)}
        else:
            merged[key] = value
    return merged, str(chosen)


@dataclass
class SweepSpec:
    """A parsed, validated sweep file at one scale. Build it with :meth:`load` or :meth:`from_dict`."""

    name: str
    base: Path
    params: list[ParamSpec]
    objectives: list[Objective] = field(default_factory=lambda: [Objective("val/dice_mean")])
    sampler: tuple[str, dict[str, Any]] = ("grid", {})
    pruner: tuple[str, dict[str, Any]] = ("none", {})
    budgets_mib: list[float] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    auto_max_seq_len: dict[str, Any] | None = None
    n_trials: int | None = None
    runner: str = "process"
    trial_timeout_s: float | None = None
    storage_url: str | None = None
    heartbeat_interval: int = 30
    grace_period: int = 90
    max_retry: int = 3
    output_dir: Path | None = None
    scale: str = "cpu"
    description: str = ""
    path: Path | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | Path, scale: str | None = None) -> SweepSpec:
        """Read a sweep YAML; ``base`` is resolved relative to the sweep file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep file {str(path)!r} not found")
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, Mapping):
            raise SweepError(f"{path}: a sweep file is a YAML mapping, got {type(data).__name__}")
        return cls.from_dict(dict(data), scale=scale, path=path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], scale: str | None = None, path: Path | None = None) -> SweepSpec:
        """Build from the mapping a sweep YAML holds (see the module docstring)."""
        where = str(path or "sweep")
        unknown = set(data) - set(SWEEP_KEYS)
        if unknown:
            raise SweepError(
                f"{where}: unknown key(s) {sorted(unknown)}; a sweep file may hold {list(SWEEP_KEYS)}"
            )
        data, chosen = _merge_scale(data, scale, where)
        for required in ("name", "base", "search_space"):
            if not data.get(required):
                raise SweepError(f"{where}: `{required}:` is required")
        base = Path(data["base"])
        if path is not None and not base.is_absolute():
            base = (path.parent / base).resolve()
        space = data["search_space"]
        if not isinstance(space, Mapping):
            raise SweepError(f"{where}: search_space maps dotted config keys to choices or ranges")
        names = _param_names(list(space))
        params = [_parse_param(str(k), v, names[k]) for k, v in space.items()]
        repeated = sorted(n for n, c in Counter(p.name for p in params).items() if c > 1)
        if repeated:
            raise SweepError(f"{where}: two knobs are named {repeated}; give each a distinct `name:`")
        budgets = data.get("budgets_mib") or []
        budgets = [budgets] if isinstance(budgets, (int, float)) else list(budgets)
        if any(isinstance(b, bool) or not isinstance(b, (int, float)) or b <= 0 for b in budgets):
            raise SweepError(f"{where}: budgets_mib must be positive numbers (MiB), got {budgets!r}")
        overrides = data.get("overrides") or {}
        if not isinstance(overrides, Mapping):
            raise SweepError(f"{where}: overrides maps dotted config keys to values, got {overrides!r}")
        clash = set(overrides) & {k for p in params for k in p.config_keys()}
        if clash:
            raise SweepError(f"{where}: {sorted(clash)} are both searched and overridden; keep one")
        storage = data.get("storage") or {}
        if isinstance(storage, str):
            storage = {"url": storage}
        unknown = set(storage) - {"url", "heartbeat_interval", "grace_period", "max_retry"}
        if unknown:
            raise SweepError(
                f"{where}: storage has unknown key(s) {sorted(unknown)}; "
                "valid: url, heartbeat_interval, grace_period, max_retry"
            )
        runner = str(data.get("runner", "process"))
        if runner not in RUNNERS:
            raise SweepError(f"{where}: runner must be one of {RUNNERS}, got {runner!r}")
        auto = data.get("auto_max_seq_len")
        if auto is True:
            auto = {}
        if auto is not None and auto is not False:
            unknown = set(auto) - {"quantile", "samples", "multiple_of"}
            if unknown:
                raise SweepError(
                    f"{where}: auto_max_seq_len knows quantile, samples, multiple_of; not {sorted(unknown)}"
                )
            if "data.init_args.max_seq_len" in space or "data.init_args.max_seq_len" in overrides:
                raise SweepError(
                    f"{where}: auto_max_seq_len and a fixed/searched data.init_args.max_seq_len clash"
                )
        else:
            auto = None
        n_trials = data.get("n_trials")
        spec = cls(
            name=str(data["name"]),
            base=base,
            params=params,
            objectives=_parse_objectives(data.get("objectives")),
            sampler=_named(data.get("sampler"), "sampler", SAMPLERS),
            pruner=_named(data.get("pruner"), "pruner", PRUNERS),
            budgets_mib=[float(b) for b in budgets],
            overrides=dict(overrides),
            auto_max_seq_len=dict(auto) if auto is not None else None,
            n_trials=int(n_trials) if n_trials is not None else None,
            runner=runner,
            trial_timeout_s=float(data["trial_timeout_s"]) if data.get("trial_timeout_s") else None,
            storage_url=storage.get("url"),
            heartbeat_interval=int(storage.get("heartbeat_interval", 30)),
            grace_period=int(storage.get("grace_period", 3 * int(storage.get("heartbeat_interval", 30)))),
            max_retry=int(storage.get("max_retry", 3)),
            output_dir=Path(data["output_dir"]) if data.get("output_dir") else None,
            scale=chosen,
            description=str(data.get("description", "")),
            path=path,
        )
        if len(spec.objectives) > 1 and spec.pruner[0] != "none":
            raise SweepError(f"{where}: Optuna cannot prune multi-objective studies; set `pruner: none`")
        if spec.sampler[0] == "grid":
            spec.grid()  # fails early on continuous ranges
        elif spec.n_trials is None:
            raise SweepError(f"{where}: sampler {spec.sampler[0]!r} needs `n_trials:` (or --n-trials)")
        return spec

    # ------------------------------------------------------------------ derived
    @property
    def study_name(self) -> str:
        return f"{self.name}-{self.scale}"

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def budget_mib(self) -> float | None:
        """The largest budget: a trial over it is not trained."""
        return max(self.budgets_mib) if self.budgets_mib else None

    def resolved_output_dir(self) -> Path:
        return (self.output_dir or Path("runs") / "sweeps" / self.name / self.scale).resolve()

    def resolved_storage(self) -> str:
        if self.storage_url:
            return self.storage_url
        return f"sqlite:///{self.resolved_output_dir() / 'study.db'}"

    def param(self, name: str) -> ParamSpec:
        return next(p for p in self.params if p.name == name)

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space (Optuna values)."""
        return {p.name: p.grid_values() for p in self.params}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def target_trials(self, n_trials: int | None = None) -> int:
        """The total number of trials the study should hold when the sweep is done."""
        n = n_trials if n_trials is not None else self.n_trials
        if self.sampler[0] == "grid":
            return min(n, self.grid_size()) if n is not None else self.grid_size()
        if n is None:
            raise SweepError(f"sampler {self.sampler[0]!r} needs a number of trials (n_trials / --n-trials)")
        return n

    def fingerprint(self) -> str:
        """A hash of what defines the study's trials (search space, objectives, base, overrides)."""
        desc = {
            "space": [
                (p.key, p.kind, p.optuna_choices(), p.low, p.high, p.step, p.log)
                # named choices: what the labels stand for defines the trials too
                + ((list(p.choices),) if p.labels else ())
                for p in self.params
            ],
            "objectives": [(o.metric, o.direction) for o in self.objectives],
            "base": str(self.base),
            "overrides": self.overrides,
        }
        return hashlib.sha1(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """What the study stores as its ``sweep`` user attribute."""
        return {
            "name": self.name,
            "scale": self.scale,
            "sweep_file": str(self.path) if self.path else None,
            "base": str(self.base),
            "params": {p.name: p.key for p in self.params},
            "objectives": [[o.metric, o.direction] for o in self.objectives],
            "budgets_mib": self.budgets_mib,
            "sampler": self.sampler[0],
            "pruner": self.pruner[0],
            "fingerprint": self.fingerprint(),
        }

    # ------------------------------------------------------------------ configs
    def base_config(self) -> dict[str, Any]:
        if not self.base.is_file():
            raise FileNotFoundError(f"base experiment {str(self.base)!r} of sweep {self.name!r} not found")
        with open(self.base) as f:
            return yaml.safe_load(f) or {}

    def trial_config(
        self, params: Mapping[str, Any], base: Mapping[str, Any] | None = None, trial_dir: Path | None = None
    ) -> dict[str, Any]:
        """The experiment config of a trial: base, then overrides, then the trial's parameters.

        With ``trial_dir``, logs and checkpoints go there and progress bars are off.
        """
        config = copy.deepcopy(dict(base if base is not None else self.base_config()))
        for key, value in self.overrides.items():
            set_dotted(config, key, copy.deepcopy(value))
        for p in self.params:
            if p.name in params:
                for key, value in p.settings(params[p.name]):
                    set_dotted(config, key, copy.deepcopy(value))
        if trial_dir is not None:
            _route_outputs(config, trial_dir)
        return config


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """Set ``config["a"]["b"]["c"] = value`` for ``key="a.b.c"``, creating (or replacing null) mappings."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SweepError(
                f"cannot set {key!r}: {'.'.join(parts[: i + 1])!r} holds {child!r}, not a mapping"
            )
        node = child
    node[parts[-1]] = value


def _route_outputs(config: dict[str, Any], trial_dir: Path) -> None:
    trainer = config.get("trainer")
    if not isinstance(trainer, dict):
        trainer = config["trainer"] = {}
    trainer["default_root_dir"] = str(trial_dir)
    trainer.setdefault("enable_progress_bar", False)
    trainer.setdefault("enable_model_summary", False)
    logger = trainer.get("logger")
    if logger is None or logger is True:
        trainer["logger"] = [
            {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(trial_dir), "name": "", "version": "logs"},
            }
        ]
        return
    for entry in logger if isinstance(logger, list) else [logger]:
        if isinstance(entry, dict) and isinstance(entry.get("init_args"), dict):
            entry["init_args"].update({"save_dir": str(trial_dir), "name": "", "version": "logs"})


# ================================================================================= config keys
_KEY_CACHE: dict[str, dict[str, Any]] = {}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out[key] = v
            out.update(_flatten(v, key))
    return out


def full_config(base: Path) -> dict[str, Any]:
    """The base experiment with every default filled in, as ``rleseg fit --print_config`` shows it."""
    from rleseg.lightning_cli import RlesegCLI

    cache_key = f"{base}:{base.stat().st_mtime_ns}"
    if cache_key not in _KEY_CACHE:
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                RlesegCLI(args=["--config", str(base), "--print_config"], run=False)
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise SweepError(
                    f"base experiment {base} does not parse:\n{err.getvalue().strip()}"
                ) from None
        _KEY_CACHE[cache_key] = yaml.safe_load(out.getvalue()) or {}
    return _KEY_CACHE[cache_key]


def check_keys(spec: SweepSpec, config: Mapping[str, Any] | None = None) -> None:
    """Fail on a search-space or override key the base experiment does not have.

    A key is valid if the fully defaulted base config has it, or if its parent is a free-form mapping
    (``tokenizer_args``, ``source_args``: their keys are checked when the trial builds its objects).

    Raises:
        SweepError: naming the key, the closest valid keys, and the valid keys of its section.
    """
    flat = _flatten(config if config is not None else full_config(spec.base))
    for key in [k for p in spec.params for k in p.config_keys()] + list(spec.overrides):
        if key in flat:
            continue
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        free_form = (
            parent in flat
            and (flat[parent] is None or isinstance(flat[parent], Mapping))
            and "." in parent
            and not parent.endswith("init_args")
            and not (isinstance(flat[parent], Mapping) and "class_path" in flat[parent])
        )
        if free_form:
            continue
        section = key.split(".")[0]
        if section == "data" or section == "model":
            section = f"{section}.init_args"
        siblings = sorted(
            k for k in flat if k.startswith(section + ".") and k.count(".") == section.count(".") + 1
        )
        close = difflib.get_close_matches(key, list(flat), n=3)
        raise SweepError(
            f"unknown config key {key!r} (not in {spec.base.name} or its defaults)"
            + (f"; did you mean {close}?" if close else "")
            + f"\nvalid keys under {section}: "
            + (", ".join(siblings) or ", ".join(sorted({k.split(".")[0] for k in flat})))
        )


# ======================================================================== per-trial preparation
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


class _Estimator:
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
            num_parameters=estimate.num_parameters,
            vocab_size=int(getattr(dm, "vocab_size", 0)),
            max_seq_len=int(getattr(dm, "max_seq_len", 0)),
            estimate_seconds=round(estimate.seconds, 3),
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
        "train_seconds": round(seconds, 3),
        "epochs": int(cli.trainer.current_epoch),
        "global_step": int(cli.trainer.global_step),
        "measured_peak_mib": None if peak.peak_mib is None else round(peak.peak_mib, 3),
        "measured_method": peak.method,
        "decode_seconds_per_image": metrics.get("val/decode_seconds_per_image"),
        "validity_rate": metrics.get("val/validity"),
        **lengths.summary(),
        **metrics,
    }
    if not math.isfinite(metrics.get("train/loss", 0.0)):
        raise TrialFailed(f"training loss is {metrics['train/loss']}")
    return record, (pruning.message if pruning is not None and pruning.pruned else None)


def _parent_watchdog() -> None:
    # A child whose sweep process was killed (SIGKILL leaves no chance to clean up) must not train on.
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(137)

    threading.Thread(target=watch, daemon=True).start()


def _child_main(job_path: str) -> int:
    """Entry point of a trial's child process (``runner: process``)."""
    _parent_watchdog()
    job = json.loads(Path(job_path).read_text())
    result_path = Path(job["result"])
    try:
        trial = None
        if job.get("prune"):
            import optuna

            storage = open_storage(job["storage"], heartbeat=False)
            pruner = _make_pruner(tuple(job["pruner"]))
            study = optuna.load_study(study_name=job["study_name"], storage=storage, pruner=pruner)
            trial = optuna.trial.Trial(study, int(job["trial_id"]))
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
    result_path.write_text(json.dumps(result, default=_json_default))
    return code


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


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


class _BudgetConstraint:
    """``constraints_func`` for TPE / NSGA-II: estimated peak minus the largest budget (<= 0 is feasible)."""

    def __init__(self, budget_mib: float) -> None:
        self.budget_mib = budget_mib

    def __call__(self, trial: Any) -> list[float]:
        estimate = trial.user_attrs.get("estimated_peak_mib")
        return [0.0 if estimate is None else float(estimate) - self.budget_mib]


def _make_sampler(spec: SweepSpec) -> Any:
    import optuna

    name, kwargs = spec.sampler
    kwargs = dict(kwargs)
    constraints = _BudgetConstraint(spec.budget_mib) if spec.budget_mib else None
    try:
        if name == "grid":
            return optuna.samplers.GridSampler(spec.grid(), **kwargs)
        if name == "random":
            return optuna.samplers.RandomSampler(**kwargs)
        if name == "tpe":
            return optuna.samplers.TPESampler(constraints_func=constraints, **kwargs)
        return optuna.samplers.NSGAIISampler(constraints_func=constraints, **kwargs)
    except TypeError as err:
        raise SweepError(f"sampler {name!r}: bad option(s) {kwargs}: {err}") from None


def _make_pruner(pruner: tuple[str, dict[str, Any]]) -> Any:
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


@dataclass(frozen=True)
class StudyProgress:
    """Trials that count toward the total (``done``), in flight, and queued for a retry."""

    done: int
    running: int
    waiting: int
    superseded: frozenset[int]


def study_progress(study: Any) -> StudyProgress:
    """Count a study's trials the way the sweep's total counts them.

    Finished trials count once; a trial retried after its process died (its number is in a later
    trial's ``retry_history``) does not, nor does a duplicate grid trial; an interrupted trial (Ctrl-C)
    does not either, since it is retried on resume.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    superseded = frozenset(n for t in trials for n in t.system_attrs.get("retry_history", []))
    done = running = waiting = 0
    for t in trials:
        if t.number in superseded or "duplicate_of" in t.user_attrs:
            continue
        if t.state == TrialState.RUNNING:
            running += 1
        elif t.state == TrialState.WAITING:
            waiting += 1
        elif t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            continue
        elif t.state.is_finished():
            done += 1
    return StudyProgress(done, running, waiting, superseded)


def _requeue_interrupted(study: Any, max_retry: int) -> int:
    """Queue a retry of every trial interrupted by Ctrl-C (heartbeats only catch killed processes)."""
    from optuna.trial import TrialState

    progress = study_progress(study)
    count = 0
    for t in study.get_trials(deepcopy=True, states=(TrialState.FAIL,)):
        if t.user_attrs.get("interrupted") and t.number not in progress.superseded:
            import optuna

            system_attrs = {"failed_trial": t.number, "retry_history": [], **t.system_attrs}
            system_attrs["retry_history"] = [*system_attrs["retry_history"], t.number]
            if len(system_attrs["retry_history"]) > max_retry:
                continue
            user_attrs = {k: v for k, v in t.user_attrs.items() if k not in ("interrupted", "error")}
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.WAITING,
                    params=t.params,
                    distributions=t.distributions,
                    user_attrs=user_attrs,
                    system_attrs=system_attrs,
                )
            )
            count += 1
    return count


# ========================================================================================= workers
class _Worker:
    """One process's loop over a study: estimate, skip what does not fit, train the rest."""

    def __init__(
        self,
        spec: SweepSpec,
        storage_url: str,
        target: int,
        worker_id: int = 0,
        dry_run: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.storage_url = storage_url
        self.target = target
        self.tag = f"[w{worker_id}] " if worker_id else ""
        self.dry_run = dry_run
        self.log = log or (lambda line: print(line, flush=True))
        self.estimator = _Estimator(spec)
        self.output_dir = spec.resolved_output_dir()

    # ------------------------------------------------------------------ the objective
    def objective(self, trial: Any) -> Any:
        import optuna

        spec = self.spec
        try:
            raw = {p.name: p.suggest(trial) for p in spec.params}
            # `Trial` has no public system attributes in Optuna 5; the stored (frozen) trials do.
            trials = trial.study.get_trials(deepcopy=False)
            system_attrs = next(t.system_attrs for t in trials if t.number == trial.number)
            self._check_duplicate(trial, system_attrs.get("grid_id"), trials)
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            trial_dir = self.output_dir / f"trial_{trial.number:04d}"
            label = " ".join(spec.param(k).describe(v) for k, v in raw.items())
            if system_attrs.get("failed_trial") is not None:
                trial.set_user_attr("retry_of", int(system_attrs["failed_trial"]))
            config = self.estimator.config(raw, None if self.dry_run else trial_dir)
            if not self.dry_run:
                trial_dir.mkdir(parents=True, exist_ok=True)
                config_path = trial_dir / "config.yaml"
                config_path.write_text(yaml.safe_dump(config, sort_keys=False))
                trial.set_user_attr("config_path", str(config_path))
            record, peak = self.estimator.estimate(config)
            fits = [b for b in spec.budgets_mib if peak <= b]
            record.update(
                budgets_fit=fits, budget_mib=spec.budget_mib, infeasible=bool(spec.budgets_mib and not fits)
            )
            for key, value in record.items():
                trial.set_user_attr(key, value)
            if record["infeasible"]:
                raise optuna.TrialPruned(f"over budget: estimated {peak:.1f} MiB > {spec.budget_mib:g} MiB")
            if self.dry_run:
                raise optuna.TrialPruned(f"dry run: estimated {peak:.1f} MiB")
            self.log(f"{self.tag}trial {trial.number} started: {label} | est {peak:.1f} MiB")
            record, pruned = self._train(trial, trial_dir, config_path)
            for key, value in record.items():
                if value is not None:
                    trial.set_user_attr(key, value)
            if pruned:
                raise optuna.TrialPruned(pruned)
            return self._values(record)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("error", "KeyboardInterrupt")
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            if not self.dry_run:
                trial_dir = self.output_dir / f"trial_{trial.number:04d}"
                trial_dir.mkdir(parents=True, exist_ok=True)
                detail = getattr(err, "detail", "")
                (trial_dir / "error.txt").write_text(
                    traceback.format_exc() + (f"\nin the trial process:\n{detail}" if detail else "")
                )
                trial.set_user_attr("error_log", str(trial_dir / "error.txt"))
            raise

    def _check_duplicate(self, trial: Any, grid_id: int | None, trials: Sequence[Any]) -> None:
        """Prune a grid trial whose point another trial holds (a race between workers at the grid's end)."""
        import optuna
        from optuna.trial import TrialState

        if self.spec.sampler[0] != "grid" or grid_id is None:
            return
        for other in trials:
            if other.number == trial.number or other.system_attrs.get("grid_id") != grid_id:
                continue
            if "duplicate_of" in other.user_attrs:
                continue
            holds = other.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                other.state == TrialState.RUNNING and other.number < trial.number
            )
            if holds:
                trial.set_user_attr("duplicate_of", other.number)
                trial.study.stop()
                raise optuna.TrialPruned(f"grid point {grid_id} is trial {other.number}'s")

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
            "storage": self.storage_url,
            "study_name": self.spec.study_name,
            "trial_id": trial._trial_id,
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
        trial.set_user_attr("log_path", str(log_path))
        if not result_path.is_file():
            tail = log_path.read_text()[-1500:].strip()
            raise TrialFailed(f"trial process exited with code {code} and no result; log tail:\n{tail}")
        result = json.loads(result_path.read_text())
        if result["status"] == "failed":
            raise TrialFailed(result["error"], result.get("traceback", ""))
        return result["record"], result.get("message")

    # ------------------------------------------------------------------ progress lines
    def report(self, study: Any, trial: Any) -> None:
        spec = self.spec
        attrs = trial.user_attrs
        label = " ".join(
            spec.param(k).describe(v)
            for k, v in trial.params.items()
            if any(p.name == k for p in spec.params)
        )
        est = attrs.get("estimated_peak_mib")
        parts = [f"{self.tag}trial {trial.number} {trial.state.name:8s} {label}"]
        if est is not None:
            parts.append(
                f"est {est:.1f} MiB"
                + (f", measured {attrs['measured_peak_mib']:.1f}" if attrs.get("measured_peak_mib") else "")
            )
        if trial.values:
            parts.append(
                " ".join(f"{o.metric}={v:.4f}" for o, v in zip(spec.objectives, trial.values, strict=False))
            )
        elif attrs.get("error"):
            parts.append(attrs["error"].splitlines()[0][:200])
        elif attrs.get("infeasible"):
            parts.append(f"over budget ({spec.budget_mib:g} MiB): not trained")
        elif "duplicate_of" in attrs:
            parts.append(f"duplicate of trial {attrs['duplicate_of']}")
        elif self.dry_run:
            fits = attrs.get("budgets_fit") or []
            parts.append(f"fits {', '.join(f'{b:g}' for b in fits)} MiB" if fits else "fits no budget")
        duration = trial.duration.total_seconds() if trial.duration else 0.0
        parts.append(f"{duration:.1f} s")
        self.log(" | ".join(parts))

    # ------------------------------------------------------------------ the loop
    def run(self, study: Any) -> None:
        import optuna

        poll = max(1.0, min(float(self.spec.heartbeat_interval), 10.0))
        while True:
            if not self.dry_run:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    optuna.storages.fail_stale_trials(study)
            progress = study_progress(study)
            if progress.waiting or progress.done + progress.running < self.target:
                study.optimize(self.objective, n_trials=1, catch=(Exception,), callbacks=[self.report])
                continue
            if progress.running and not self.dry_run:
                # Another worker holds the last trials, or a dead one does: its heartbeat will go stale and
                # the trial will be queued for a retry. Wait for either.
                time.sleep(poll)
                continue
            return


def _worker_main(
    sweep_file: str, scale: str | None, storage_url: str, target: int, worker_id: int, n_trials: int | None
) -> None:
    """Entry point of a ``--workers K`` process."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = SweepSpec.load(sweep_file, scale=scale)
    if n_trials is not None:
        spec.n_trials = n_trials
    storage = open_storage(storage_url, True, spec.heartbeat_interval, spec.grace_period, spec.max_retry)
    study = optuna.load_study(
        study_name=spec.study_name,
        storage=storage,
        sampler=_make_sampler(spec),
        pruner=_make_pruner(spec.pruner),
    )
    _Worker(spec, storage_url, target, worker_id).run(study)


# ========================================================================================= the run
def run_sweep(
    spec: SweepSpec,
    resume: bool = False,
    n_trials: int | None = None,
    storage: str | None = None,
    workers: int = 1,
    dry_run: bool = False,
    log: Callable[[str], None] | None = None,
) -> Any:
    """Run (or resume) a sweep until its study holds the target number of finished trials.

    Args:
        spec: the sweep (see :class:`SweepSpec`).
        resume: continue an existing study (required when it already has trials).
        n_trials: total trials wanted (default: the grid's size, or the sweep file's ``n_trials``).
        storage: an SQLAlchemy URL (default: ``sqlite:///<output_dir>/study.db``).
        workers: processes working on the study at once.
        dry_run: estimate every trial's memory and print it; train nothing, store nothing.
        log: where progress lines go (default: print).

    Returns:
        The ``optuna.Study``.

    >>> spec = SweepSpec.load("sweeps/encodings.yaml")  # doctest: +SKIP
    >>> study = run_sweep(spec, dry_run=True)  # doctest: +SKIP
    trial 0 PRUNED   tokenizer=mc subsample=2 | est 250.3 MiB | fits 300 MiB | 1.9 s
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    log = log or (lambda line: print(line, flush=True))
    if n_trials is not None:
        spec.n_trials = n_trials
    target = spec.target_trials(n_trials)
    check_keys(spec)
    if dry_run:
        study = optuna.create_study(
            directions=spec.directions, sampler=_make_sampler(spec), study_name=spec.study_name
        )
        _Worker(spec, "", target, dry_run=True, log=log).run(study)
        return study

    url = storage or spec.resolved_storage()
    shown = shown_url(url)  # messages and logs never show the password
    spec.resolved_output_dir().mkdir(parents=True, exist_ok=True)
    backend = open_storage(url, True, spec.heartbeat_interval, spec.grace_period, spec.max_retry)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(backend)}
    if spec.study_name in existing and existing[spec.study_name].n_trials and not resume:
        raise SweepError(
            f"study {spec.study_name!r} in {shown} already has {existing[spec.study_name].n_trials} trials; "
            "pass --resume to continue it (or to add a worker to it), or choose another --storage"
        )
    if resume and spec.study_name not in existing:
        raise SweepError(f"nothing to resume: no study {spec.study_name!r} in {shown}")
    study = optuna.create_study(
        study_name=spec.study_name,
        storage=backend,
        sampler=_make_sampler(spec),
        pruner=_make_pruner(spec.pruner),
        directions=spec.directions,
        load_if_exists=True,
    )
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", spec.summary())
        study.set_user_attr("budgets_mib", spec.budgets_mib)
    elif stored.get("fingerprint") != spec.fingerprint():
        raise SweepError(
            f"study {spec.study_name!r} in {shown} was created from a different sweep (search space, "
            "objectives, base or overrides changed); resume it with the original file, or start a new study "
            "with --storage"
        )
    requeued = _requeue_interrupted(study, spec.max_retry)
    progress = study_progress(study)
    log(
        f"sweep {spec.study_name}: {progress.done}/{target} trials done, {progress.running} running, "
        f"{progress.waiting + requeued} queued; storage {shown}; budgets {spec.budgets_mib or 'none'} MiB; "
        f"{workers} worker(s)"
    )
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
                args=(str(spec.path), spec.scale, url, target, i + 1, spec.n_trials),
                name=f"rleseg-sweep-w{i + 1}",
            )
            for i in range(workers)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.name for p in procs if p.exitcode != 0]
        if bad:
            log(f"warning: worker(s) {bad} exited with an error; run again with --resume to finish")
    export_trials(study, spec.resolved_output_dir() / "trials.csv")
    progress = study_progress(study)
    log(
        f"sweep {spec.study_name}: {progress.done}/{target} trials done; "
        f"trials in {spec.resolved_output_dir()}"
    )
    return study


# ========================================================================================== export
#: Record columns first in the export, in this order (the rest follow alphabetically).
LEADING_COLUMNS = (
    "infeasible",
    "budgets_fit",
    "estimated_peak_mib",
    "measured_peak_mib",
    "num_parameters",
    "vocab_size",
    "max_seq_len",
    "tokens_per_mask_p50",
    "tokens_per_mask_p95",
    "tokens_per_mask_max",
    "truncated_fraction",
    "train_seconds",
    "decode_seconds_per_image",
    "validity_rate",
    "val/dice_mean",
)


def export_trials(study: Any, path: str | Path | None = None) -> Any:
    """One row per trial (params, objective values, every record attribute) as a DataFrame; CSV to ``path``.

    ``superseded`` marks a trial whose process died and that was retried as a later trial (``retry_of``).
    """
    import pandas as pd

    sweep = study.user_attrs.get("sweep") or {}
    objectives = [m for m, _ in sweep.get("objectives", [])] or ["value"]
    progress = study_progress(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "superseded": t.number in progress.superseded,
            "duration_s": round(t.duration.total_seconds(), 3) if t.duration else None,
        }
        row.update({f"param_{k}": v for k, v in t.params.items()})
        for i, metric in enumerate(objectives):
            row[f"objective_{metric}"] = t.values[i] if t.values and i < len(t.values) else None
        for key, value in t.user_attrs.items():
            row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
        rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        head = [c for c in frame.columns if c in ("number", "state", "superseded", "duration_s")]
        params = [c for c in frame.columns if c.startswith("param_")]
        objs = [c for c in frame.columns if c.startswith("objective_")]
        lead = [c for c in LEADING_COLUMNS if c in frame.columns]
        rest = sorted(c for c in frame.columns if c not in {*head, *params, *objs, *lead})
        frame = frame[head + params + objs + lead + rest]
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
    return frame


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--run-trial":
        raise SystemExit(_child_main(sys.argv[2]))
    raise SystemExit("usage: python -m rleseg.sweep --run-trial JOB.json (internal; use `rleseg sweep`)")
