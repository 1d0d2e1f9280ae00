from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rleseg.report.document import md_code
from rleseg.sweep import record as rec
from rleseg.sweep import study as st


def safe_relative(path: str) -> bool:
    """A relative path that stays inside its root (no absolute path, no ``..``)."""
    parts = Path(path).parts
    return bool(parts) and not Path(path).is_absolute() and ".." not in parts


class ReportError(ValueError):
    """A storage, study or option the report cannot be built from (a readable, one-line reason)."""


# ==================================================================================== options
@dataclass
class ReportOptions:
    """What :func:`write_report` needs besides the study.

    Attributes:
        title: the report's title (default: ``Sweep report: <study name>``).
        notes: Markdown written by a person (conclusions), placed after the study summary.
        command: the shell command that regenerates the report, shown at its top.
        metric: the quality metric (default: the study's first maximised objective, else ``val/dice_mean``).
        storage: how the study was reached (shown in the summary).
        trial_roots: folders that may hold ``trial_NNNN/`` or ``trials/trial_NNNN/`` when the recorded
            config paths moved (the storage file's folder, typically).
        copy_trials: copy each trial's small artifacts to ``<out>/trials/trial_NNNN/`` and read them from
            there (on by default: the report then regenerates from what is committed beside it).
        copy_study: copy the study to ``<out>/study.db`` (unless it is that file already).
    """

    title: str | None = None
    notes: str | None = None
    command: str | None = None
    metric: str | None = None
    storage: str | None = None
    trial_roots: list[Path] = field(default_factory=list)
    copy_trials: bool = True
    copy_study: bool = True


@dataclass
class ReportResult:
    """Where the report went and what it holds."""

    markdown: Path
    html: Path
    csv: Path
    figures: list[Path]
    sections: list[str]
    trials: list[Path] = field(default_factory=list)  # the trial folders copied under ``<out>/trials/``


# ==================================================================================== storage
def resolve_storage(storage: str) -> str:
    """A SQLAlchemy URL for ``storage``: a URL is kept, a path to a ``.db`` file becomes ``sqlite:///``.

    Raises:
        FileNotFoundError: a path (or ``sqlite:///`` URL) to a file that does not exist; opening it would
            silently create an empty database.

    >>> resolve_storage("postgresql://u@host/db")
    'postgresql://u@host/db'
    """
    if "://" in storage:
        if storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
            path = Path(storage[len("sqlite:///") :])
            if not path.is_file():
                raise FileNotFoundError(f"no study database at {str(path)!r} (from --study {storage})")
        return storage
    path = Path(storage)
    if path.is_dir():
        path = path / "study.db"
    if not path.is_file():
        raise FileNotFoundError(
            f"no study database at {str(path)!r}; give the .db file `rleseg sweep` wrote or a SQLAlchemy URL"
        )
    return f"sqlite:///{path.resolve()}"


def load_study(storage: str, name: str | None = None) -> Any:
    """Open a stored study; ``name`` may be omitted when the storage holds exactly one.

    Raises:
        ReportError: no study, several and no ``name``, or an unknown ``name`` (the message lists the
            valid names).

    >>> study = load_study("runs/sweeps/encodings/cpu/study.db")  # doctest: +SKIP
    """
    import optuna

    url = resolve_storage(storage)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        backend = optuna.storages.RDBStorage(url)
        names = [s.study_name for s in optuna.get_all_study_summaries(backend, include_best_trial=False)]
    except Exception as err:  # noqa: BLE001 - SQLAlchemy/driver errors become one readable line
        raise ReportError(f"cannot open the study storage {url}: {type(err).__name__}: {err}") from None
    if not names:
        raise ReportError(f"the storage {url} holds no study")
    if name is None:
        if len(names) > 1:
            raise ReportError(
                f"the storage {url} holds {len(names)} studies; choose one with --name: {names}"
            )
        name = names[0]
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ReportError(f"no study {name!r} in {url}{hint} (studies there: {names})")
    return optuna.load_study(study_name=name, storage=backend)


