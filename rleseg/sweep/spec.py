"""The sweep file: ``sweeps/NAME.yaml`` parsed and validated, and the trial configs it defines (no Optuna).

A sweep file names a base experiment (a YAML that ``rleseg fit`` accepts; committed sweeps point at a
frozen copy under ``sweeps/bases/`` so the quickstart may change without changing what they measure),
the knobs to vary as dotted keys of that config, the objective(s), the sampler, the pruner and the memory
budgets::

    name: encodings
    base: bases/encodings.yaml                    # relative to the sweep file
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
    repeats: 2                        # each point with seeds 0 and 1 (seed_everything), grid sampler
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

**Repeats.** ``repeats: N`` adds the knob ``seed`` (``seed_everything``) with N values, starting at the
``seed_everything`` of the overrides (else 0): every point of the grid is trained with N seeds, and the
report shows mean ± sd per point and which differences exceed the seeds' spread.

>>> spec = SweepSpec.from_dict({"name": "demo", "base": "experiments/quickstart.yaml",
...     "search_space": {"data.init_args.tokenizer": ["mc", "lac"],
...                      "data.init_args.tokenizer_args.subsample": [2, 4]},
...     "budgets_mib": [512], "repeats": 2})
>>> [p.name for p in spec.params], len(spec.grid())
(['tokenizer', 'subsample', 'seed'], 3)
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
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
    "repeats",
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
#: The config key ``repeats:`` varies, and the name of its knob.
SEED_KEY, SEED_PARAM = "seed_everything", "seed"
SAMPLERS = ("grid", "tpe", "nsga2", "random")
PRUNERS = ("none", "median", "percentile", "hyperband", "successive_halving", "threshold")
RUNNERS = ("process", "inline")
DIRECTIONS = ("maximize", "minimize")
PRIMITIVES = (str, int, float, bool, type(None))


class SweepError(ValueError):
    """A bad sweep file, an unknown config key, or a study in a state the command cannot continue."""


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
    repeats: int = 1
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
        overrides = dict(overrides)
        repeats = data.get("repeats", 1)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise SweepError(
                f"{where}: repeats must be a whole number >= 1 (seeds per point), got {repeats!r}"
            )
        if repeats > 1:
            if any(SEED_KEY in p.config_keys() for p in params) or any(p.name == SEED_PARAM for p in params):
                raise SweepError(
                    f"{where}: `repeats:` adds the knob {SEED_PARAM!r} ({SEED_KEY}); remove {SEED_KEY} from "
                    "the search space (or drop `repeats:`)"
                )
            if _named(data.get("sampler"), "sampler", SAMPLERS)[0] != "grid":
                raise SweepError(
                    f"{where}: repeats needs `sampler: grid` (a TPE/random point is proposed once; search "
                    f"`{SEED_KEY}` instead)"
                )
            first = overrides.pop(SEED_KEY, 0)
            if isinstance(first, bool) or not isinstance(first, int):
                raise SweepError(
                    f"{where}: overrides.{SEED_KEY} must be an integer with repeats, got {first!r}"
                )
            seeds = tuple(range(first, first + repeats))
            params.append(ParamSpec(SEED_KEY, SEED_PARAM, "categorical", seeds))
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
            repeats=int(repeats),
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
        """Where the study and the trial folders go (``runs/sweeps/NAME/SCALE`` by default), relative to the
        working folder when inside it: trial configs and the study then hold no absolute paths."""
        out = (self.output_dir or Path("runs") / "sweeps" / self.name / self.scale).resolve()
        return Path(_relative(out, Path.cwd()))

    def resolved_storage(self) -> str:
        if self.storage_url:
            return self.storage_url
        return f"sqlite:///{self.resolved_output_dir() / 'study.db'}"

    def report_command(self, storage: str | None = None) -> str:
        """The ``rleseg report`` command for this sweep's study (give it ``storage`` with the password
        masked: the line is printed)."""
        import shlex

        url = storage or self.resolved_storage()
        study = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
        return shlex.join(
            [
                "rleseg",
                "report",
                "--study",
                study,
                "--name",
                self.study_name,
                "--out",
                f"reports/{self.name}/",
            ]
        )

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
        """A hash of the search space and the objectives (the configuration is compared key by key, see
        :meth:`binding` and :func:`config_differences`)."""
        desc = {
            "space": [
                (p.key, p.kind, p.optuna_choices(), p.low, p.high, p.step, p.log)
                # named choices: what the labels stand for defines the trials too
                + ((list(p.choices),) if p.labels else ())
                for p in self.params
            ],
            "objectives": [(o.metric, o.direction) for o in self.objectives],
        }
        return hashlib.sha1(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """What the study stores as its ``sweep`` user attribute."""
        return {
            "name": self.name,
            "scale": self.scale,
            "sweep_file": self.shown_path(),
            "base": self.shown_base(),
            "params": {p.name: p.key for p in self.params},
            "objectives": [[o.metric, o.direction] for o in self.objectives],
            "budgets_mib": self.budgets_mib,
            "sampler": self.sampler[0],
            "pruner": self.pruner[0],
            "repeats": self.repeats,
            "fingerprint": self.fingerprint(),
        }

    def shown_path(self) -> str | None:
        """The sweep file as stored and shown: relative to the working folder when inside it, else its
        name (never an absolute path of this machine)."""
        return _relative(self.path, Path.cwd()) if self.path is not None else None

    def shown_base(self) -> str:
        """The base experiment relative to the sweep file (``bases/NAME.yaml``)."""
        if self.path is None:
            return _relative(self.base, Path.cwd())
        return Path(os.path.relpath(self.base.resolve(), self.path.resolve().parent)).as_posix()

    def resolved_base(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The config every trial starts from: the base experiment's contents with the overrides applied."""
        config = copy.deepcopy(dict(base if base is not None else self.base_config()))
        for key, value in self.overrides.items():
            set_dotted(config, key, copy.deepcopy(value))
        return config

    def binding(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What a study is bound to: the resolved base config (contents, not a path), the sweep file (path
        and text), the package version and the git commit (None outside a git checkout)."""
        from rleseg import __version__

        text = self.path.read_text() if self.path is not None and self.path.is_file() else None
        return {
            "resolved_base": self.resolved_base(base),
            "base": self.shown_base(),
            "sweep_file": self.shown_path(),
            "sweep_text": text,
            "version": __version__,
            "commit": git_commit(self.path.parent if self.path is not None else Path.cwd()),
        }

    # ------------------------------------------------------------------ configs
    def base_config(self) -> dict[str, Any]:
        if not self.base.is_file():
            raise FileNotFoundError(f"base experiment {str(self.base)!r} of sweep {self.name!r} not found")
        from rleseg.commands.experiments import compose_experiment

        # an experiment file may include shared pieces (config: / model: FILE); a frozen base is one file
        return compose_experiment(self.base)

    def trial_config(
        self, params: Mapping[str, Any], base: Mapping[str, Any] | None = None, trial_dir: Path | None = None
    ) -> dict[str, Any]:
        """The experiment config of a trial: base, then overrides, then the trial's parameters.

        With ``trial_dir``, logs and checkpoints go there and progress bars are off.
        """
        config = self.resolved_base(base)
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


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (POSIX separators), else ``path`` as given."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def git_commit(folder: Path) -> str | None:
    """The commit checked out around ``folder`` (``+dirty`` with uncommitted changes); None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 6) -> list[str]:
    """The dotted keys whose values differ between two configs, as ``key (old -> new)``; at most
    ``limit`` of them, then ``... and N more``.

    >>> config_differences({"model": {"d": 16, "x": 1}}, {"model": {"d": 24}, "seed": 0})
    ['model.d (16 -> 24)', 'model.x (removed)', 'seed (added)']
    """
    a, b = _leaves(old), _leaves(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if key not in b:
            out.append(f"{key} (removed)")
        elif key not in a:
            out.append(f"{key} (added)")
        elif a[key] != b[key]:
            out.append(f"{key} ({_short(a[key])} -> {_short(b[key])})")
    if len(out) > limit:
        out = [*out[:limit], f"... and {len(out) - limit} more"]
    return out


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.loads(json.dumps(node, default=str))} if prefix else {}


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
