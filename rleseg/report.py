"""Study → tables and plots → Markdown and HTML: ``rleseg report --study STORAGE --out reports/NAME/``.

A report is built from three things only (the house rule: reports talk to the rest through the study):
the Optuna study (its trials, their user attributes and the ``sweep`` / ``budgets_mib`` study attributes
that :func:`rleseg.sweep.run_sweep` stores), :func:`rleseg.sweep.export_trials`, and the files each trial
wrote (``trial_NNNN/config.yaml``, the Lightning CSV log ``metrics.csv`` and the sample predictions
``val_predictions/epoch_NNN.png``). Nothing is retrained or re-evaluated.

**Trial folders.** A trial's folder is where its recorded ``config.yaml`` is (under ``runs/``, not
committed); when that folder is gone, ``trial_NNNN/`` or ``trials/trial_NNNN/`` beside the study file
(``ReportOptions.trial_roots``), or ``trials/trial_NNNN/`` in the report folder. With
``ReportOptions.copy_trials`` (``rleseg report --copy-trials``) each trial's small artifacts
(``metrics.csv``, ``config.yaml``, ``hparams.yaml`` and the last ``val_predictions/epoch_*.png``) are
copied to ``<out>/trials/trial_NNNN/``: committed beside the report and its ``study.db``, they let
``rleseg report --study <out>/study.db`` rebuild every section on another machine. The report links
those folders (relative paths) wherever it names a trial's files.

Sections (each degrades to a sentence, never an exception, when the study cannot fill it yet):

1. the study: sampler, objectives, budgets, trial states (partly finished or failed studies say so);
2. the ablation table (one row per trial: knobs, metrics, tokens per mask, vocabulary, memory, times,
   status: complete / pruned / over budget / failed / running);
3. tokens per mask per encoding vs mask resolution (per-trial p50, p95 and max, with ``max_seq_len``);
4. quality vs vocabulary size and vs tokens per mask;
5. a Pareto front per memory budget (quality vs memory, quality vs decode time; infeasible points hollow);
6. the learning curves of every trial (``val/dice_mean`` vs optimizer step and vs wall-clock seconds,
   ``val/elapsed_seconds``); trials that differ only by the seed (``seed_everything`` or ``seed``) form
   one *variant*: one colour, one line style per seed; a table per variant (final and best Dice, mean
   over seeds, and the difference to the dense baseline when exactly one variant is a ``DenseSegModule``);
7. token diagnostics (``val/diag/*`` of the last validation, mean over seeds per variant; class-aware vs
   class-agnostic token Dice and probe Dice vs step);
8. the best trial: per-class precision / recall / Dice, training curves, sample predictions;
9. optimisation history and parameter importances (where at least two complete trials vary a parameter);
10. failed trials with their errors.

``report.md`` links its figures in ``figures/`` beside it; ``report.html`` embeds them (base64), so it is
one file to share. ``trials.csv`` (the :func:`~rleseg.sweep.export_trials` table) is written too.

>>> pareto_front([10.0, 20.0, 30.0, 40.0], [0.5, 0.4, 0.8, 0.7])
[0, 2]
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ReportError",
    "ReportOptions",
    "ReportResult",
    "load_study",
    "pareto_front",
    "resolve_storage",
    "write_report",
]


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
        copy_trials: copy each trial's small artifacts to ``<out>/trials/trial_NNNN/`` (see the module
            docstring) and read them from there.
    """

    title: str | None = None
    notes: str | None = None
    command: str | None = None
    metric: str | None = None
    storage: str | None = None
    trial_roots: list[Path] = field(default_factory=list)
    copy_trials: bool = False


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


def _find_trial_dir(number: int, config_path: Any, roots: Sequence[Path]) -> Path | None:
    """The trial's folder: where its recorded config is, else ``trial_NNNN`` under one of ``roots`` (a
    study copied or moved with its trial folders keeps working)."""
    candidates: list[Path] = []
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
    frame["infeasible"] = frame["infeasible"].map(
        lambda v: bool(v) if isinstance(v, (bool, np.bool_)) else False
    )
    frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    roots = [*options.trial_roots, *extra_roots]
    trial_dirs = {
        int(n): _find_trial_dir(int(n), trials[int(n)].user_attrs.get("config_path"), roots)
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
        if attrs.get("infeasible"):
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


# =================================================================================== documents
@dataclass
class _Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass
class _Para:
    text: str  # inline Markdown
    kind: str = ""  # "" | "note" | "warn"


@dataclass
class _Code:
    text: str


@dataclass
class _Table:
    frame: pd.DataFrame
    classes: list[str] = field(default_factory=list)  # one CSS class per row
    numeric: set[str] = field(default_factory=set)


@dataclass
class _Figure:
    path: Path
    caption: str

    @property
    def alt(self) -> str:
        return self.path.stem.replace("_", " ")


@dataclass
class _Markdown:
    text: str  # a person's Markdown (the notes)


_Block = _Heading | _Para | _Code | _Table | _Figure | _Markdown


class _Doc:
    """The report as blocks, rendered twice (Markdown, HTML); figures are written as they are added."""

    def __init__(self, fig_dir: Path) -> None:
        self.blocks: list[_Block] = []
        self.sections: list[str] = []
        self.fig_dir = fig_dir
        self.figures: list[Path] = []

    def figure(self, result: tuple[Path | None, str]) -> None:
        """Add a ``(path, caption)`` figure, or the caption alone as a note when there is no figure."""
        path, caption = result
        if path is None:
            self.add(_Para(caption, "note"))
        else:
            self.figures.append(path)
            self.add(_Figure(path, caption))

    def section(self, text: str, anchor: str) -> None:
        self.sections.append(anchor)
        self.blocks.append(_Heading(2, text, anchor))

    def add(self, block: _Block) -> None:
        self.blocks.append(block)


# ---------------------------------------------------------------------------- Markdown output
def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(table: _Table) -> str:
    frame = table.frame
    cols = [str(c) for c in frame.columns]
    head = "| " + " | ".join(_md_cell(c) for c in cols) + " |"
    rule = "|" + "|".join("---:" if c in table.numeric else "---" for c in cols) + "|"
    rows = [
        "| " + " | ".join(_md_cell(v) for v in row) + " |"
        for row in frame.astype(str).itertuples(index=False)
    ]
    return "\n".join([head, rule, *rows])


def _to_markdown(doc: _Doc, title: str, out: Path) -> str:
    parts = []
    for block in doc.blocks:
        if isinstance(block, _Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, _Para):
            prefix = "> " if block.kind else ""
            parts.append(prefix + block.text)
        elif isinstance(block, _Code):
            parts.append(f"```\n{block.text}\n```")
        elif isinstance(block, _Table):
            parts.append(_md_table(block))
        elif isinstance(block, _Figure):
            rel = block.path.relative_to(out).as_posix()
            parts.append(f"![{block.alt}]({rel})\n\n*{block.caption}*")
        elif isinstance(block, _Markdown):
            parts.append(block.text.strip())
    return "\n\n".join(parts).rstrip() + "\n"


# -------------------------------------------------------------------------------- HTML output
_INLINE = re.compile(r"\*\*(.+?)\*\*|(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])|\[([^\]]+)\]\(([^)\s]+)\)")


def _inline_html(text: str) -> str:
    """Inline Markdown (code spans, bold, italic, links) to HTML; everything else escaped."""
    out = []
    for i, part in enumerate(re.split(r"(`[^`]*`)", text)):
        if i % 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue

        def sub(m: re.Match[str]) -> str:
            if m.group(1) is not None:
                return f"<strong>{m.group(1)}</strong>"
            if m.group(2) is not None:
                return f"<em>{m.group(2)}</em>"
            return f'<a href="{m.group(4)}">{m.group(3)}</a>'

        out.append(_INLINE.sub(sub, html.escape(part, quote=False)))
    return "".join(out)


def _markdown_html(text: str) -> str:
    """A small Markdown subset (headings, paragraphs, lists, fenced code, quotes, pipe tables) to HTML,
    enough for hand-written report notes without a Markdown dependency."""
    lines = text.strip("\n").splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
        elif stripped.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append(f"<pre><code>{html.escape(chr(10).join(lines[i + 1 : j]))}</code></pre>")
            i = j + 1
        elif m := re.match(r"^(#{1,6})\s+(.*)$", stripped):
            level = min(len(m.group(1)) + 0, 6)
            out.append(f"<h{level}>{_inline_html(m.group(2))}</h{level}>")
            i += 1
        elif stripped.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip().strip("|"))]
                if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            head, *body = rows or [[]]
            th = "".join(f"<th>{_inline_html(c)}</th>" for c in head)
            trs = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in body)
            out.append(
                f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table></div>'
            )
        elif re.match(r"^([-*+]|\d+[.)])\s+", stripped):
            ordered = bool(re.match(r"^\d", stripped))
            items: list[str] = []
            while i < len(lines) and lines[i].strip():
                s = lines[i].strip()
                m = re.match(r"^([-*+]|\d+[.)])\s+(.*)$", s)
                if m:
                    items.append(m.group(2))
                elif items:
                    items[-1] += " " + s
                i += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{_inline_html(x)}</li>" for x in items) + f"</{tag}>")
        elif stripped.startswith(">"):
            quote = []
            while i < len(lines) and lines[i].strip().startswith(">"):
                quote.append(lines[i].strip()[1:].strip())
                i += 1
            out.append(f"<blockquote>{_inline_html(' '.join(quote))}</blockquote>")
        else:
            para = []
            while (
                i < len(lines)
                and lines[i].strip()
                and not re.match(r"^(#{1,6}\s|```|\||[-*+]\s|>)", lines[i].strip())
            ):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline_html(' '.join(para))}</p>")
    return "\n".join(out)