# ================================================================================ small helpers
def pareto_front(cost: Sequence[float], quality: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (lower or equal cost and higher or equal quality,
    one strictly), sorted by cost. Non-finite points are never on the front.

    >>> pareto_front([1.0, 1.0, 2.0], [0.3, 0.5, 0.5])
    [1]
    """
    order = sorted(
        (i for i in range(len(cost)) if math.isfinite(cost[i]) and math.isfinite(quality[i])),
        key=lambda i: (cost[i], -quality[i]),
    )
    front: list[int] = []
    best = -math.inf
    for i in order:
        if quality[i] > best:
            front.append(i)
            best = quality[i]
    return front


METRIC_NAMES = {
    "dice": "Dice",
    "iou": "IoU",
    "precision": "precision",
    "recall": "recall",
    "pq": "PQ",
    "sq": "SQ",
    "rq": "RQ",
}


def metric_label(metric: str) -> str:
    """A readable name for a logged metric.

    >>> metric_label("val/dice_mean"), metric_label("val/ceiling_dice_mean")
    ('Dice (val, mean over classes)', 'Dice ceiling at token resolution (val)')
    >>> metric_label("tokens_per_mask_p95")
    'tokens per mask p95'
    """
    stage, _, key = metric.rpartition("/")
    if key.startswith("ceiling_") and key.endswith("_mean"):
        base = key[len("ceiling_") : -len("_mean")]
        return f"{METRIC_NAMES.get(base, base)} ceiling at token resolution ({stage or 'val'})"
    if key.endswith("_mean") and key[: -len("_mean")] in METRIC_NAMES:
        name = METRIC_NAMES[key[: -len("_mean")]]
        return f"{name} ({stage}, mean over classes)" if stage else f"{name} (mean over classes)"
    if key in METRIC_NAMES:
        return f"{METRIC_NAMES[key]} ({stage})" if stage else METRIC_NAMES[key]
    return metric.replace("_", " ")


def _short_metric(metric: str) -> str:
    key = metric.rpartition("/")[2]
    base = key[: -len("_mean")] if key.endswith("_mean") else key
    return METRIC_NAMES.get(base, base.replace("_", " "))


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(value: Any, digits: int = 3, whole: bool = False) -> str:
    """A table cell: ``digits`` decimals; ``whole`` prints integral values without them (counts)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if (whole and v.is_integer()) or abs(v) >= 1e4:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(value)


def _scaled(value: Any, factor: float) -> float | None:
    v = _finite(value)
    return None if v is None else v * factor


def _json_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.startswith("["):
        try:
            return list(json.loads(value))
        except ValueError:
            return []
    return []


def _natural_key(text: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(text)))


# ============================================================================ the study's data
#: Parameter names read as "the encoding" and "the mask resolution" by the sequence-length plots.
ENCODING_PARAMS = ("tokenizer", "encoding", "variant")
RESOLUTION_PARAMS = ("subsample", "canvas", "resolution", "image_size", "patch_size", "size")
PER_CLASS = re.compile(r"^val/(precision|recall|dice|iou)_(.+)$")


@dataclass
class _Data:
    """Everything the sections read, gathered once."""

    study: Any
    frame: pd.DataFrame
    trials: dict[int, Any]
    sweep: dict[str, Any]
    budgets: list[float]
    objectives: list[tuple[str, str]]
    params: list[str]
    encoding: str | None
    resolution: str | None
    metric: str
    direction: str
    trial_dirs: dict[int, Path | None]
    best: int | None
    links: dict[int, str] = field(default_factory=dict)  # trial -> its folder relative to the report
    logs: dict[int, pd.DataFrame | str | None] = field(default_factory=dict)  # read once (see _trial_log)

    def value(self, number: int, key: str) -> Any:
        row = self.frame.loc[self.frame["number"] == number]
        if row.empty or key not in row:
            return None
        value = row.iloc[0][key]
        return None if isinstance(value, float) and math.isnan(value) else value

    def label(self, number: int) -> str:
        t = self.trials[number]
        return ", ".join(f"{k}={v}" for k, v in t.params.items()) or f"trial {number}"

    def complete(self) -> pd.DataFrame:
        f = self.frame
        return f[(f["state"] == "COMPLETE") & ~f["superseded"].astype(bool)]


