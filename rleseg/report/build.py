from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rleseg.report.document import (
    _Code,
    _Doc,
    _Heading,
    _Markdown,
    _Para,
    _Table,
    _to_html,
    _to_markdown,
    md_code,
    md_text,
)
from rleseg.report.figures import (
    FIGURE_PREFIXES,
    _fig_history,
    _fig_importances,
    _fig_learning_curves,
    _fig_pareto,
    _fig_per_class,
    _fig_quality_vs_size,
    _fig_sequence_lengths,
    _fig_token_diagnostics,
    _fig_training_curves,
    _importances,
    _Style,
)
from rleseg.report.study import (
    DIAG,
    DICE,
    ELAPSED,
    METRIC_NAMES,
    ReportOptions,
    ReportResult,
    _ceiling_metric,
    _choice_rank,
    _class_path,
    _column_name,
    _copy_trials,
    _Data,
    _diag_header,
    _diag_keys,
    _display_path,
    _finite,
    _fmt,
    _gather,
    _grid_progress,
    _has_elapsed,
    _json_list,
    _last,
    _last_diag,
    _mean,
    _metrics_csv,
    _natural_key,
    _per_class,
    _predictions_png,
    _scaled,
    _seed_name,
    _seed_params,
    _short_metric,
    _status,
    _trial_links,
    _trial_ref,
    _Variant,
    _variants,
    metric_label,
)
from rleseg.sweep import record as rec

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
        row["status"] = md_text(status) + (" — **best**" if number == data.best else "")
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
        return _Table(table, classes, numeric, {"status"}), {}
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
    return _Table(table[keep], classes, numeric, {"status"}), constants


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
    return _Table(frame, numeric=numeric, markdown={"trials"})


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
                "`trials/trial_NNNN/` beside the study file; `rleseg report` copies their logs beside the "
                "report when it finds them."
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
            f" *vs dense*: the mean final Dice minus that of the dense baseline ({md_text(dense[0].label)}, "
            "model `DenseSegModule`)."
        )
    doc.add(_Para(text))
    doc.add(_learning_table(data, variants))
    uneven = [
        f"{md_text(v.label)} ({', '.join(_fmt(r.val['step'].max(), 0, whole=True) for r in v.runs)})"
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
    return _Table(frame, numeric=set(frame.columns) - {"variant", "trials"}, markdown={"trials"})


#: (diagnostic, legend label, line style) of the token diagnostics figure


def _section_token_diagnostics(doc: _Doc, data: _Data, variants: Sequence[_Variant]) -> None:
    with_diag = [
        r.number for v in variants for r in v.runs if any(str(c).startswith(DIAG) for c in r.val.columns)
    ]
    if not with_diag:
        return  # no token model logged diagnostics: the section would say nothing
    doc.section("Token diagnostics", "token-diagnostics")
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
        f"* **study:** {md_code(study.study_name)}"
        + (f" in {md_code(options.storage)}" if options.storage else ""),
    ]
    if sweep.get("sweep_file"):
        lines.append(
            f"* **sweep file:** {md_code(_display_path(Path(str(sweep['sweep_file']))))} "
            f"(scale {md_code(sweep.get('scale', '?'))})"
        )
    if sweep.get("base"):
        lines.append(f"* **base experiment:** {md_code(sweep['base'])} (relative to the sweep file)")
    if sweep.get("params"):
        knobs = ", ".join(f"{md_code(k)} ({md_code(v)})" for k, v in sweep["params"].items())
        lines.append(f"* **searched:** {knobs}")
    objectives = ", ".join(f"{md_code(m)} ({md_text(d)})" for m, d in data.objectives)
    lines.append(f"* **objectives:** {objectives}; quality shown in the plots: {md_code(data.metric)}")
    lines.append(
        f"* **sampler / pruner:** {md_text(sweep.get('sampler', 'unknown'))} / "
        f"{md_text(sweep.get('pruner', 'unknown'))}"
    )
    if int(sweep.get("repeats") or 1) > 1:
        lines.append(f"* **seeds per point:** {int(sweep['repeats'])}")
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
                f"**Best trial:** #{data.best} ({md_text(data.label(data.best))}): "
                f"{md_text(metric_label(data.metric))} = {float(value):.4f}.",
                "note",
            )
        )
    else:
        doc.add(_Para("No trial has completed yet, so there is no best trial.", "warn"))
    if len(data.study.directions) > 1 and data.best is not None:
        # Optuna's own Pareto set over the study's objectives (the plots below use quality vs cost).
        arrows = ", ".join(f"{md_code(m)} {'↑' if d == 'maximize' else '↓'}" for m, d in data.objectives)
        front = sorted(t.number for t in data.study.best_trials)
        listed = ", ".join(f"#{n} ({md_text(data.label(n))})" for n in front) or "none yet"
        doc.add(_Para(f"**Pareto-optimal trials for the study's objectives** ({arrows}): {listed}.", "note"))