_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;color:#1d232a;
 max-width:1400px;margin:0 auto;padding:24px 32px 64px;line-height:1.5;background:#fff}
h1{font-size:1.9em;border-bottom:2px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.4em;margin-top:2em;border-bottom:1px solid #d0d7de;padding-bottom:.25em}
h3{font-size:1.12em;margin-top:1.5em}
code{background:#f2f4f7;border-radius:4px;padding:.1em .35em;font-size:.92em}
pre{background:#f2f4f7;border-radius:6px;padding:10px 14px;overflow-x:auto}
pre code{background:none;padding:0}
blockquote,.note{border-left:4px solid #8fb3de;background:#f3f7fc;margin:1em 0;padding:.5em 1em}
.warn{border-left:4px solid #e0a526;background:#fdf7e7;margin:1em 0;padding:.5em 1em}
.scroll{overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:.86em;white-space:nowrap}
th,td{border:1px solid #d8dee4;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafbfc}
tr.complete td:first-child{border-left:4px solid #2e9d57}
tr.best{background:#e7f6ec!important;font-weight:600}
tr.infeasible{color:#6a737d}
tr.infeasible td:first-child{border-left:4px solid #9aa3ab}
tr.pruned td:first-child{border-left:4px solid #d9a21b}
tr.fail{background:#fcefee!important}
tr.fail td:first-child{border-left:4px solid #cf3a33}
tr.running td:first-child{border-left:4px solid #3b82c4}
figure{margin:1.2em 0 2em;text-align:center}
figure img{max-width:100%;height:auto;border:1px solid #e3e7eb;border-radius:4px}
figcaption{font-size:.9em;color:#4a545e;margin-top:.4em;text-align:left}
nav ul{columns:2;font-size:.95em}
"""


def _html_table(table: _Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.frame.columns)
    body = []
    cols = [str(c) for c in table.frame.columns]
    for k, row in enumerate(table.frame.astype(str).itertuples(index=False)):
        css = table.classes[k] if k < len(table.classes) else ""
        cells = "".join(
            f'<td class="num">{html.escape(v)}</td>' if c in table.numeric else f"<td>{_inline_html(v)}</td>"
            for c, v in zip(cols, row, strict=True)
        )
        body.append(f'<tr class="{css}">{cells}</tr>')
    rows = "".join(body)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _to_html(doc: _Doc, title: str) -> str:
    parts = []
    toc = [(b.anchor, b.text) for b in doc.blocks if isinstance(b, _Heading) and b.level == 2 and b.anchor]
    for block in doc.blocks:
        if isinstance(block, _Heading):
            anchor = f' id="{block.anchor}"' if block.anchor else ""
            parts.append(f"<h{block.level}{anchor}>{_inline_html(block.text)}</h{block.level}>")
        elif isinstance(block, _Para):
            css = f' class="{block.kind}"' if block.kind else ""
            parts.append(f"<p{css}>{_inline_html(block.text)}</p>")
        elif isinstance(block, _Code):
            parts.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, _Table):
            parts.append(_html_table(block))
        elif isinstance(block, _Figure):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}">'
                f"<figcaption>{_inline_html(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, _Markdown):
            parts.append(_markdown_html(block.text))
    nav = ""
    if toc:
        items = "".join(f'<li><a href="#{a}">{_inline_html(t)}</a></li>' for a, t in toc)
        nav = f"<nav><strong>Contents</strong><ul>{items}</ul></nav>"
    body = "\n".join(parts)
    # The table of contents goes right after the regeneration command (the first code block).
    marker = "</code></pre>"
    if nav and marker in body:
        head, _, tail = body.partition(marker)
        body = head + marker + "\n" + nav + tail
    else:
        body = nav + body
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


# ==================================================================================== figures
#: File names of every figure a report can hold (stale ones are removed before writing).
FIGURE_PREFIXES = (
    "sequence_lengths",
    "quality_vs_vocab_and_tokens",
    "pareto_",
    "best_per_class",
    "best_training_curves",
    "best_predictions",
    "learning_curves",
    "token_diagnostics",
    "optimization_history",
    "param_importances",
)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 8.5,
            "xtick.labelsize": 9,
            "ytick.labelsize": 9,
            "text.parse_math": False,  # names come from studies: "$...$" prints as written
        }
    )
    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


class _Style:
    """One colour per encoding and one marker per resolution, shared by every figure."""

    def __init__(self, data: _Data) -> None:
        import matplotlib

        self.data = data
        enc = data.encoding
        # Encodings in the sweep file's order (the search space's choices), not alphabetically.
        encs = [str(v) for v in self._values(enc)] if enc else []
        cmap = matplotlib.colormaps["tab10"]
        self.colors = {e: cmap(i % 10) for i, e in enumerate(encs)}
        res = data.resolution
        self.res_values = sorted(self._values(res), key=lambda v: _natural_key(str(v))) if res else []
        self.markers = {str(v): _MARKERS[i % len(_MARKERS)] for i, v in enumerate(self.res_values)}

    def _values(self, param: str) -> list[Any]:
        """The values of ``param`` the trials hold, in the order of the search space's choices."""
        present = list(dict.fromkeys(self.data.frame.get(f"param_{param}", pd.Series(dtype=object)).dropna()))
        choices: list[Any] = []
        for t in self.data.trials.values():
            dist = t.distributions.get(param)
            if dist is not None and hasattr(dist, "choices"):
                choices = list(dist.choices)
                break
        rank = {str(c): i for i, c in enumerate(choices)}
        return sorted(present, key=lambda v: (rank.get(str(v), len(rank)), _natural_key(str(v))))

    def encoding(self, row: pd.Series) -> str:
        enc = self.data.encoding
        return str(row.get(f"param_{enc}")) if enc else "trial"

    def color(self, row: pd.Series) -> Any:
        return self.colors.get(self.encoding(row), "#1f77b4")

    def marker(self, row: pd.Series) -> str:
        res = self.data.resolution
        return self.markers.get(str(row.get(f"param_{res}")), "o") if res else "o"

    def legend(self, ax: Any, extra: Iterable[Any] = (), loc: str = "best", title: bool = True) -> None:
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], marker="o", ls="", color=c, markersize=7, label=e) for e, c in self.colors.items()
        ]
        if self.data.resolution and len(self.res_values) > 1:
            handles += [
                Line2D(
                    [],
                    [],
                    marker=self.markers[str(v)],
                    ls="",
                    color="#555",
                    mfc="none",
                    label=f"{self.data.resolution}={v}",
                )
                for v in self.res_values
            ]
        handles += list(extra)
        if handles:
            ax.legend(
                handles=handles,
                loc=loc,
                framealpha=0.9,
                title=self.data.encoding if title and self.colors else None,
            )


def _resolution_tick(data: _Data, value: Any) -> str:
    """``s = 4`` plus the token mask size when the trials' configs agree on the image size."""
    name = data.resolution
    label = f"{'s' if name == 'subsample' else name} = {value}"
    if name != "subsample":
        return label
    numbers = data.frame.loc[data.frame[f"param_{name}"].astype(str) == str(value), "number"]
    sizes = {_image_size(data.trial_dirs.get(int(n))) for n in numbers} - {None}
    if len(sizes) != 1:  # unknown, or patch sizes that differ between the trials of this column
        return label
    try:
        side = int(sizes.pop()) // int(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return label
    return f"{label}\n({side}×{side} token mask)"


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


def _fig_sequence_lengths(data: _Data, style: _Style, path: Path) -> tuple[Path | None, str]:
    plt = _plt()
    from matplotlib.lines import Line2D

    f = data.frame[~data.frame["superseded"].astype(bool)]
    f = f[f["tokens_per_mask_p50"].notna() | f["max_seq_len"].notna()]
    if f.empty:
        return None, "No trial recorded its tokens per mask or `max_seq_len` yet."
    res, enc = data.resolution, data.encoding
    groups = style.res_values if res else [None]
    encs = list(style.colors) if enc else [None]
    fig, ax = plt.subplots(figsize=(max(7.5, 1.9 * len(groups) * max(1, len(encs)) ** 0.5 + 3), 5.2))
    width = 0.8 / max(len(encs), 1)
    seen_lengths: list[float] = []
    for gi, g in enumerate(groups):
        for ei, e in enumerate(encs):
            sel = f
            if res:
                sel = sel[sel[f"param_{res}"].astype(str) == str(g)]
            if enc:
                sel = sel[sel[f"param_{enc}"].astype(str) == str(e)]
            if sel.empty:
                continue
            # Trials sharing encoding and resolution (other knobs vary) sit side by side in the slot.
            n = len(sel)
            for k, (_, row) in enumerate(sel.iterrows()):
                x0 = gi + (ei - (len(encs) - 1) / 2) * width
                x = x0 + ((k - (n - 1) / 2) * width / max(n, 1) * 0.8 if n > 1 else 0.0)
                color = style.color(row) if enc else "#1f77b4"
                p50, p95, pmax = (
                    _finite(row.get(c))
                    for c in ("tokens_per_mask_p50", "tokens_per_mask_p95", "tokens_per_mask_max")
                )
                if p50 is not None:
                    lo, hi = p50, p95 if p95 is not None else p50
                    ax.vlines(x, lo, hi, color=color, lw=max(3.0, 30 * width / max(n, 1)), alpha=0.55)
                    if pmax is not None:
                        ax.vlines(x, hi, pmax, color=color, lw=1.3)
                        ax.plot(x, pmax, marker="_", color=color, ms=10, mew=1.6)
                    ax.plot(x, p50, marker="o", color=color, ms=6, mec="white", mew=0.8)
                    seen_lengths += [v for v in (p50, p95, pmax) if v is not None]
                msl = _finite(row.get("max_seq_len"))
                if msl is not None:
                    half = 0.45 * width / max(n, 1) + 0.03
                    ax.hlines(msl, x - half, x + half, color="#c0392b", lw=1.6, linestyles="--")
                    seen_lengths.append(msl)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([_resolution_tick(data, g) for g in groups] if res else ["all trials"])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    positive = [v for v in seen_lengths if v > 0]
    if positive and max(positive) / min(positive) > 30:
        _plain_log(ax.yaxis)  # s = 2 vs s = 8 differ 16x in length: a linear axis hides the short ones
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(
        "mask resolution: subsampling factor s (token mask = image size / s)"
        if res == "subsample"
        else (f"mask resolution ({res})" if res in RESOLUTION_PARAMS else (res or ""))
    )
    ax.set_ylabel("tokens per mask (content tokens, validation masks)")
    if enc in ENCODING_PARAMS and (res is None or res in RESOLUTION_PARAMS):
        ax.set_title("Sequence length per encoding vs mask resolution")
    else:
        ax.set_title(f"Sequence length by {' and '.join(k for k in (enc, res) if k) or 'trial'}")
    glyphs = [
        Line2D([], [], marker="o", ls="", color="#555", label="median (p50)"),
        Line2D([], [], lw=6, color="#555", alpha=0.55, label="p50 – p95"),
        Line2D([], [], lw=1.3, color="#555", marker="_", ms=10, label="p95 – max"),
        Line2D([], [], lw=1.6, ls="--", color="#c0392b", label="max_seq_len of the trial"),
    ]
    handles = [Line2D([], [], lw=6, color=c, alpha=0.7, label=e) for e, c in style.colors.items()] + glyphs
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9, title=enc)
    ax.grid(axis="x", visible=False)
    caption = (
        "Ground-truth tokens per validation mask for each trial (the encoding's own length, not what the "
        "model generated): dot = median, bar = p50 to p95, whisker = maximum. The red dashes mark each "
        "trial's `max_seq_len` (sequences are truncated above it)."
    )
    untrained = int((f["tokens_per_mask_p50"].isna()).sum())
    if untrained:
        caption += (
            f" {untrained} trial(s) were not trained (over budget or not finished): only their `max_seq_len`."
        )
    return _save(fig, path), caption


def _plain_log(axis: Any) -> None:
    """A log axis labelled 20, 50, 100, 200 ... rather than 2×10¹ (readers compare lengths, not powers)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if axis is axis.axes.xaxis:
        axis.axes.set_xscale("log")
    else:
        axis.axes.set_yscale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _fig_quality_vs_size(data: _Data, style: _Style, path: Path) -> tuple[Path | None, str]:
    plt = _plt()
    from matplotlib.lines import Line2D

    done = data.complete().dropna(subset=[data.metric])
    if done.empty:
        return None, "No complete trial yet: no quality to plot against vocabulary size or tokens per mask."
    ceiling = _ceiling_metric(data)
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8), sharey=True)
    for _, row in done.iterrows():
        color, marker = style.color(row), style.marker(row)
        y = float(row[data.metric])
        cy = _finite(row.get(ceiling)) if ceiling else None
        vocab = _finite(row.get("vocab_size"))
        if vocab is not None:
            axes[0].plot(vocab, y, marker=marker, color=color, ms=8, ls="", mec="white", mew=0.6)
            if cy is not None:
                axes[0].plot(vocab, cy, marker=marker, color=color, ms=7, ls="", mfc="none")
                axes[0].vlines(vocab, y, cy, color=color, lw=0.8, ls=":")
        p50, p95 = _finite(row.get("tokens_per_mask_p50")), _finite(row.get("tokens_per_mask_p95"))
        if p50 is not None:
            if p95 is not None and p95 > p50:
                axes[1].hlines(y, p50, p95, color=color, lw=1.2, alpha=0.7)
                axes[1].plot(p95, y, marker="|", color=color, ms=9)
            axes[1].plot(p50, y, marker=marker, color=color, ms=8, ls="", mec="white", mew=0.6)
            if cy is not None:
                axes[1].plot(p50, cy, marker=marker, color=color, ms=7, ls="", mfc="none")
                axes[1].vlines(p50, y, cy, color=color, lw=0.8, ls=":")
    for ax in axes:
        xs = [line for line in ax.get_lines()]
        if xs:
            data_x = np.concatenate([np.asarray(line.get_xdata(), dtype=float) for line in xs])
            data_x = data_x[np.isfinite(data_x) & (data_x > 0)]
            if len(data_x) and data_x.max() / data_x.min() > 8:
                _plain_log(ax.xaxis)
    axes[0].set_xlabel("vocabulary size (tokens)")
    axes[1].set_xlabel("tokens per mask (median; bar to p95)")
    axes[0].set_ylabel(metric_label(data.metric))
    axes[0].set_title(f"{_short_metric(data.metric)} vs vocabulary size")
    axes[1].set_title(f"{_short_metric(data.metric)} vs tokens per mask")
    extra = []
    if ceiling is not None and done[ceiling].notna().any():
        extra = [
            Line2D([], [], marker="o", ls="", color="#555", label="trained model"),
            Line2D([], [], marker="o", ls="", color="#555", mfc="none", label="token-resolution ceiling"),
        ]
    style.legend(axes[1], extra, loc="upper left")
    axes[1].legend_.set_bbox_to_anchor((1.01, 1.0))
    caption = (
        f"{metric_label(data.metric)} of every complete trial against its vocabulary size and its tokens per "
        "mask; colour = encoding"
        + (f", marker = {data.resolution}" if data.resolution else "")
        + (
            ". Hollow markers (dotted link): the same metric for the ground truth decoded at token "
            "resolution, the best any model could score with that encoding and resolution."
            if extra
            else "."
        )
    )
    return _save(fig, path), caption


def _ceiling_metric(data: _Data) -> str | None:
    stage, _, key = data.metric.rpartition("/")
    name = f"{stage}/ceiling_{key}" if stage else f"ceiling_{key}"
    return name if name in data.frame.columns else None


def _fig_pareto(data: _Data, style: _Style, budget: float | None, path: Path) -> tuple[Path | None, str]:
    plt = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    f = data.frame[~data.frame["superseded"].astype(bool)]
    done = f[(f["state"] == "COMPLETE") & f[data.metric].notna()]
    untrained = f[f["infeasible"].astype(bool)]
    if done.empty and untrained.empty:
        return None, "No trial has both a quality and a memory figure yet."

    def fits(row: pd.Series) -> bool:
        if budget is None:
            return True
        fit = _json_list(row.get("budgets_fit"))
        if fit:
            return any(abs(float(b) - budget) < 1e-9 for b in fit)
        est = _finite(row.get("estimated_peak_mib"))
        return est is not None and est <= budget

    sign = 1.0 if data.direction == "maximize" else -1.0
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.9), sharey=True)
    panels = (
        ("estimated_peak_mib", 1.0, "estimated peak training memory (MiB)", "memory"),
        (
            "decode_seconds_per_image",
            1000.0,
            "decode time per image (ms, generation + decoding)",
            "decode time",
        ),
    )
    fronts: list[list[int]] = []
    for ax, (column, scale, xlabel, what) in zip(axes, panels, strict=True):
        feasible = [row for _, row in done.iterrows() if fits(row)]
        over = [row for _, row in done.iterrows() if not fits(row)]
        xs = [(_finite(r.get(column)) or math.nan) * scale for r in feasible]
        ys = [float(r[data.metric]) for r in feasible]
        front = pareto_front(xs, [sign * y for y in ys])
        fronts.append([int(feasible[i]["number"]) for i in front])
        for r in over:
            x = _finite(r.get(column))
            if x is not None:
                ax.plot(
                    x * scale,
                    float(r[data.metric]),
                    marker=style.marker(r),
                    ls="",
                    ms=8,
                    mfc="none",
                    color="#9aa3ab",
                )
        for r, x, y in zip(feasible, xs, ys, strict=True):
            if math.isfinite(x):
                ax.plot(
                    x,
                    y,
                    marker=style.marker(r),
                    ls="",
                    ms=8,
                    color=style.color(r),
                    mec="white",
                    mew=0.6,
                    zorder=3,
                )
        if front:
            fx, fy = [xs[i] for i in front], [ys[i] for i in front]
            ax.step(fx, fy, where="post", color="#222", lw=1.2, alpha=0.75, zorder=2)
            ax.plot(fx, fy, ls="", marker="o", ms=13, mfc="none", mec="#222", mew=1.2, zorder=4)
            for i in front:
                ax.annotate(
                    f"#{int(feasible[i]['number'])}",
                    (xs[i], ys[i]),
                    textcoords="offset points",
                    xytext=(7, 5),
                    fontsize=8,
                )
        if what == "memory":
            trans = blended_transform_factory(ax.transData, ax.transAxes)
            xs_untrained = []
            for _, r in untrained.iterrows():
                x = _finite(r.get("estimated_peak_mib"))
                if x is not None:
                    xs_untrained.append(x)
                    ax.plot(x, 0.03, transform=trans, marker="x", color="#9aa3ab", ms=8, mew=1.5)
                    ax.annotate(
                        f"#{int(r['number'])}",
                        (x, 0.03),
                        xycoords=trans,
                        textcoords="offset points",
                        xytext=(0, 7),
                        ha="center",
                        fontsize=7.5,
                        color="#6a737d",
                    )
            # Points drawn in axes coordinates do not widen the autoscaled x range: widen it by hand.
            wanted = xs_untrained + ([budget] if budget is not None else [])
            if wanted:
                lo0, hi0 = ax.get_xlim()
                lo, hi = min(lo0, *wanted), max(hi0, *wanted)
                pad = 0.05 * (hi - lo or 1.0)
                ax.set_xlim(lo - pad if lo < lo0 else lo0, hi + pad if hi > hi0 else hi0)
            if budget is not None:
                ax.axvline(budget, color="#c0392b", ls="--", lw=1.3)
                ax.text(
                    budget,
                    0.97,
                    f" budget {budget:g} MiB",
                    transform=trans,
                    color="#c0392b",
                    va="top",
                    fontsize=8.5,
                )
        ax.set_xlabel(xlabel)
        ax.set_title(f"{_short_metric(data.metric)} vs {what}")
    axes[0].set_ylabel(metric_label(data.metric))
    extra = [Line2D([], [], marker="o", ls="-", color="#222", mfc="none", ms=11, label="Pareto front")]
    if any(not fits(r) for _, r in done.iterrows()):
        extra.append(
            Line2D([], [], marker="o", ls="", color="#9aa3ab", mfc="none", label="trained, over this budget")
        )
    if len(untrained):
        extra.append(
            Line2D(
                [], [], marker="x", ls="", color="#9aa3ab", mew=1.5, label="over every budget: not trained"
            )
        )
    style.legend(axes[1], extra, loc="upper left")
    axes[1].legend_.set_bbox_to_anchor((1.01, 1.0))
    where = f"under {budget:g} MiB" if budget is not None else "(no memory budget)"
    fig.suptitle(f"Pareto front {where}", fontsize=12, y=1.01)
    caption = (
        f"Quality vs cost {where}. Filled: trials whose estimated peak fits; hollow grey: trained but over "
        "this budget; × on the axis: over every budget, never trained (no quality). The black line joins the "
        "Pareto front (no other fitting trial is better on both axes): "
        f"{', '.join(f'#{n}' for n in fronts[0]) or 'none'} for memory, "
        f"{', '.join(f'#{n}' for n in fronts[1]) or 'none'} for decode time."
    )
    return _save(fig, path), caption


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


def _fig_per_class(data: _Data, number: int, scores: pd.DataFrame, path: Path) -> Path:
    plt = _plt()
    cols = [c for c in ("precision", "recall", "dice") if c in scores.columns]
    n = len(scores)
    fig, ax = plt.subplots(figsize=(max(6.5, 1.5 * n + 2.5), 4.4))
    width = 0.8 / max(len(cols), 1)
    colors = {"precision": "#4c78a8", "recall": "#f58518", "dice": "#54a24b"}
    x = np.arange(n)
    for k, col in enumerate(cols):
        vals = scores[col].to_numpy(dtype=float)
        bars = ax.bar(
            x + (k - (len(cols) - 1) / 2) * width, vals, width, label=METRIC_NAMES[col], color=colors[col]
        )
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=7.5, padding=2)
    ax.set_xticks(x)
    ax.set_xticklabels(
        [str(c).replace("_", " ") for c in scores.index],
        rotation=20 if n > 4 else 0,
        ha="right" if n > 4 else "center",
    )
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score (0–1, validation set)")
    ax.set_xlabel("class")
    ax.set_title(f"Per-class scores of the best trial #{number} ({data.label(number)})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", visible=False)
    return _save(fig, path)


def _metrics_csv(trial_dir: Path | None) -> Path | None:
    if trial_dir is None:
        return None
    found = sorted(trial_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _fig_training_curves(data: _Data, number: int, csv: Path, path: Path) -> tuple[Path | None, str]:
    plt = _plt()
    try:
        log = pd.read_csv(csv)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        return None, f"The training log {csv} could not be read ({err})."
    if log.empty:
        return None, f"The training log {csv} is empty."
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4))
    notes = []
    x_step = "step" if "step" in log else None
    for key, style_kw in (
        ("train/loss", {"lw": 1.2, "alpha": 0.9}),
        ("val/loss", {"marker": "o", "lw": 1.6}),
    ):
        if key in log and x_step:
            part = log[[x_step, key]].dropna()
            if len(part):
                axes[0].plot(part[x_step], part[key], label=key, **style_kw)
    if "train/loss" not in log or log["train/loss"].dropna().empty:
        notes.append("train/loss was not logged (fewer steps than `log_every_n_steps`)")
    axes[0].set_xlabel("optimizer step")
    axes[0].set_ylabel("cross-entropy loss (nats)")
    axes[0].set_title("Loss")
    if axes[0].get_lines():
        axes[0].legend()
    metrics = [m for m in (data.metric, "val/dice_mean", "val/precision_mean", "val/recall_mean") if m in log]
    metrics = list(dict.fromkeys(metrics))
    ceiling = _ceiling_metric(data)
    x_epoch = "epoch" if "epoch" in log else x_step
    for m in metrics:
        part = log[[x_epoch, m]].dropna()
        if len(part):
            axes[1].plot(part[x_epoch], part[m], marker="o", label=metric_label(m))
    if ceiling and ceiling in log:
        part = log[[x_epoch, ceiling]].dropna()
        if len(part):
            axes[1].plot(part[x_epoch], part[ceiling], ls="--", color="#777", label=metric_label(ceiling))
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("score (0–1, validation set)")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title("Validation metrics")
    if axes[1].get_lines():
        axes[1].legend(loc="best")
        epochs = log[x_epoch].dropna() if x_epoch else pd.Series(dtype=float)
        if len(epochs) and epochs.max() < 12:
            axes[1].set_xticks(sorted({int(e) for e in epochs}))
    fig.suptitle(f"Training curves of the best trial #{number} ({data.label(number)})", fontsize=12, y=1.02)
    caption = f"From the trial's Lightning CSV log `{_display_path(csv)}`."
    if notes:
        caption += " " + "; ".join(notes).capitalize() + "."
    return _save(fig, path), caption


def _predictions_png(trial_dir: Path | None) -> Path | None:
    if trial_dir is None:
        return None
    found = [
        p for p in trial_dir.rglob("val_predictions/epoch_*.png") if re.fullmatch(r"epoch_\d+\.png", p.name)
    ]
    if not found:
        return None
    return max(found, key=lambda p: (int(re.findall(r"\d+", p.name)[0]), p.stat().st_mtime))


def _fig_history(data: _Data, style: _Style, path: Path) -> tuple[Path | None, str]:
    plt = _plt()
    f = data.frame[~data.frame["superseded"].astype(bool)].sort_values("number")
    done = f[(f["state"] == "COMPLETE") & f[data.metric].notna()]
    if done.empty:
        return None, "No complete trial yet: no optimisation history."
    others = [c for c, d in data.objectives if c != data.metric and c in f.columns and c != "value"]
    panels = [data.metric, *others[:2]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels) + 1.5, 4.3), squeeze=False)
    directions = dict(data.objectives)
    for ax, metric in zip(axes[0], panels, strict=True):
        d = done[done[metric].notna()] if metric in done else done.iloc[0:0]
        for _, row in d.iterrows():
            ax.plot(
                row["number"],
                float(row[metric]),
                marker=style.marker(row),
                color=style.color(row),
                ls="",
                ms=8,
                mec="white",
                mew=0.6,
                zorder=3,
            )
        direction = directions.get(metric, data.direction if metric == data.metric else "maximize")
        if len(d):
            values = d[metric].astype(float)
            best = values.cummax() if direction == "maximize" else values.cummin()
            ax.step(d["number"], best, where="post", color="#222", lw=1.2, label=f"best so far ({direction})")
        from matplotlib.transforms import blended_transform_factory

        trans = blended_transform_factory(ax.transData, ax.transAxes)
        for _, row in f[f["state"] != "COMPLETE"].iterrows():
            state = str(row["state"])
            marker, color = {"FAIL": ("x", "#cf3a33"), "PRUNED": ("v", "#9aa3ab")}.get(
                state, ("|", "#3b82c4")
            )
            ax.plot(
                row["number"], 0.03, marker=marker, color=color, ms=8, mew=1.5, transform=trans, clip_on=False
            )
        ax.set_xlabel("trial number")
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"{_short_metric(metric)} by trial")
        ax.xaxis.get_major_locator().set_params(integer=True)
    from matplotlib.lines import Line2D

    extra = [
        Line2D([], [], color="#222", lw=1.2, label="best so far"),
    ]
    states = set(f["state"])
    if "PRUNED" in states:
        extra.append(Line2D([], [], marker="v", ls="", color="#9aa3ab", label="pruned / over budget"))
    if "FAIL" in states:
        extra.append(Line2D([], [], marker="x", ls="", color="#cf3a33", mew=1.5, label="failed"))
    if states & {"RUNNING", "WAITING"}:
        extra.append(Line2D([], [], marker="|", ls="", color="#3b82c4", label="running / queued"))
    style.legend(axes[0][-1], extra, loc="upper left")
    axes[0][-1].legend_.set_bbox_to_anchor((1.01, 1.0))
    caption = (
        f"{metric_label(data.metric)} of each complete trial in the order the sampler "
        f"({data.sweep.get('sampler', 'unknown')}) ran them; the line is the best so far. Pruned, "
        "over-budget and failed trials are marked on the axis."
    )
    return _save(fig, path), caption


def _importances(data: _Data) -> tuple[dict[str, float] | None, str]:
    """Parameter importances for the quality metric, or None and the reason there are none."""
    import optuna

    done = data.complete().dropna(subset=[data.metric])
    if len(done) < 2:
        return None, f"Parameter importances need at least two complete trials; this study has {len(done)}."
    varying = [p for p in data.params if done[f"param_{p}"].astype(str).nunique() > 1]
    if not varying:
        return (
            None,
            "Parameter importances need a parameter that varies across the complete trials; none does.",
        )
    metric = data.metric
    # Importance of the quality metric (a user attribute), whatever the study's objectives are. PED-ANOVA
    # (Optuna's default since 4.x, no scikit-learn) ranks by the study's first direction: orient the target.
    lower_better = data.study.directions[0].name == "MINIMIZE"
    sign = 1.0 if (data.direction == "minimize") == lower_better else -1.0
    values = {int(r["number"]): sign * float(r[metric]) for _, r in done.iterrows()}
    evaluator_class = getattr(optuna.importance, "PedAnovaImportanceEvaluator", None)
    evaluator = evaluator_class() if evaluator_class else optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optuna.importance.get_param_importances(
                data.study,
                evaluator=evaluator,
                params=varying,
                target=lambda t: values.get(t.number, math.nan),
            )
    except Exception as err:  # noqa: BLE001 - optuna refuses some spaces; the report says why instead
        return (
            None,
            f"Optuna could not compute parameter importances ({type(err).__name__}: {str(err).rstrip('.')}).",
        )
    result = {k: float(v) for k, v in result.items() if math.isfinite(float(v))}
    if not result:
        return None, "Optuna returned no finite parameter importance (every complete trial scores the same?)."
    return result, ""


def _fig_importances(data: _Data, importances: dict[str, float], path: Path) -> Path:
    plt = _plt()
    names = list(importances)[::-1]
    vals = [importances[n] for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(names) + 1.6))
    bars = ax.barh(names, vals, color="#4c78a8")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], padding=3, fontsize=8.5)
    ax.set_xlim(0, max(1.0, max(vals) * 1.15))
    ax.set_xlabel(f"importance for {_short_metric(data.metric)} (normalised, sums to 1)")
    ax.set_ylabel("parameter")
    ax.set_title("Parameter importances")
    ax.grid(axis="y", visible=False)
    return _save(fig, path)


# ===================================================================================== tables
ABLATION_LEGEND = (
    "*ceiling*: the same score for the ground truth decoded at token resolution; *tokens*: ground-truth "
    "tokens per validation mask; *trunc %*: validation masks longer than `max_seq_len`; *peak MiB*: "
    "estimated / measured peak training memory; *fits*: the budgets the estimate fits; *decode*: generation "
    "time per validation image. Every recorded attribute: [trials.csv](trials.csv)."
)


def _ablation_table(data: _Data) -> tuple[_Table, dict[str, str]]:
    """The table and the columns every trial that has them shares (``{column: value}``)."""
    f = data.frame.sort_values("number")
    rows, classes = [], []
    metrics = [data.metric] + [
        m for m, _ in data.objectives if m != data.metric and m in f.columns and m != "value"
    ]
    metrics += [
        m
        for m in (_ceiling_metric(data), "val/precision_mean", "val/recall_mean", "val/pq")
        if m and m in f.columns and m not in metrics
    ]
    numeric = {"#"}
    for _, r in f.iterrows():
        status, css = _status(data, r)
        number = int(r["number"])
        row: dict[str, Any] = {"#": number}
        for p in data.params:
            value = r.get(f"param_{p}")
            row[p] = (
                f"{value:.3g}" if isinstance(value, float) and not float(value).is_integer() else _fmt(value)
            )
        row["status"] = status + (" — **best**" if number == data.best else "")
        for m in metrics:
            name = _short_metric(m) if m == data.metric else _column_name(m)
            row[name] = _fmt(_finite(r.get(m)), 3)
            numeric.add(name)
        tokens = [_fmt(_finite(r.get(f"tokens_per_mask_{q}")), 1, whole=True) for q in ("p50", "p95", "max")]
        fits = ", ".join(f"{float(b):g}" for b in _json_list(r.get("budgets_fit")))
        if not fits and data.budgets and _finite(r.get("estimated_peak_mib")) is not None:
            fits = "none"
        peaks = [_fmt(_finite(r.get(k)), 1) for k in ("estimated_peak_mib", "measured_peak_mib")]
        cells = {
            "validity": _fmt(_finite(r.get("validity_rate")), 3),
            "tokens p50 / p95 / max": " / ".join(tokens) if any(tokens) else "",
            "trunc %": _fmt(_scaled(r.get("truncated_fraction"), 100), 1),
            "vocab": _fmt(_finite(r.get("vocab_size")), 0, whole=True),
            "max_seq_len": _fmt(_finite(r.get("max_seq_len")), 0, whole=True),
            "params (M)": _fmt(_scaled(r.get("num_parameters"), 1e-6), 2),
            "peak MiB est. / meas.": " / ".join(p or "–" for p in peaks) if any(peaks) else "",
            "fits (MiB)": fits,
            "train s": _fmt(_finite(r.get("train_seconds")), 1),
            "decode ms/img": _fmt(_scaled(r.get("decode_seconds_per_image"), 1000), 1),
        }
        row.update(cells)
        numeric.update(k for k in cells if k != "fits (MiB)")
        rows.append(row)
        classes.append(css + (" best" if number == data.best else ""))
    table = pd.DataFrame(rows)
    if table.empty:
        return _Table(table, classes, numeric), {}
    # Drop columns no trial filled (a study without budgets has no "fits", ...), and move columns every
    # trial shares (same parameter count, no truncation, ...) to one sentence: the table must fit a page.
    fixed = {"#", "status", *data.params, _short_metric(data.metric)}
    keep, constants = [], {}
    for c in table.columns:
        values = set(table[c].astype(str)) - {""}
        if c not in fixed and not values:
            continue
        if (
            c not in fixed
            and len(values) == 1
            and len(table) >= 3
            and (table[c].astype(str) != "").sum() >= 3
        ):
            constants[c] = values.pop()
            continue
        keep.append(c)
    return _Table(table[keep], classes, numeric), constants


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
                data.logs[number] = val if len(val) else f"no `{DICE}` in `{_display_path(csv)}`"
            except (OSError, ValueError, pd.errors.ParserError) as err:
                data.logs[number] = f"`{_display_path(csv)}` unreadable ({type(err).__name__})"
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


# -------------------------------------------------------------------------------- learning curves
def _last(val: pd.DataFrame, column: str) -> float | None:
    part = val[column].dropna() if column in val else pd.Series(dtype=float)
    return float(part.iloc[-1]) if len(part) else None


def _has_elapsed(run: _Run) -> bool:
    return ELAPSED in run.val and run.val[ELAPSED].notna().any()


def _fig_learning_curves(variants: Sequence[_Variant], path: Path) -> tuple[Path | None, str]:
    plt = _plt()
    from matplotlib.lines import Line2D

    runs = [r for v in variants for r in v.runs]
    timed = [r for r in runs if _has_elapsed(r)]
    styles = _seed_styles(variants)
    panels = 2 if timed else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels + 3.0, 4.6), squeeze=False)
    axes = axes[0]
    for v in variants:
        for r in v.runs:
            ls, marker = styles[str(r.seed)]
            kw = {"color": v.color, "ls": ls, "marker": marker, "ms": 4, "lw": 1.5, "alpha": 0.9}
            part = r.val[["step", DICE]].dropna()
            axes[0].plot(part["step"], part[DICE], **kw)
            if panels == 2 and _has_elapsed(r):
                part = r.val[[ELAPSED, DICE]].dropna()
                axes[1].plot(part[ELAPSED], part[DICE], **kw)
    axes[0].set_xlabel("optimizer step")
    axes[0].set_title("Validation Dice vs training step")
    if panels == 2:
        axes[1].set_xlabel("wall-clock seconds since the start of fit")
        axes[1].set_title("Validation Dice vs wall-clock time")
    for ax in axes:
        ax.set_ylabel(metric_label(DICE))
        ax.set_ylim(bottom=0)
    handles = [Line2D([], [], color=v.color, lw=2.2, label=v.label) for v in variants]
    if len(styles) > 1:
        handles += [
            Line2D([], [], color="#555", ls=ls, marker=m, ms=4, label=f"seed {s}")
            for s, (ls, m) in styles.items()
            if s != "None"
        ]
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    fig.suptitle("Learning curves of every trial", fontsize=12, y=1.02)
    caption = (
        f"`{DICE}` at each validation of every trial against the optimizer step"
        + (f" (left) and the wall-clock seconds since the start of fit, `{ELAPSED}` (right)" if timed else "")
        + ". One colour per variant (the trial's parameters without the seed), one line style and marker "
        "per seed."
    )
    if not timed:
        caption += f" No trial logged `{ELAPSED}`: only the step panel is drawn."
    elif len(timed) < len(runs):
        missing = ", ".join(f"#{r.number}" for r in runs if not _has_elapsed(r))
        caption += f" Trials {missing} logged no `{ELAPSED}`: they are missing from the time panel."
    return _save(fig, path), caption


def _learning_table(data: _Data, variants: Sequence[_Variant]) -> _Table:
    dense = [v for v in variants if v.class_path and "DenseSegModule" in v.class_path]
    reference = dense[0] if len(dense) == 1 else None
    reference_final = _mean(_last(r.val, DICE) for r in reference.runs) if reference else None
    timed = any(_has_elapsed(r) for v in variants for r in v.runs)
    rows = []
    for v in variants:
        finals = [_last(r.val, DICE) for r in v.runs]
        final = _mean(finals)
        per_seed = (
            ", ".join(f"{_seed_name(r)}: {_fmt(f, 3)}" for r, f in zip(v.runs, finals, strict=True))
            if len(v.runs) > 1
            else _fmt(finals[0], 3)
        )
        row = {
            "variant": v.label,
            "trials": ", ".join(_trial_ref(data, n) for n in v.numbers),
            "seeds": str(len(v.runs)),
            "final Dice per seed": per_seed,
            "final Dice (mean)": _fmt(final, 3),
            "best Dice (mean)": _fmt(_mean(r.val[DICE].max() for r in v.runs), 3),
            "steps": _fmt(_mean(r.val["step"].max() for r in v.runs), 0, whole=True),
        }
        if timed:
            row["wall-clock s (mean)"] = _fmt(_mean(_last(r.val, ELAPSED) for r in v.runs), 1)
        if reference is not None:
            if v is reference:
                row["vs dense"] = "reference"
            elif final is not None and reference_final is not None:
                row["vs dense"] = f"{final - reference_final:+.3f}"
            else:
                row["vs dense"] = ""
        rows.append(row)
    frame = pd.DataFrame(rows)
    numeric = set(frame.columns) - {"variant", "trials", "final Dice per seed"}
    return _Table(frame, numeric=numeric)


def _section_learning_curves(
    doc: _Doc, data: _Data, variants: Sequence[_Variant], skipped: Sequence[str]
) -> None:
    doc.section("Learning curves of every trial", "learning-curves")
    if not variants:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        text = f"No trial's validation log with `{DICE}` was found: no learning curves{why}."
        if any(s.startswith("no trial folder") for s in skipped):
            text += (
                " Trial folders are looked up where the sweep wrote them, then in `trial_NNNN/` or "
                "`trials/trial_NNNN/` beside the study file; `rleseg report --copy-trials` copies their "
                "logs beside the report."
            )
        doc.add(_Para(text, "note"))
        return
    doc.figure(_fig_learning_curves(variants, doc.fig_dir / "learning_curves.png"))
    runs = [r for v in variants for r in v.runs]
    timed = any(_has_elapsed(r) for r in runs)
    text = (
        "One row per variant (trials that differ only by the seed): the last validation's "
        f"`{DICE}` per seed and its mean, the best `{DICE}` of each trial averaged over the seeds, "
        "the optimizer steps"
        + (f" and the wall-clock seconds (`{ELAPSED}`)" if timed else "")
        + " at the last validation (mean over the seeds)."
    )
    dense = [v for v in variants if v.class_path and "DenseSegModule" in v.class_path]
    if len(dense) == 1:
        text += (
            f" *vs dense*: the mean final Dice minus that of the dense baseline ({dense[0].label}, "
            "model `DenseSegModule`)."
        )
    doc.add(_Para(text))
    doc.add(_learning_table(data, variants))
    uneven = [
        f"{v.label} ({', '.join(_fmt(r.val['step'].max(), 0, whole=True) for r in v.runs)})"
        for v in variants
        if len({float(r.val["step"].max()) for r in v.runs}) > 1
    ]
    if uneven:
        doc.add(
            _Para(
                "The seeds of these variants ended at different steps, so their mean compares unequal "
                f"training: {'; '.join(uneven)}.",
                "warn",
            )
        )
    unfinished = [f"#{r.number} ({r.state.lower()})" for r in runs if r.state != "COMPLETE"]
    if unfinished:
        doc.add(
            _Para(f"Not complete: {', '.join(unfinished)}; their last validation counts as final.", "note")
        )
    if skipped:
        doc.add(_Para(f"Left out (no validation log): {'; '.join(skipped)}.", "note"))


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
DIAG_LEGEND = (
    "Token diagnostics of the last validation (`val/diag/*`, mean over the seeds). *probe Dice*: "
    "label-resolution Dice of the linear class head trained (training only) on the visual memory — what "
    "the visual features alone give. *TF acc …*: teacher-forced accuracy of the argmax on the "
    "target tokens of that grammar field (the decoder reads the ground-truth prefix; *TF acc* all fields, "
    "*start* run starts, *lac* the packed class+length tokens, *lac class* / *lac length* their class and "
    "length parts alone). *TF Dice*: token-resolution Dice of the teacher-forced argmax sequence. "
    "*exposure gap* = TF Dice − Dice class-aware: what the model loses by reading its own output "
    "instead of the ground truth. *Dice class-aware* / *Dice agn.*: token-resolution Dice of the freely "
    "generated masks with and without the classes (agnostic: foreground vs background). *runs missed* / "
    "*runs misplaced*: fractions of the target row-runs absent from the prediction / present at the "
    "wrong place or length; *runs spurious*: fraction of predicted runs with no target run. *obj. class "
    "ok*: fraction of objects whose runs all carry the right class; *obj. err 1st run*: objects whose "
    "first class error is at their first run; *obj. err drift*: objects whose first class error comes "
    "later (the class drifts along the sequence)."
)


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


def _diag_table(data: _Data, variants: Sequence[_Variant]) -> _Table | None:
    per_variant = []
    for v in variants:
        last = [(r, *_last_diag(r)) for r in v.runs]
        last = [(r, step, values) for r, step, values in last if values]
        if last:
            per_variant.append((v, last))
    if not per_variant:
        return None
    keys = _diag_keys(f"{DIAG}{k}" for _, last in per_variant for _, _, values in last for k in values)
    rows = []
    for v, last in per_variant:
        row = {
            "variant": v.label,
            "trials": ", ".join(_trial_ref(data, r.number) for r, _, _ in last),
            "seeds": str(len(last)),
            "step": _fmt(_mean(step for _, step, _ in last), 0, whole=True),
        }
        for k in keys:
            row[_diag_header(k)] = _fmt(_mean(values.get(k) for _, _, values in last), 3)
        rows.append(row)
    frame = pd.DataFrame(rows)
    return _Table(frame, numeric=set(frame.columns) - {"variant", "trials"})


#: (diagnostic, legend label, line style) of the token diagnostics figure
DIAG_CURVES = (
    (f"{DIAG}dice_classaware", "token Dice, class-aware (generated)", "-"),
    (f"{DIAG}dice_agnostic", "token Dice, class-agnostic (generated)", "--"),
    (f"{DIAG}probe_dice_mean", "probe Dice (linear head on the visual memory)", ":"),
)


def _fig_token_diagnostics(variants: Sequence[_Variant], path: Path) -> tuple[Path | None, str]:
    plt = _plt()
    from matplotlib.lines import Line2D

    shown = []
    for v in variants:
        run = v.first()
        if any(k in run.val and run.val[k].notna().any() for k, _, _ in DIAG_CURVES):
            shown.append((v, run))
    if not shown:
        return None, (
            "No trial logged `val/diag/dice_classaware`, `val/diag/dice_agnostic` or "
            "`val/diag/probe_dice_mean`: no diagnostics figure."
        )
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.6 * rows), squeeze=False, sharey=True)
    colors = ("#4c78a8", "#f58518", "#54a24b")
    for ax, (v, run) in zip(axes.ravel(), shown, strict=False):
        for (key, _, ls), color in zip(DIAG_CURVES, colors, strict=True):
            if key in run.val:
                part = run.val[["step", key]].dropna()
                ax.plot(part["step"], part[key], ls=ls, color=color, marker="o", ms=3.5, lw=1.6)
        ax.set_title(f"{v.label} ({_seed_name(run)}, #{run.number})", fontsize=9.5)
        ax.set_xlabel("optimizer step")
        ax.set_ylim(0, 1.02)
    for ax in axes[:, 0]:
        ax.set_ylabel("Dice (validation)")
    for ax in axes.ravel()[len(shown) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], ls=ls, color=c, marker="o", ms=3.5, label=label)
        for (_, label, ls), c in zip(DIAG_CURVES, colors, strict=True)
    ]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    drawn = {id(v) for v, _ in shown}
    left = [v.label for v in variants if id(v) not in drawn]
    caption = (
        "Token Dice of the freely generated masks, class-aware and class-agnostic (token resolution), and "
        "the probe Dice (label resolution) at each validation, one panel per variant (seed 0, else its "
        "first seed). Where the probe is high and the generated Dice low, the features know the classes "
        "and the decoder loses them."
    )
    if left:
        caption += f" Variants without these diagnostics: {'; '.join(left)}."
    return _save(fig, path), caption


def _section_token_diagnostics(doc: _Doc, data: _Data, variants: Sequence[_Variant]) -> None:
    doc.section("Token diagnostics", "token-diagnostics")
    with_diag = [
        r.number for v in variants for r in v.runs if any(str(c).startswith(DIAG) for c in r.val.columns)
    ]
    if not with_diag:
        doc.add(
            _Para(
                "No trial's `metrics.csv` holds token diagnostics (`val/diag/*`, logged by token models "
                "with `diagnostics: true`): no diagnostics table.",
                "note",
            )
        )
        return
    table = _diag_table(data, variants)
    if table is None:
        doc.add(_Para("The `val/diag/*` columns of the trials' logs hold no value yet.", "note"))
    else:
        doc.add(_Para(DIAG_LEGEND))
        doc.add(table)
    without = [r.number for v in variants for r in v.runs if r.number not in with_diag]
    if without:
        doc.add(
            _Para(
                "Trials without diagnostics (the dense baseline, or diagnostics off): "
                + ", ".join(f"#{n}" for n in without)
                + ".",
                "note",
            )
        )
    doc.figure(_fig_token_diagnostics(variants, doc.fig_dir / "token_diagnostics.png"))


# ===================================================================================== report
def _summary(doc: _Doc, data: _Data, options: ReportOptions) -> None:
    study, sweep, f = data.study, data.sweep, data.frame
    doc.section("Study", "study")
    lines = [
        f"* **study:** `{study.study_name}`" + (f" in `{options.storage}`" if options.storage else ""),
    ]
    if sweep.get("sweep_file"):
        lines.append(
            f"* **sweep file:** `{_display_path(Path(sweep['sweep_file']))}` "
            f"(scale `{sweep.get('scale', '?')}`)"
        )
    if sweep.get("base"):
        lines.append(f"* **base experiment:** `{_display_path(Path(sweep['base']))}`")
    if sweep.get("params"):
        knobs = ", ".join(f"`{k}` (`{v}`)" for k, v in sweep["params"].items())
        lines.append(f"* **searched:** {knobs}")
    objectives = ", ".join(f"`{m}` ({d})" for m, d in data.objectives)
    lines.append(f"* **objectives:** {objectives}; quality shown in the plots: `{data.metric}`")
    lines.append(
        f"* **sampler / pruner:** {sweep.get('sampler', 'unknown')} / {sweep.get('pruner', 'unknown')}"
    )
    lines.append(
        "* **memory budgets:** "
        + (
            ", ".join(f"{b:g} MiB" for b in data.budgets) + " (estimated peak training memory)"
            if data.budgets
            else "none"
        )
    )
    active = f[~f["superseded"].astype(bool)] if len(f) else f
    states = active["state"].value_counts().to_dict() if len(active) else {}
    infeasible = int(active["infeasible"].astype(bool).sum()) if len(active) else 0
    pruned = int(states.get("PRUNED", 0))
    parts = [f"{states.get('COMPLETE', 0)} complete"]
    if pruned:
        parts.append(
            f"{pruned} pruned ({infeasible} over every budget, not trained)"
            if infeasible
            else f"{pruned} pruned"
        )
    for state, word in (("FAIL", "failed"), ("RUNNING", "running"), ("WAITING", "queued")):
        if states.get(state):
            parts.append(f"{states[state]} {word}")
    superseded = int(f["superseded"].astype(bool).sum()) if len(f) else 0
    if superseded:
        parts.append(f"{superseded} died and were retried")
    lines.append(f"* **trials:** {len(f)} — " + ", ".join(parts))
    grid_total, grid_done = _grid_progress(data)
    if grid_total:
        lines.append(f"* **grid:** {grid_done} of {grid_total} points finished")
    doc.add(_Markdown("\n".join(lines)))
    unfinished = states.get("RUNNING", 0) + states.get("WAITING", 0)
    if unfinished or (grid_total and grid_done < grid_total):
        doc.add(
            _Para(
                f"This study is **not finished** ({unfinished} trial(s) running or queued"
                + (f", {grid_done}/{grid_total} grid points done" if grid_total else "")
                + "): the report shows the trials finished so far; regenerate it when the sweep is done.",
                "warn",
            )
        )
    if states.get("FAIL"):
        doc.add(
            _Para(
                f"**{states['FAIL']} trial(s) failed**; their errors are in [Failed trials](#failed-trials).",
                "warn",
            )
        )
    if data.best is not None:
        value = data.value(data.best, data.metric)
        doc.add(
            _Para(
                f"**Best trial:** #{data.best} ({data.label(data.best)}): "
                f"{metric_label(data.metric)} = {float(value):.4f}.",
                "note",
            )
        )
    else:
        doc.add(_Para("No trial has completed yet, so there is no best trial.", "warn"))
    if len(data.study.directions) > 1 and data.best is not None:
        # Optuna's own Pareto set over the study's objectives (the plots below use quality vs cost).
        arrows = ", ".join(f"`{m}` {'↑' if d == 'maximize' else '↓'}" for m, d in data.objectives)
        front = sorted(t.number for t in data.study.best_trials)
        listed = ", ".join(f"#{n} ({data.label(n)})" for n in front) or "none yet"
        doc.add(_Para(f"**Pareto-optimal trials for the study's objectives** ({arrows}): {listed}.", "note"))


def _grid_progress(data: _Data) -> tuple[int, int]:
    spaces = [
        t.system_attrs.get("search_space") for t in data.trials.values() if t.system_attrs.get("search_space")
    ]
    if not spaces:
        return 0, 0
    total = math.prod(len(v) for v in spaces[0].values())
    superseded = set(data.frame.loc[data.frame["superseded"].astype(bool), "number"].astype(int))
    done = {
        t.system_attrs.get("grid_id")
        for t in data.trials.values()
        if t.state.is_finished()
        and t.number not in superseded
        and "duplicate_of" not in t.user_attrs
        and not t.user_attrs.get("interrupted")
    }
    return total, len(done - {None})


def _budget_table(data: _Data) -> _Table | None:
    if not data.budgets:
        return None
    done = data.complete().dropna(subset=[data.metric])
    if done.empty:
        return None
    rows = []
    for b in sorted(data.budgets):
        fit = (
            done[done["budgets_fit"].map(lambda v, b=b: any(abs(float(x) - b) < 1e-9 for x in _json_list(v)))]
            if "budgets_fit" in done
            else done.iloc[0:0]
        )
        if fit.empty:
            rows.append(
                {"budget (MiB)": f"{b:g}", "best trial": "no complete trial fits", "fitting trials": "0"}
            )
            continue
        pick = fit[data.metric].idxmax() if data.direction == "maximize" else fit[data.metric].idxmin()
        r = fit.loc[pick]
        n = int(r["number"])
        rows.append(
            {
                "budget (MiB)": f"{b:g}",
                "best trial": f"#{n}",
                _short_metric(data.metric): _fmt(float(r[data.metric]), 4),
                "configuration": data.label(n),
                "est. MiB": _fmt(_finite(r.get("estimated_peak_mib")), 1),
                "decode ms/img": _fmt(_scaled(r.get("decode_seconds_per_image"), 1000), 1),
                "fitting trials": str(len(fit)),
            }
        )
    columns = ["budget (MiB)", "best trial", _short_metric(data.metric), "configuration", "est. MiB"]
    frame = pd.DataFrame(rows).reindex(columns=[*columns, "decode ms/img", "fitting trials"]).fillna("")
    return _Table(
        frame,
        numeric={"budget (MiB)", _short_metric(data.metric), "est. MiB", "decode ms/img", "fitting trials"},
    )


def _seq_table(data: _Data) -> _Table | None:
    f = data.frame[~data.frame["superseded"].astype(bool) & data.frame["tokens_per_mask_p50"].notna()]
    keys = [k for k in (data.encoding, data.resolution) if k]
    if f.empty or not keys:
        return None
    f = f.assign(truncated_fraction=pd.to_numeric(f.get("truncated_fraction", np.nan), errors="coerce"))
    agg = (
        f.groupby([f"param_{k}" for k in keys])
        .agg(
            p50=("tokens_per_mask_p50", "median"),
            p95=("tokens_per_mask_p95", "median"),
            max=("tokens_per_mask_max", "max"),
            max_seq_len=("max_seq_len", "max"),
            vocab=("vocab_size", "median"),
            truncated=("truncated_fraction", "max"),
            trials=("number", "count"),
        )
        .reset_index()
        .rename(columns={f"param_{k}": k for k in keys})
    )
    agg = agg.sort_values(keys[::-1], key=lambda s: s.map(lambda v: _natural_key(str(v))))
    out = pd.DataFrame({k: agg[k].astype(str) for k in keys})
    for name, column in (("tokens p50", "p50"), ("tokens p95", "p95"), ("tokens max", "max")):
        out[name] = agg[column].map(lambda v: _fmt(_finite(v), 1, whole=True))
    out["max_seq_len"] = agg["max_seq_len"].map(lambda v: _fmt(_finite(v), 0, whole=True))
    out["truncated %"] = agg["truncated"].map(lambda v: _fmt(_scaled(v, 100), 1))
    out["vocab"] = agg["vocab"].map(lambda v: _fmt(_finite(v), 0, whole=True))
    out["trials"] = agg["trials"].astype(str)
    return _Table(out, numeric=set(out.columns) - set(keys))


def _clean_figures(fig_dir: Path) -> None:
    if fig_dir.is_dir():
        for p in fig_dir.glob("*.png"):
            if p.name.startswith(FIGURE_PREFIXES):
                p.unlink()


def _section_best(doc: _Doc, data: _Data) -> None:
    doc.section("The best trial", "best")
    if data.best is None:
        doc.add(_Para("No complete trial yet.", "note"))
        return
    n = data.best
    trial_dir = data.trial_dirs.get(n)
    if n in data.links:
        where = f"; its files are in [{data.links[n]}]({data.links[n]})"
    elif trial_dir:
        where = f"; its files are in `{_display_path(trial_dir)}`"
    else:
        where = "; its trial folder was not found"
    if trial_dir and (trial_dir / "config.yaml").is_file():
        where += f", and `rleseg fit --config {_display_path(trial_dir / 'config.yaml')}` reproduces it"
    doc.add(_Para(f"Trial #{n} ({data.label(n)}), best by `{data.metric}` ({data.direction}){where}."))

    doc.add(_Heading(3, "Per-class precision, recall and Dice"))
    scores = _per_class(data, n)
    if scores.empty:
        doc.add(_Para("The trial recorded no per-class metrics (`val/dice_<class>`, ...).", "note"))
    else:
        path = _fig_per_class(data, n, scores, doc.fig_dir / "best_per_class.png")
        doc.figure(
            (
                path,
                f"Per-class scores of trial #{n} on the validation set (SPEC §8: each class averaged "
                "over the images where it is in the ground truth or the prediction).",
            )
        )
        shown = scores.copy()
        shown.columns = [METRIC_NAMES.get(c, c) for c in shown.columns]
        shown = shown.map(lambda v: _fmt(v, 3)).reset_index(names="class")
        doc.add(_Table(shown, numeric=set(shown.columns) - {"class"}))

    doc.add(_Heading(3, "Training curves"))
    csv = _metrics_csv(trial_dir)
    if csv is None:
        doc.add(_Para("No `metrics.csv` found in the trial's folder: no training curves.", "note"))
    else:
        doc.figure(_fig_training_curves(data, n, csv, doc.fig_dir / "best_training_curves.png"))

    doc.add(_Heading(3, "Sample predictions"))
    png = _predictions_png(trial_dir)
    if png is None:
        doc.add(
            _Para("No `val_predictions/epoch_*.png` in the trial's folder: no sample predictions.", "note")
        )
        return
    target = doc.fig_dir / "best_predictions.png"
    shutil.copyfile(png, target)
    doc.figure(
        (
            target,
            f"Validation samples of trial #{n} after its last epoch ({png.stem.replace('_', ' ')}): "
            "image | ground truth | prediction, classes as colours.",
        )
    )


def _section_history(doc: _Doc, data: _Data, style: _Style) -> None:
    import optuna

    doc.section("Optimisation history and parameter importances", "history")
    doc.figure(_fig_history(data, style, doc.fig_dir / "optimization_history.png"))
    importances, why = _importances(data)
    if importances is None:
        doc.add(_Para(why, "note"))
        return
    evaluator = "PED-ANOVA" if hasattr(optuna.importance, "PedAnovaImportanceEvaluator") else "fANOVA"
    path = _fig_importances(data, importances, doc.fig_dir / "param_importances.png")
    doc.figure(
        (
            path,
            f"How much each parameter matters for {_short_metric(data.metric)} over the complete trials "
            f"(Optuna's {evaluator}). With few trials this is a rough indication only.",
        )
    )


def _section_failed(doc: _Doc, data: _Data) -> None:
    failed = data.frame[data.frame["state"] == "FAIL"] if len(data.frame) else data.frame
    if not len(failed):
        return
    doc.section("Failed trials", "failed-trials")
    rows = []
    for _, r in failed.iterrows():
        attrs = data.trials[int(r["number"])].user_attrs
        error = str(attrs.get("error") or "no error recorded (the process died; its heartbeat stopped)")
        log = attrs.get("error_log") or attrs.get("log_path") or ""
        rows.append(
            {
                "#": int(r["number"]),
                "configuration": data.label(int(r["number"])),
                "error": error.splitlines()[0][:300],
                "retried": "yes" if bool(r.get("superseded")) else "no",
                "log": f"`{_display_path(Path(log))}`" if log else "",
            }
        )
    doc.add(_Table(pd.DataFrame(rows), classes=["fail"] * len(rows), numeric={"#"}))


def write_report(study: Any, out: str | Path, options: ReportOptions | None = None) -> ReportResult:
    """Write ``report.md``, ``report.html``, ``trials.csv`` and ``figures/*.png`` for ``study`` into ``out``.

    Args:
        study: an ``optuna.Study`` (typically from :func:`load_study`), finished or not.
        out: the report folder (created).
        options: title, notes, the regenerating command, ... (see :class:`ReportOptions`).

    Returns:
        The paths written and the section anchors the report holds.

    >>> study = load_study("runs/sweeps/encodings/cpu/study.db")  # doctest: +SKIP
    >>> write_report(study, "reports/encodings", ReportOptions(title="Encodings")).markdown  # doctest: +SKIP
    PosixPath('reports/encodings/report.md')
    """
    from rleseg.sweep import export_trials

    options = options or ReportOptions()
    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    _clean_figures(fig_dir)
    data = _gather(study, options, extra_roots=[out])
    copied = _copy_trials(data, out) if options.copy_trials else []
    data.links = _trial_links(data, out)
    style = _Style(data)
    title = options.title or f"Sweep report: {study.study_name}"
    doc = _Doc(fig_dir)

    doc.add(_Heading(1, title))
    command = options.command or f"rleseg report --study STORAGE --name {study.study_name} --out {out}"
    doc.add(_Para("Generated by `rleseg report` from the Optuna study; regenerate it with:"))
    doc.add(_Code(command))
    _summary(doc, data, options)

    if options.notes and options.notes.strip():
        notes = options.notes.strip()
        if notes.startswith("#"):
            doc.sections.append("notes")  # the notes bring their own heading
        else:
            doc.section("Notes", "notes")
        doc.add(_Markdown(notes))

    doc.section("Ablation table", "ablation")
    if data.frame.empty:
        doc.add(_Para("The study has no trials yet.", "note"))
    else:
        doc.add(
            _Para(
                f"One row per trial. **{_short_metric(data.metric)}** is `{data.metric}`; {ABLATION_LEGEND}"
            )
        )
        table, constants = _ablation_table(data)
        doc.add(table)
        if constants:
            shared = "; ".join(f"*{k}* {v}" for k, v in constants.items())
            doc.add(_Para(f"The same for every trial that has a value (left out of the table): {shared}."))

    doc.section("Sequence length per encoding and resolution", "sequence-length")
    doc.figure(_fig_sequence_lengths(data, style, fig_dir / "sequence_lengths.png"))
    seq = _seq_table(data)
    if seq is not None:
        doc.add(
            _Para("Per encoding and resolution (median over trials of p50 and p95; the largest maximum):")
        )
        doc.add(seq)

    doc.section("Quality vs vocabulary size and tokens per mask", "quality-vs-size")
    doc.figure(_fig_quality_vs_size(data, style, fig_dir / "quality_vs_vocab_and_tokens.png"))

    doc.section("Pareto fronts under the memory budgets", "pareto")
    budgets: list[float | None] = list(sorted(data.budgets)) or [None]
    for b in budgets:
        name = f"pareto_{f'{b:g}'.replace('.', 'p')}mib.png" if b is not None else "pareto.png"
        doc.add(_Heading(3, f"Budget {b:g} MiB" if b is not None else "No memory budget"))
        doc.figure(_fig_pareto(data, style, b, fig_dir / name))
    budget_table = _budget_table(data)
    if budget_table is not None:
        doc.add(_Heading(3, "Best trial under each budget"))
        doc.add(budget_table)

    variants, skipped = _variants(data)
    _section_learning_curves(doc, data, variants, skipped)
    _section_token_diagnostics(doc, data, variants)
    _section_best(doc, data)
    _section_history(doc, data, style)
    _section_failed(doc, data)

    csv_path = out / "trials.csv"
    export_trials(study, csv_path)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(_to_markdown(doc, title, out))
    html_path.write_text(_to_html(doc, title))
    return ReportResult(md_path, html_path, csv_path, doc.figures, doc.sections, copied)