def _quality_metric(
    objectives: list[tuple[str, str]], frame: pd.DataFrame, wanted: str | None
) -> tuple[str, str]:
    if wanted:
        if wanted not in frame.columns:
            numeric = sorted(c for c in frame.columns if c.startswith("val/"))
            raise ReportError(f"--metric {wanted!r} was not recorded by any trial; recorded: {numeric}")
        direction = dict(objectives).get(wanted, "maximize")
        return wanted, direction
    # The sweep's first maximised objective, even before any trial recorded it (a study just started).
    for metric, direction in objectives:
        if direction == "maximize" and metric != "value":
            return metric, direction
    if "val/dice_mean" in frame.columns:
        return "val/dice_mean", "maximize"
    if objectives:
        return objectives[0]
    return "value", "maximize"


def _find_trial_dir(
    number: int, config_path: Any, roots: Sequence[Path], trial_dir: Any = None
) -> Path | None:
    """The trial's folder: its recorded ``trial_dir`` (relative to the study's output folder, one of
    ``roots``), where its recorded config is (older studies), else ``trial_NNNN`` or
    ``trials/trial_NNNN`` under one of ``roots`` (a study copied or moved with its trial folders keeps
    working)."""
    candidates: list[Path] = []
    if isinstance(trial_dir, str) and trial_dir and safe_relative(trial_dir):
        candidates += [root / trial_dir for root in roots]
    if isinstance(config_path, str) and config_path:
        parent = Path(config_path).parent
        candidates.append(parent)
        if not parent.is_absolute():
            candidates += [root / parent for root in roots]
        candidates += [root / parent.name for root in roots]
    candidates += [root / f"trial_{number:04d}" for root in roots]
    # Copies committed beside the study (``rleseg report --copy-trials``).
    candidates += [root / "trials" / f"trial_{number:04d}" for root in roots]
    return next((c for c in candidates if c.is_dir()), None)


def _gather(study: Any, options: ReportOptions, extra_roots: Sequence[Path] = ()) -> _Data:
    from rleseg.sweep import export_trials

    frame = export_trials(study)
    if frame.empty:
        frame = pd.DataFrame(columns=["number", "state", "superseded", "duration_s"])
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    sweep = dict(study.user_attrs.get("sweep") or {})
    budgets = [float(b) for b in (study.user_attrs.get("budgets_mib") or sweep.get("budgets_mib") or [])]
    objectives = [(str(m), str(d)) for m, d in sweep.get("objectives", [])]
    if not objectives:
        objectives = [("value", d.name.lower()) for d in study.directions]
    # export_trials names objective columns after the sweep's metrics, or "value" without a sweep.
    if "objective_value" in frame.columns and "value" not in frame.columns:
        frame["value"] = frame["objective_value"]
    params = [c[len("param_") :] for c in frame.columns if c.startswith("param_")]
    # Colours follow the encoding and the x axis of the length plot the resolution; a sweep without one of
    # them (a vocabulary or a video sweep) uses its other knobs instead, so the plots still separate trials.
    resolution = next((p for name in RESOLUTION_PARAMS for p in params if p == name), None)
    encoding = next((p for p in params if p in ENCODING_PARAMS), None)
    encoding = encoding or next((p for p in params if p != resolution), None)
    resolution = resolution or next((p for p in params if p != encoding), None)
    metric, direction = _quality_metric(objectives, frame, options.metric)
    if metric not in frame.columns:
        frame[metric] = np.nan
    for column in (
        "infeasible",
        "estimated_peak_mib",
        "measured_peak_mib",
        "decode_seconds_per_image",
        "tokens_per_mask_p50",
        "tokens_per_mask_p95",
        "tokens_per_mask_max",
        "max_seq_len",
        "vocab_size",
    ):
        if column not in frame.columns:
            frame[column] = np.nan
    outcomes = frame[rec.OUTCOME] if rec.OUTCOME in frame.columns else pd.Series("", index=frame.index)
    frame["infeasible"] = (outcomes == rec.OVER_BUDGET) | frame["infeasible"].map(
        lambda v: bool(v) if isinstance(v, (bool, np.bool_)) else False
    )
    frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    roots = [*options.trial_roots, *extra_roots]
    trial_dirs = {
        int(n): _find_trial_dir(
            int(n),
            trials[int(n)].user_attrs.get(rec.CONFIG_PATH),
            roots,
            trials[int(n)].user_attrs.get(rec.TRIAL_DIR),
        )
        for n in frame["number"]
    }
    data = _Data(
        study, frame, trials, sweep, budgets, objectives, params, encoding, resolution, metric, direction,
        trial_dirs, None,
    )  # fmt: skip
    done = data.complete().dropna(subset=[metric])
    if len(done):
        pick = done[metric].idxmax() if direction == "maximize" else done[metric].idxmin()
        data.best = int(done.loc[pick, "number"])
    return data