def _budget_table(data: _Data) -> _Table | None:
    if not data.budgets:
        return None
    done = data.complete().dropna(subset=[data.metric])
    if done.empty:
        return None
    rows = []
    for b in sorted(data.budgets):
        fit = (
            done[[rec.fits_budget(row.to_dict(), b) for _, row in done.iterrows()]]
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
        where = f"; its files are in [{md_text(data.links[n])}]({data.links[n]})"
    elif trial_dir:
        where = f"; its files are in {md_code(_display_path(trial_dir))}"
    else:
        where = "; its trial folder was not found"
    if trial_dir and (trial_dir / "config.yaml").is_file():
        fit = md_code("rleseg fit --config " + _display_path(trial_dir / "config.yaml"))
        where += f", and {fit} reproduces it"
    doc.add(
        _Para(
            f"Trial #{n} ({md_text(data.label(n))}), best by {md_code(data.metric)} "
            f"({data.direction}){where}."
        )
    )

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
            f"Validation samples of trial #{n} after its last epoch ({md_text(png.stem.replace('_', ' '))}): "
            "image | ground truth | prediction, classes as colours.",
        )
    )


def _section_history(doc: _Doc, data: _Data, style: _Style) -> None:
    import optuna

    history = data.sweep.get("sampler") != "grid"  # a grid's order carries no information
    done = data.complete().dropna(subset=[data.metric])
    seeds = set(_seed_params(data))
    varying = [p for p in data.params if p not in seeds and done[f"param_{p}"].astype(str).nunique() > 1]
    if not history and len(varying) < 2:
        return  # one knob (or none): its effect is the ablation table itself
    doc.section(
        "Optimisation history and parameter importances" if history else "Parameter importances", "history"
    )
    if history:
        doc.figure(_fig_history(data, style, doc.fig_dir / "optimization_history.png"))
    importances, why = _importances(data)
    if importances is None or len(importances) < 2:
        doc.add(_Para(why or "Only one parameter varies: no importances to compare.", "note"))
        return
    evaluator = "PED-ANOVA" if hasattr(optuna.importance, "PedAnovaImportanceEvaluator") else "fANOVA"
    path = _fig_importances(data, importances, doc.fig_dir / "param_importances.png")
    doc.figure(
        (
            path,
            f"How much each parameter matters for {md_text(_short_metric(data.metric))} over the complete "
            "trials "
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
                "log": _display_path(Path(str(log))) if log else "",
            }
        )
    doc.add(_Table(pd.DataFrame(rows), classes=["fail"] * len(rows), numeric={"#"}))


def _seed_groups(data: _Data) -> list[tuple[str, list[tuple[int, Any, float]]]]:
    """Complete trials grouped by their parameters without the seed: ``[(label, [(trial, seed, value)])]``,
    in the order of the search space's choices."""
    seeds = set(_seed_params(data))
    others = [p for p in data.params if p not in seeds]
    groups: dict[tuple[Any, ...], list[tuple[int, Any, float]]] = {}
    labels: dict[tuple[Any, ...], str] = {}
    for _, r in data.complete().dropna(subset=[data.metric]).iterrows():
        number = int(r["number"])
        params = data.trials[number].params
        key = tuple(_choice_rank(data, p, params.get(p)) for p in others)
        seed = next((params[p] for p in seeds if p in params), None)
        groups.setdefault(key, []).append((number, seed, float(r[data.metric])))
        labels[key] = ", ".join(f"{p}={params[p]}" for p in others if p in params) or "all trials"
    return [(labels[k], sorted(groups[k], key=lambda x: x[0])) for k in sorted(groups)]


def seed_noise(groups: Sequence[Sequence[float]]) -> float | None:
    """The pooled within-group standard deviation of groups of seeds (None without a group of two).

    >>> round(seed_noise([[0.5, 0.7], [0.1, 0.3], [0.9]]), 4)
    0.1414
    """
    num = sum(sum((x - float(np.mean(g))) ** 2 for x in g) for g in groups if len(g) > 1)
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    return math.sqrt(num / dof) if dof else None


