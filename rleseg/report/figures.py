from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rleseg.report.document import md_code, md_text
from rleseg.report.study import (
    _MARKERS,
    DIAG,
    DICE,
    ELAPSED,
    ENCODING_PARAMS,
    METRIC_NAMES,
    RESOLUTION_PARAMS,
    _ceiling_metric,
    _Data,
    _display_path,
    _finite,
    _has_elapsed,
    _image_size,
    _natural_key,
    _seed_name,
    _seed_styles,
    _short_metric,
    _Variant,
    metric_label,
    pareto_front,
)
from rleseg.sweep import record as rec

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


def _fig_sequence_lengths(
    data: _Data, style: _Style, path: Path, trials: pd.DataFrame | None = None
) -> tuple[Path | None, str]:
    plt = _plt()
    from matplotlib.lines import Line2D

    f = data.frame[~data.frame["superseded"].astype(bool)] if trials is None else trials
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
        f"{md_text(metric_label(data.metric))} of every complete trial against its vocabulary size and its "
        "tokens per "
        "mask; colour = encoding"
        + (f", marker = {md_text(data.resolution)}" if data.resolution else "")
        + (
            ". Hollow markers (dotted link): the same metric for the ground truth decoded at token "
            "resolution, the best any model could score with that encoding and resolution."
            if extra
            else "."
        )
    )
    return _save(fig, path), caption


def same_place_labels(points: list[tuple[int, float]]) -> list[tuple[float, str]]:
    """Trial numbers at (nearly) the same x as one label each: ``[(x, "#11, #17"), ...]``, ordered by x."""
    groups: dict[float, list[int]] = {}
    for number, x in points:
        groups.setdefault(round(float(x), 1), []).append(number)
    return [(x, ", ".join(f"#{n}" for n in sorted(ns))) for x, ns in sorted(groups.items())]


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
        return rec.fits_budget(row.to_dict(), budget)

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
            placed = [
                (int(r["number"]), _finite(r.get("estimated_peak_mib"))) for _, r in untrained.iterrows()
            ]
            # Seeds of one point (repeats:) share its estimate: one marker, one label naming them all.
            for x, label in same_place_labels([(n, x) for n, x in placed if x is not None]):
                xs_untrained.append(x)
                ax.plot(x, 0.03, transform=trans, marker="x", color="#9aa3ab", ms=8, mew=1.5)
                ax.annotate(
                    label,
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


def _fig_training_curves(data: _Data, number: int, csv: Path, path: Path) -> tuple[Path | None, str]:
    plt = _plt()
    try:
        log = pd.read_csv(csv)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        return None, f"The training log {md_code(csv)} could not be read ({md_text(err)})."
    if log.empty:
        return None, f"The training log {md_code(csv)} is empty."
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
    caption = f"From the trial's Lightning CSV log {md_code(_display_path(csv))}."
    if notes:
        caption += " " + "; ".join(notes).capitalize() + "."
    return _save(fig, path), caption


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
        f"{md_text(metric_label(data.metric))} of each complete trial in the order the sampler "
        f"({md_text(data.sweep.get('sampler', 'unknown'))}) ran them; the line is the best so far. Pruned, "
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
            f"Optuna could not compute parameter importances ({type(err).__name__}: "
            f"{md_text(str(err).rstrip('.'))}).",
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
        caption += f" Variants without these diagnostics: {'; '.join(md_text(x) for x in left)}."
    return _save(fig, path), caption