def _status(data: _Data, row: pd.Series) -> tuple[str, str]:
    """(text, css class) of a trial's outcome."""
    t = data.trials[int(row["number"])]
    attrs = t.user_attrs
    state = t.state.name
    if bool(row.get("superseded")):
        return "died, retried", "fail"
    if state == "COMPLETE":
        return "complete", "complete"
    if state == "PRUNED":
        if rec.outcome(state, attrs) == rec.OVER_BUDGET:
            est, budget = attrs.get("estimated_peak_mib"), attrs.get("budget_mib") or max(data.budgets or [0])
            if est is not None and budget:
                return f"over budget: est. {est:.1f} > {budget:g} MiB, not trained", "infeasible"
            return "over budget, not trained", "infeasible"
        if "duplicate_of" in attrs:
            return f"duplicate of #{attrs['duplicate_of']}", "pruned"
        steps = sorted(t.intermediate_values)
        if steps:
            return f"pruned at validation {steps[-1]}", "pruned"
        return "pruned", "pruned"
    if state == "FAIL":
        if attrs.get("interrupted"):
            return "interrupted (Ctrl-C)", "fail"
        error = str(attrs.get("error") or "no error recorded (process died?)").splitlines()[0]
        return f"failed: {error[:90]}{'…' if len(error) > 90 else ''}", "fail"
    if state == "RUNNING":
        return "running", "running"
    return state.lower(), "running"


def _image_size(trial_dir: Path | None) -> int | None:
    if trial_dir is None or not (trial_dir / "config.yaml").is_file():
        return None
    import yaml

    try:
        config = yaml.safe_load((trial_dir / "config.yaml").read_text()) or {}
    except yaml.YAMLError:
        return None
    init = ((config.get("data") or {}).get("init_args")) or {}
    for key in ("image_size", "crop_size", "patch_size"):
        if isinstance(init.get(key), int):
            return int(init[key])
    canvas = (init.get("source_args") or {}).get("canvas")
    return int(canvas) if isinstance(canvas, int) else None


def _ceiling_metric(data: _Data) -> str | None:
    stage, _, key = data.metric.rpartition("/")
    name = f"{stage}/ceiling_{key}" if stage else f"ceiling_{key}"
    return name if name in data.frame.columns else None


def _per_class(data: _Data, number: int) -> pd.DataFrame:
    attrs = data.trials[number].user_attrs
    rows: dict[str, dict[str, float]] = {}
    for key, value in attrs.items():
        m = PER_CLASS.match(key)
        if m and m.group(2) != "mean" and _finite(value) is not None:
            rows.setdefault(m.group(2), {})[m.group(1)] = float(value)
    frame = pd.DataFrame.from_dict(rows, orient="index")
    if frame.empty:
        return frame
    frame = frame.reindex(columns=[c for c in ("precision", "recall", "dice", "iou") if c in frame.columns])
    return frame.loc[sorted(frame.index, key=_natural_key)]