def _section_seeds(doc: _Doc, data: _Data) -> None:
    """Mean ± sd per point over its seeds, and which differences to the best point exceed seed noise."""
    groups = _seed_groups(data)
    if not any(len(g) > 1 for _, g in groups):
        return  # one seed per point: nothing to average
    sigma = seed_noise([[v for _, _, v in g] for _, g in groups])
    sign = 1.0 if data.direction == "maximize" else -1.0
    means = {label: float(np.mean([v for _, _, v in g])) for label, g in groups}
    best_label = max(means, key=lambda k: sign * means[k])
    best_n = len(dict(groups)[best_label])
    name = _short_metric(data.metric)
    rows, beyond, within = [], [], []
    for label, g in groups:
        values = [v for _, _, v in g]
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
        diff = means[label] - means[best_label]
        verdict = ""
        if label == best_label:
            verdict = "best"
        elif sigma is not None:
            threshold = 2.0 * sigma * math.sqrt(1.0 / len(values) + 1.0 / best_n)
            if abs(diff) > threshold:
                verdict = "beyond seed noise"
                beyond.append(f"{md_text(label)} ({diff:+.3f})")
            else:
                verdict = "within seed noise"
                within.append(f"{md_text(label)} ({diff:+.3f})")
        rows.append(
            {
                "point": label,
                "trials": ", ".join(_trial_ref(data, n) for n, _, _ in g),
                "seeds": str(len(values)),
                f"{name} mean ± sd": f"{means[label]:.3f} ± {sd:.3f}"
                if sd is not None
                else f"{means[label]:.3f}",
                "per seed": ", ".join(
                    f"{seed if seed is not None else '#' + str(n)}: {v:.3f}" for n, seed, v in g
                ),
                "vs best": "" if label == best_label else f"{diff:+.3f}",
                "difference": verdict,
            }
        )
    doc.section("Seeds: mean ± sd per point", "seeds")
    frame = pd.DataFrame(rows)
    doc.add(
        _Para(
            f"Each point (the parameters without the seed) over its seeds: {md_code(data.metric)} mean ± "
            "standard deviation. Seed noise is the pooled standard deviation within points"
            + (f", σ = {sigma:.3f}" if sigma is not None else "")
            + "; a difference to the best point counts as beyond seed noise when it exceeds two standard "
            "errors of the difference, 2σ·√(1/n + 1/n_best)."
        )
    )
    doc.add(_Table(frame, numeric={"seeds", f"{name} mean ± sd", "vs best"}, markdown={"trials"}))
    verdict = f"Best point: {md_text(best_label)} ({means[best_label]:.3f})."
    if beyond:
        verdict += f" Beyond seed noise: {'; '.join(beyond)}."
    if within:
        verdict += f" Within seed noise (not distinguishable with these seeds): {'; '.join(within)}."
    doc.add(_Para(verdict, "note"))


def _share(run: dict[str, Any]) -> str:
    """``2 workers of 1 thread each`` from a run record (threads only where the run recorded them)."""
    workers = int(run["workers"])
    text = f"{workers} worker{'s' if workers != 1 else ''}"
    threads = run.get("threads")
    if threads:
        text += f" of {int(threads)} thread{'s' if int(threads) != 1 else ''}"
        text += " each" if workers != 1 else ""
    return text


def _provenance(doc: _Doc, data: _Data) -> None:
    """Which code, commit, machine and date produced the study, from what it recorded."""
    binding = data.study.user_attrs.get(rec.STUDY_BINDING) or {}
    runs = data.study.user_attrs.get(rec.STUDY_RUNS) or []
    if not binding:
        doc.add(
            _Para(
                "This study does not record the configuration, code version or machine it ran on (it was "
                "made before studies were bound to their configuration); what it measured may differ from "
                "today's code.",
                "warn",
            )
        )
        return
    parts = [f"rleseg {md_text(binding.get('version') or '?')}"]
    commit = binding.get("commit")
    parts.append(
        f"commit {md_code(str(commit)[:12] + ('+dirty' if str(commit).endswith('+dirty') else ''))}"
        if commit
        else "no git commit recorded"
    )
    if runs:
        dates = [str(r.get("started", ""))[:10] for r in runs if r.get("started")]
        if dates:
            parts.append(
                f"run {md_text(dates[0])}" + (f" to {md_text(dates[-1])}" if dates[-1] != dates[0] else "")
            )
        machines = list(dict.fromkeys(str(r.get("machine")) for r in runs if r.get("machine")))
        if machines:
            parts.append("on " + "; ".join(md_text(m) for m in machines))
        # Wall-clock figures depend on how the machine was shared: K workers of T threads each.
        shares = list(dict.fromkeys(_share(r) for r in runs if r.get("workers")))
        if shares:
            parts.append("; ".join(shares))
    where = f" from {md_code(binding['sweep_file'])}" if binding.get("sweep_file") else ""
    where += f" (base {md_code(binding['base'])})" if binding.get("base") else ""
    starts = f"; {len(runs)} start(s) of the sweep" if len(runs) > 1 else ""
    doc.add(_Para(f"**Produced by** {', '.join(parts)}{where}{starts}.", "note"))


def _informative(values: pd.Series) -> bool:
    """More than one distinct finite value."""
    return pd.to_numeric(values, errors="coerce").dropna().nunique() > 1


def _token_trials(data: _Data) -> pd.DataFrame:
    """Trials that recorded token statistics, without models that use no tokens (the dense baseline)."""
    f = data.frame[~data.frame["superseded"].astype(bool)]
    f = f[f[rec.TOKENS_P50].notna() | f[rec.MAX_SEQ_LEN].notna()]
    dense = {n for n in f["number"].astype(int) if "DenseSegModule" in (_class_path(data, n) or "")}
    return f[~f["number"].astype(int).isin(dense)]


def copy_study(study: Any, path: Path) -> bool:
    """Copy ``study`` into the SQLite file ``path`` (the whole file when the study is in SQLite);
    False when ``path`` already is the study's storage."""
    import sqlite3

    import optuna

    url = getattr(getattr(study, "_storage", None), "url", None) or getattr(
        getattr(getattr(study, "_storage", None), "_backend", None), "url", None
    )
    target = path.resolve()
    if isinstance(url, str) and url.startswith("sqlite:///"):
        source = Path(url[len("sqlite:///") :]).resolve()
        if source == target:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".db.tmp")
        tmp.unlink(missing_ok=True)
        with sqlite3.connect(source) as src, sqlite3.connect(tmp) as dst:
            src.backup(dst)
        tmp.replace(path)
        return True
    path.unlink(missing_ok=True)
    optuna.copy_study(
        from_study_name=study.study_name,
        from_storage=study._storage,
        to_storage=f"sqlite:///{path}",
        to_study_name=study.study_name,
    )
    return True


def write_report(study: Any, out: str | Path, options: ReportOptions | None = None) -> ReportResult:
    """Write ``report.md``, ``report.html``, ``trials.csv``, ``figures/*.png``, a copy of the study
    (``study.db``) and the trials' small artifacts (``trials/trial_NNNN/``) into ``out``.

    Sections that would carry no information are left out: sequence lengths when every token model has
    the same (or no model uses tokens), quality vs vocabulary and length when neither varies, the
    optimisation history of a grid sweep (its order means nothing), parameter importances with fewer than
    two varying parameters, token diagnostics when no trial logged them, seeds with one seed per point.

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
    if options.copy_study:
        copy_study(study, out / "study.db")
    data.links = _trial_links(data, out)
    style = _Style(data)
    title = options.title or f"Sweep report: {study.study_name}"
    doc = _Doc(fig_dir)

    doc.add(_Heading(1, md_text(title)))
    command = (
        options.command or f"rleseg report --study {out / 'study.db'} --name {study.study_name} --out {out}"
    )
    doc.add(_Para("Generated by `rleseg report` from the Optuna study; regenerate it with:"))
    doc.add(_Code(command))
    _provenance(doc, data)
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
                f"One row per trial. **{md_text(_short_metric(data.metric))}** is {md_code(data.metric)}; "
                + ABLATION_LEGEND
            )
        )
        table, constants = _ablation_table(data)
        doc.add(table)
        if constants:
            shared = "; ".join(f"*{md_text(k)}* {md_text(v)}" for k, v in constants.items())
            doc.add(_Para(f"The same for every trial that has a value (left out of the table): {shared}."))

    _section_seeds(doc, data)

    tokens = _token_trials(data)
    columns = [rec.TOKENS_P50, rec.TOKENS_P95, rec.TOKENS_MAX, rec.MAX_SEQ_LEN]
    if len(tokens) == 0 or any(_informative(tokens[c]) for c in columns):
        doc.section("Sequence length per encoding and resolution", "sequence-length")
        doc.figure(_fig_sequence_lengths(data, style, fig_dir / "sequence_lengths.png", tokens))
        seq = _seq_table(data)
        if seq is not None:
            doc.add(
                _Para("Per encoding and resolution (median over trials of p50 and p95; the largest maximum):")
            )
            doc.add(seq)

    done = data.complete().dropna(subset=[data.metric])
    if done.empty or _informative(done[rec.VOCAB_SIZE]) or _informative(done[rec.TOKENS_P50]):
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