def _metrics_csv(trial_dir: Path | None) -> Path | None:
    if trial_dir is None:
        return None
    found = sorted(trial_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _predictions_png(trial_dir: Path | None) -> Path | None:
    if trial_dir is None:
        return None
    # epoch_EEE_stepSSSSSS.png (named by global step since validations can run mid-epoch), or the older
    # epoch_EEE.png: the latest validation's grid
    pattern = re.compile(r"epoch_(\d+)(?:_step(\d+))?\.png")
    found = [
        (m, p) for p in trial_dir.rglob("val_predictions/epoch_*.png") if (m := pattern.fullmatch(p.name))
    ]
    if not found:
        return None
    latest = max(found, key=lambda mp: (int(mp[0][1]), int(mp[0][2] or -1), mp[1].stat().st_mtime))
    return latest[1]


def _column_name(metric: str) -> str:
    key = metric.rpartition("/")[2]
    if key.startswith("ceiling_"):
        return f"{_short_metric(key[len('ceiling_') :])} ceiling"
    return _short_metric(metric)


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")


# ============================================================= trial folders, logs and variants
#: Parameters read as "the seed": trials that differ only by them are one variant.
SEED_PARAMS = ("seed_everything", "seed")
#: The small files ``--copy-trials`` copies (besides the last ``val_predictions/epoch_*.png``).
TRIAL_FILES = ("metrics.csv", "config.yaml", "hparams.yaml")
DICE = "val/dice_mean"
ELAPSED = "val/elapsed_seconds"
DIAG = "val/diag/"


def _newest(trial_dir: Path, name: str) -> Path | None:
    """``trial_dir/name``, else the newest ``name`` below it (Lightning's ``logs/`` folder)."""
    if (trial_dir / name).is_file():
        return trial_dir / name
    found = sorted(trial_dir.rglob(name), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _copy_trials(data: _Data, out: Path) -> list[Path]:
    """Copy each trial's small artifacts to ``out/trials/trial_NNNN/`` and read them from there.

    Returns the folders written (a trial already read from its copy counts; a trial without a folder or
    files is skipped).
    """
    copied: list[Path] = []
    for number, src in sorted(data.trial_dirs.items()):
        if src is None:
            continue
        dest = out / "trials" / f"trial_{number:04d}"
        if dest.is_dir() and dest.resolve() == src.resolve():
            copied.append(dest)  # regenerated from the copies themselves
            continue
        files = {name: _newest(src, name) for name in TRIAL_FILES}
        files["metrics.csv"] = _metrics_csv(src)
        png = _predictions_png(src)
        if png is None and not any(files.values()):
            continue
        dest.mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            target = dest / name
            if path is not None:
                shutil.copyfile(path, target)
            elif target.is_file():
                target.unlink()  # stale: the trial no longer has it
        pred_dir = dest / "val_predictions"
        for old in pred_dir.glob("epoch_*.png") if pred_dir.is_dir() else []:
            if png is None or old.name != png.name:
                old.unlink()
        if png is not None:
            pred_dir.mkdir(exist_ok=True)
            shutil.copyfile(png, pred_dir / png.name)
        data.trial_dirs[number] = dest
        data.logs.pop(number, None)
        copied.append(dest)
    return copied


def _trial_links(data: _Data, out: Path) -> dict[int, str]:
    """``{trial: "trials/trial_NNNN/"}`` for the trial folders copied beside the report."""
    links = {}
    for number in data.trials:
        rel = f"trials/trial_{number:04d}/"
        if (out / rel).is_dir():
            links[number] = rel
    return links


def _trial_ref(data: _Data, number: int) -> str:
    """``#N``, linked to the trial's copied folder when there is one."""
    link = data.links.get(number)
    return f"[#{number}]({link})" if link else f"#{number}"


def _val_rows(log: pd.DataFrame) -> pd.DataFrame:
    """One row per validation (the steps where ``val/dice_mean`` was logged), ``val/*`` columns only;
    values logged at the same step in separate rows are merged."""
    if DICE not in log.columns:
        return pd.DataFrame(columns=["step", DICE])
    log = log.copy()
    log["step"] = pd.to_numeric(log["step"], errors="coerce") if "step" in log else np.arange(len(log))
    cols = [c for c in log.columns if str(c).startswith("val/")]
    for c in cols:
        log[c] = pd.to_numeric(log[c], errors="coerce")
    steps = log.loc[log[DICE].notna(), "step"].dropna().unique()
    rows = log[log["step"].isin(steps)]
    return rows.groupby("step", sort=True)[cols].last().reset_index()


def _trial_log(data: _Data, number: int) -> pd.DataFrame | str:
    """The trial's validation rows (see :func:`_val_rows`), or why there are none (a sentence)."""
    if number not in data.logs:
        csv = _metrics_csv(data.trial_dirs.get(number))
        if csv is None:
            data.logs[number] = "no `metrics.csv`" if data.trial_dirs.get(number) else "no trial folder"
        else:
            try:
                val = _val_rows(pd.read_csv(csv))
                data.logs[number] = val if len(val) else f"no `{DICE}` in {md_code(_display_path(csv))}"
            except (OSError, ValueError, pd.errors.ParserError) as err:
                data.logs[number] = f"{md_code(_display_path(csv))} unreadable ({type(err).__name__})"
    return data.logs[number]  # type: ignore[return-value]


def _class_path(data: _Data, number: int) -> str | None:
    """The model's ``class_path`` in the trial's ``config.yaml`` (None when unknown)."""
    trial_dir = data.trial_dirs.get(number)
    if trial_dir is None or not (trial_dir / "config.yaml").is_file():
        return None
    import yaml

    try:
        config = yaml.safe_load((trial_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    model = config.get("model") if isinstance(config, dict) else None
    path = model.get("class_path") if isinstance(model, dict) else None
    return str(path) if path else None


def _seed_params(data: _Data) -> list[str]:
    keys = data.sweep.get("params") or {}
    return [p for p in data.params if p in SEED_PARAMS or keys.get(p) == "seed_everything"]


@dataclass(eq=False)
class _Run:
    number: int
    seed: Any  # the seed parameter's value; None without one
    val: pd.DataFrame  # one row per validation (see _val_rows)
    state: str


@dataclass(eq=False)
class _Variant:
    label: str
    runs: list[_Run]
    class_path: str | None = None
    color: Any = None

    @property
    def numbers(self) -> list[int]:
        return [r.number for r in self.runs]

    def first(self) -> _Run:
        """The run of seed 0, else of the first seed."""
        return next((r for r in self.runs if str(r.seed) == "0"), self.runs[0])


def _choice_rank(data: _Data, param: str, value: Any) -> tuple[Any, ...]:
    for t in data.trials.values():
        dist = t.distributions.get(param)
        if dist is not None and hasattr(dist, "choices"):
            choices = [str(c) for c in dist.choices]
            if str(value) in choices:
                return (0, choices.index(str(value)))
            break
    number = _finite(value)
    return (1, number) if number is not None else (2, _natural_key(str(value)))


def _variants(data: _Data) -> tuple[list[_Variant], list[str]]:
    """The trials with a validation log grouped by their parameters without the seed (the variants, in
    the order of the search space's choices), and a note per trial left out."""
    import matplotlib

    seeds = _seed_params(data)
    others = [p for p in data.params if p not in seeds]
    superseded = set(data.frame.loc[data.frame["superseded"].astype(bool), "number"].astype(int))
    groups: dict[tuple[Any, ...], list[_Run]] = {}
    labels: dict[tuple[Any, ...], str] = {}
    skipped: dict[str, list[int]] = {}  # why -> trials
    for number in sorted(data.trials):
        t = data.trials[number]
        if number in superseded or number not in data.trial_dirs:
            continue
        val = _trial_log(data, number)
        if isinstance(val, str):
            if t.state.name in ("COMPLETE", "RUNNING") or data.trial_dirs.get(number) is not None:
                skipped.setdefault(val, []).append(number)
            continue
        key = tuple(_choice_rank(data, p, t.params.get(p)) for p in others)
        seed = next((t.params[p] for p in seeds if p in t.params), None)
        groups.setdefault(key, []).append(_Run(number, seed, val, t.state.name))
        labels[key] = ", ".join(f"{p}={t.params[p]}" for p in others if p in t.params) or "all trials"
    cmap = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"]
    variants = []
    for i, key in enumerate(sorted(groups)):
        runs = sorted(groups[key], key=lambda r: (_natural_key(str(r.seed)), r.number))
        paths = {_class_path(data, r.number) for r in runs} - {None}
        variant = _Variant(labels[key], runs, paths.pop() if len(paths) == 1 else None, cmap(i % cmap.N))
        variants.append(variant)
    notes = [f"{why}: {', '.join(f'#{n}' for n in numbers)}" for why, numbers in skipped.items()]
    return variants, notes


def _seed_styles(variants: Sequence[_Variant]) -> dict[str, tuple[Any, str]]:
    """One (line style, marker) per seed, shared by every variant."""
    styles: list[Any] = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    seeds = sorted({str(r.seed) for v in variants for r in v.runs}, key=_natural_key)
    return {s: (styles[i % len(styles)], _MARKERS[i % len(_MARKERS)]) for i, s in enumerate(seeds)}


def _seed_name(run: _Run) -> str:
    return f"seed {run.seed}" if run.seed is not None else f"#{run.number}"


def _mean(values: Iterable[Any]) -> float | None:
    kept = [v for v in (_finite(x) for x in values) if v is not None]
    return float(np.mean(kept)) if kept else None


def _last(val: pd.DataFrame, column: str) -> float | None:
    part = val[column].dropna() if column in val else pd.Series(dtype=float)
    return float(part.iloc[-1]) if len(part) else None


def _has_elapsed(run: _Run) -> bool:
    return ELAPSED in run.val and run.val[ELAPSED].notna().any()


# ------------------------------------------------------------------------------ token diagnostics
#: Short column headers of the token diagnostics (``val/diag/<key>``), in table order; ``tf_acc_*``
#: fields not listed (``tf_acc_eos``, ``tf_acc_ltac``, ...) follow the listed ones.
DIAG_COLUMNS = {
    "probe_dice_mean": "probe Dice",
    "tf_acc": "TF acc",
    "tf_acc_start": "TF acc start",
    "tf_acc_lac": "TF acc lac",
    "tf_acc_lac_class": "TF acc lac class",
    "tf_acc_lac_length": "TF acc lac length",
    "tf_dice_mean": "TF Dice",
    "tf_dice_agnostic": "TF Dice agn.",
    "exposure_gap": "exposure gap",
    "dice_classaware": "Dice class-aware",
    "dice_agnostic": "Dice agn.",
    "runs_missed": "runs missed",
    "runs_misplaced": "runs misplaced",
    "runs_spurious": "runs spurious",
    "obj_class_ok": "obj. class ok",
    "obj_err_first_run": "obj. err 1st run",
    "obj_err_drift": "obj. err drift",
}


def _diag_keys(columns: Iterable[str]) -> list[str]:
    keys = [c[len(DIAG) :] for c in columns if c.startswith(DIAG)]
    listed = list(DIAG_COLUMNS)

    def rank(key: str) -> tuple[int, Any]:
        if key in DIAG_COLUMNS:
            # unlisted tf_acc_* fields sit after the listed ones, before the Dice values
            return (0, listed.index(key) * 2)
        if key.startswith("tf_acc_"):
            return (0, listed.index("tf_acc_lac_length") * 2 + 1)
        return (1, _natural_key(key))

    return sorted(dict.fromkeys(keys), key=lambda k: (rank(k), k))


def _diag_header(key: str) -> str:
    if key in DIAG_COLUMNS:
        return DIAG_COLUMNS[key]
    if key.startswith("tf_acc_"):
        return "TF acc " + key[len("tf_acc_") :].replace("_", " ")
    return key.replace("_", " ")


def _last_diag(run: _Run) -> tuple[float | None, dict[str, float]]:
    """(step, ``{key: value}``) of the last validation row holding diagnostics."""
    cols = [c for c in run.val.columns if str(c).startswith(DIAG)]
    rows = run.val[run.val[cols].notna().any(axis=1)] if cols else run.val.iloc[0:0]
    if rows.empty:
        return None, {}
    row = rows.iloc[-1]
    return _finite(row["step"]), {c[len(DIAG) :]: float(row[c]) for c in cols if _finite(row[c]) is not None}


def _grid_progress(data: _Data) -> tuple[int, int]:
    total = st.grid_size(list(data.trials.values()))
    if not total:
        return 0, 0
    superseded = set(data.frame.loc[data.frame["superseded"].astype(bool), "number"].astype(int))
    done = {
        st.grid_id(t)
        for t in data.trials.values()
        if t.state.is_finished()
        and t.number not in superseded
        and "duplicate_of" not in t.user_attrs
        and not t.user_attrs.get("interrupted")
    }
    return total, len(done - {None})
