"""``rleseg report``: a report from a tiny hand-made study (no training), its sections, figures, embedded
HTML images, partly finished and failed studies, and the command's errors. One end-to-end test on a real
2-trial sweep is behind the ``slow`` marker."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from rleseg.cli import main
from rleseg.report import (
    ReportError,
    ReportOptions,
    load_study,
    markdown_to_html,
    metric_label,
    pareto_front,
    resolve_storage,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
DIST = {"tokenizer": CategoricalDistribution(["lac", "mc"]), "subsample": CategoricalDistribution([4, 8])}
CLASSES = ("top", "bottom_or_dress")
SWEEP = {
    "name": "tiny",
    "scale": "cpu",
    "sweep_file": "sweeps/tiny.yaml",
    "base": "experiments/quickstart.yaml",
    "params": {
        "tokenizer": "data.init_args.tokenizer",
        "subsample": "data.init_args.tokenizer_args.subsample",
    },
    "objectives": [["val/dice_mean", "maximize"]],
    "budgets_mib": [16.0, 32.0],
    "sampler": "grid",
    "pruner": "none",
    "fingerprint": "0123456789abcdef",
}
GRID = {"tokenizer": ["lac", "mc"], "subsample": [4, 8]}

#: Every figure the full report must hold.
FIGURES = {
    "sequence_lengths.png",
    "quality_vs_vocab_and_tokens.png",
    "pareto_16mib.png",
    "pareto_32mib.png",
    "best_per_class.png",
    "best_training_curves.png",
    "best_predictions.png",
    "learning_curves.png",
    "param_importances.png",  # a grid sweep: no optimisation history (its order means nothing)
}
SECTIONS = {
    "study": "## Study",
    "notes": "## Conclusions",
    "ablation": "## Ablation table",
    "sequence-length": "## Sequence length per encoding and resolution",
    "quality-vs-size": "## Quality vs vocabulary size and tokens per mask",
    "pareto": "## Pareto fronts under the memory budgets",
    "learning-curves": "## Learning curves of every trial",
    "best": "## The best trial",
    "history": "## Parameter importances",
    "failed": "## Failed trials",
}


# ------------------------------------------------------------------------------------- the study
def _png(path: Path, seed: int, size: tuple[int, int] = (24, 36)) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)).save(path)
    return path


def _trial_dir(root: Path, number: int, dice: float) -> Path:
    """What a trained trial leaves behind: config, Lightning CSV log, validation prediction grids."""
    tdir = root / f"trial_{number:04d}"
    logs = tdir / "logs"
    logs.mkdir(parents=True)
    (tdir / "config.yaml").write_text(
        "data:\n  init_args:\n    source_args: {canvas: 64}\n    tokenizer_args: {subsample: 4}\n"
    )
    lines = [
        "epoch,step,train/loss,val/loss,val/dice_mean,val/precision_mean,val/recall_mean,val/ceiling_dice_mean"
    ]
    for epoch in range(3):
        for k in range(2):
            lines.append(f"{epoch},{epoch * 10 + 5 * k + 4},{4.0 - epoch - 0.3 * k},,,,,")
        d = dice * (epoch + 1) / 3
        lines.append(f"{epoch},{epoch * 10 + 9},,{3.9 - epoch},{d},{d + 0.05},{d - 0.05},0.85")
    (logs / "metrics.csv").write_text("\n".join(lines) + "\n")
    _png(logs / "val_predictions" / "epoch_000.png", seed=number)
    _png(logs / "val_predictions" / "epoch_002.png", seed=100 + number, size=(30, 45))
    return tdir


def _record(number: int, root: Path, dice: float, est: float, tokenizer: str, subsample: int) -> dict:
    p50 = {"lac": 20.0, "mc": 30.0}[tokenizer] * (8 / subsample)
    record = {
        "worker": "host:1",
        "config_path": str(root / f"trial_{number:04d}" / "config.yaml"),
        "estimated_peak_mib": est,
        "measured_peak_mib": est * 1.02,
        "budgets_fit": [b for b in SWEEP["budgets_mib"] if est <= b],
        "budget_mib": 32.0,
        "infeasible": False,
        "num_parameters": 360_000,
        "vocab_size": {2: 1100, 4: 310, 8: 94}[subsample] + (0 if tokenizer == "lac" else -20),
        "max_seq_len": int(p50 * 4),
        "tokens_per_mask_p50": p50,
        "tokens_per_mask_p95": p50 * 1.8,
        "tokens_per_mask_max": p50 * 2.2,
        "tokens_per_mask_mean": p50 * 1.1,
        "truncated_fraction": 0.0,
        "train_seconds": 12.5,
        "decode_seconds_per_image": 0.05 * (8 / subsample),
        "validity_rate": 0.98,
        "val/dice_mean": dice,
        "val/precision_mean": dice + 0.05,
        "val/recall_mean": dice - 0.05,
        "val/ceiling_dice_mean": 0.85,
    }
    for c, name in enumerate(CLASSES):
        for key in ("precision", "recall", "dice", "iou"):
            record[f"val/{key}_{name}"] = round(dice + 0.1 * c - (0.05 if key == "iou" else 0.0), 4)
    return record


def _add(study: optuna.Study, state: TrialState, params: dict, grid_id: int, value=None, attrs=None) -> None:
    study.add_trial(
        create_trial(
            state=state,
            value=value,
            params=params,
            distributions={k: DIST[k] for k in params},
            user_attrs=attrs or {},
            system_attrs={"grid_id": grid_id, "search_space": GRID},
        )
    )


def make_study(root: Path, name: str = "tiny-cpu", full: bool = True) -> optuna.Study:
    """Trials: 0 COMPLETE (best), 1 COMPLETE (fits the larger budget only), 2 PRUNED over every budget,
    3 FAILED; with ``full=False`` only trial 0 and a RUNNING trial (a partly finished grid)."""
    root.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=name, storage=f"sqlite:///{root / 'study.db'}", direction="maximize", load_if_exists=True
    )
    study.set_user_attr("sweep", SWEEP)
    study.set_user_attr("budgets_mib", SWEEP["budgets_mib"])
    _trial_dir(root, 0, 0.61)
    _add(
        study,
        TrialState.COMPLETE,
        {"tokenizer": "lac", "subsample": 4},
        0,
        0.61,
        _record(0, root, 0.61, 12.0, "lac", 4),
    )
    if not full:
        study.ask(fixed_distributions={k: v for k, v in DIST.items()})  # RUNNING
        return study
    _trial_dir(root, 1, 0.42)
    _add(
        study,
        TrialState.COMPLETE,
        {"tokenizer": "mc", "subsample": 8},
        1,
        0.42,
        _record(1, root, 0.42, 20.0, "mc", 8),
    )
    over = {
        "config_path": str(root / "trial_0002" / "config.yaml"),
        "estimated_peak_mib": 40.5,
        "budgets_fit": [],
        "budget_mib": 32.0,
        "infeasible": True,
        "vocab_size": 290,
        "max_seq_len": 256,
        "num_parameters": 360_000,
    }
    _add(study, TrialState.PRUNED, {"tokenizer": "mc", "subsample": 4}, 2, None, over)
    failed = {"error": "RuntimeError: boom in the decoder\ntraceback ...", "estimated_peak_mib": 9.0}
    _add(study, TrialState.FAIL, {"tokenizer": "lac", "subsample": 8}, 3, None, failed)
    return study


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int, str]:
    """The full study reported once through the command line (with a title and notes)."""
    tmp = tmp_path_factory.mktemp("report")
    make_study(tmp / "sweep")
    notes = tmp / "notes.md"
    notes.write_text(
        "## Conclusions\n\nLAC **holds** its quality at `s=4`.\n\n* first point\n* second point\n\n"
        "| encoding | verdict |\n|---|---|\n| lac | holds |\n"
    )
    out = tmp / "reports" / "tiny"
    rc = main(
        [
            "report",
            "--study",
            str(tmp / "sweep" / "study.db"),
            "--out",
            str(out),
            "--title",
            "Tiny ablation",
            "--notes",
            str(notes),
        ]
    )
    return tmp, out, rc, notes.read_text()


# ------------------------------------------------------------------------------------- the report
def test_report_writes_every_section_and_figure(full_report):
    tmp, out, rc, _ = full_report
    assert rc == 0
    md = (out / "report.md").read_text()
    for heading in SECTIONS.values():
        assert re.search(rf"^{re.escape(heading)}$", md, re.M), heading
    figures = {p.name: p for p in (out / "figures").glob("*.png")}
    assert set(figures) == FIGURES
    for name, path in figures.items():
        width, height = _png_size(path)
        if name != "best_predictions.png":  # a copy of the trial's own grid (small here)
            assert width > 300 and height > 200 and path.stat().st_size > 5000, path
    # Every figure is linked relatively, and every link points at a file.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {Path(link).name for link in links} == FIGURES
    assert all(link.startswith("figures/") and (out / link).is_file() for link in links)
    assert (out / "trials.csv").read_text().startswith("number,state,superseded")


def test_report_top_holds_the_regenerating_command(full_report):
    tmp, out, _, _ = full_report
    lines = (out / "report.md").read_text().splitlines()
    assert lines[0] == "# Tiny ablation"
    command = next(line for line in lines[:8] if line.startswith("rleseg report"))
    assert f"--study {out / 'study.db'}" in command and "--name tiny-cpu" in command  # the kept copy
    assert (out / "study.db").is_file() and load_study(str(out / "study.db")).study_name == "tiny-cpu"
    assert f"--out {out}" in command and "--title 'Tiny ablation'" in command and "--notes" in command


def test_report_table_states_and_best_trial(full_report):
    _, out, _, _ = full_report
    md = (out / "report.md").read_text()
    table = md.split("## Ablation table", 1)[1].split("\n## ", 1)[0]
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\| (\d+) \|.*$", table, re.M)}
    assert sorted(rows) == [0, 1, 2, 3]
    assert "complete — **best**" in rows[0] and "0.610" in rows[0] and "16, 32" in rows[0]
    assert "complete" in rows[1] and "**best**" not in rows[1] and "| 32 |" in rows[1]
    assert "over budget: est. 40.5 > 32 MiB, not trained" in rows[2] and "| none |" in rows[2]
    assert "failed: RuntimeError: boom in the decoder" in rows[3] and "traceback" not in rows[3]
    assert "40 / 72 / 88" in rows[0]  # tokens per mask p50 / p95 / max
    assert "**trials:** 4 — 2 complete, 1 pruned (1 over every budget, not trained), 1 failed" in md
    assert "**Best trial:** #0 (tokenizer=lac, subsample=4)" in md
    # A column every trial shares leaves the table for one sentence.
    assert "(left out of the table): *params (M)* 0.36." in md and "params (M)" not in table.split("\n\n")[2]
    # Per-class table of the best trial, its per-budget winners, and the failure with its error.
    assert "| bottom_or_dress | 0.710 | 0.710 | 0.710 | 0.660 |" in md
    budgets = md.split("### Best trial under each budget", 1)[1]
    assert re.search(r"^\| 16 \| #0 \| 0\.6100 \|", budgets, re.M) and re.search(
        r"^\| 32 \| #0 \|", budgets, re.M
    )
    failed = md.split("## Failed trials", 1)[1]
    assert "| 3 | tokenizer=lac, subsample=8 | RuntimeError: boom in the decoder |" in failed


def test_report_sample_predictions_are_the_last_epoch(full_report):
    tmp, out, _, _ = full_report
    last = tmp / "sweep" / "trial_0000" / "logs" / "val_predictions" / "epoch_002.png"
    assert (out / "figures" / "best_predictions.png").read_bytes() == last.read_bytes()
    assert "after its last epoch (epoch 002)" in (out / "report.md").read_text()


def test_html_is_self_contained(full_report):
    _, out, _, notes = full_report
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and page.rstrip().endswith("</html>")
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    figures = {p.read_bytes() for p in (out / "figures").glob("*.png")}
    assert len(embedded) == len(FIGURES) and {base64.b64decode(e) for e in embedded} == figures
    assert "figures/" not in re.sub(r"<code>.*?</code>", "", page)  # no image refers to a file
    # Tables, status colours, the notes rendered as HTML.
    assert page.count("<table>") >= 5 and 'class="infeasible"' in page and 'class="fail"' in page
    assert "<strong>holds</strong>" in page and "<li>second point</li>" in page and "<td>holds</td>" in page
    assert "LAC" in notes and "<h2>Conclusions</h2>" in page


def test_partly_finished_study_says_so(tmp_path: Path):
    study = make_study(tmp_path / "sweep", full=False)
    result = write_report(study, tmp_path / "out", ReportOptions(trial_roots=[tmp_path / "sweep"]))
    md = result.markdown.read_text()
    assert "This study is **not finished** (1 trial(s) running or queued, 1/4 grid points done)" in md
    assert "## Parameter importances" not in md and "## Optimisation history" not in md  # one point done
    assert "| running |" in md and "## Failed trials" not in md
    names = {p.name for p in result.figures}
    assert "best_per_class.png" in names and "param_importances.png" not in names
    assert all(p.is_file() and p.stat().st_size > 0 for p in result.figures)
    assert result.sections[:2] == ["study", "ablation"]


def test_study_without_complete_trials_or_sweep_attributes(tmp_path: Path):
    """A plain Optuna study (no rleseg sweep attributes) whose only trial failed: sentences, no crash."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="plain")
    _add(study, TrialState.FAIL, {"tokenizer": "mc"}, 0, None, {"error": "ValueError: bad"})
    result = write_report(study, tmp_path / "out")
    md = result.markdown.read_text()
    assert "No trial has completed yet, so there is no best trial." in md
    assert "No complete trial yet: no optimisation history." in md
    assert "failed: ValueError: bad" in md and result.figures == []
    empty = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="empty")
    assert "The study has no trials yet." in write_report(empty, tmp_path / "out2").markdown.read_text()


def test_just_started_sweep_reports_its_objective(tmp_path: Path):
    """Before any trial recorded the objective, the report still names it (not an internal column)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="started")
    study.set_user_attr("sweep", SWEEP)
    study.ask(fixed_distributions=dict(DIST))
    md = write_report(study, tmp_path / "out").markdown.read_text()
    assert "quality shown in the plots: `val/dice_mean`" in md and "**Dice** is `val/dice_mean`" in md
    assert "0 of 4 points finished" not in md  # no grid bookkeeping without a grid sampler's trials
    assert "Best trial under each budget" not in md and "No trial has both a quality and a memory" in md


def test_multi_objective_study_without_an_encoding_knob(tmp_path: Path):
    """A vocabulary-style sweep: two objectives, knobs ``subsample`` and ``max_run`` (no tokenizer)."""
    dist = {"subsample": CategoricalDistribution([2, 4]), "max_run": CategoricalDistribution([4, 16])}
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 's.db'}", study_name="vocab", directions=["maximize", "minimize"]
    )
    study.set_user_attr(
        "sweep", {**SWEEP, "objectives": [["val/dice_mean", "maximize"], ["tokens_per_mask_p95", "minimize"]]}
    )
    for number, (sub, run, dice, p95) in enumerate(
        [(2, 4, 0.5, 40.0), (2, 16, 0.6, 60.0), (4, 16, 0.4, 70.0)]
    ):
        attrs = _record(number, tmp_path, dice, 10.0, "lac", sub) | {"tokens_per_mask_p95": p95}
        params = {"subsample": sub, "max_run": run}
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                values=[dice, p95],
                params=params,
                distributions=dist,
                user_attrs=attrs,
            )
        )
    result = write_report(study, tmp_path / "out")
    md = result.markdown.read_text()
    assert "(`val/dice_mean` ↑, `tokens_per_mask_p95` ↓): #0 (subsample=2, max_run=4), #1" in md
    assert "#2 (" not in md.split("Pareto-optimal", 1)[1].split("\n", 1)[0]
    names = {p.name for p in result.figures}
    assert {"sequence_lengths.png", "param_importances.png"} <= names
    assert "optimization_history.png" not in names  # a grid sweep: the trials' order means nothing


def test_rewriting_removes_stale_figures(tmp_path: Path):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "pareto_999mib.png").write_bytes(b"old")
    (out / "figures" / "mine.png").write_bytes(b"keep")  # not a report figure: left alone
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="empty")
    write_report(study, out)
    assert not (out / "figures" / "pareto_999mib.png").exists() and (out / "figures" / "mine.png").exists()


# ------------------------------------------------------------ learning curves, diagnostics, copies
MODELS = {
    "dense_c32": "rleseg.module.DenseSegModule",
    "token_d64": "rleseg.module.RLESegModule",
    "token_d128": "rleseg.module.RLESegModule",
}
SEED_DIST = {
    "model": CategoricalDistribution(list(MODELS)),
    "seed_everything": CategoricalDistribution([0, 1]),
}
#: (model, seed, val/dice_mean at steps 9, 19, 29) of trials 0..4: the dense baseline and token_d64 with
#: two seeds each, token_d128 with one.
SEEDED = [
    ("dense_c32", 0, (0.3, 0.5, 0.6)),
    ("token_d64", 0, (0.1, 0.3, 0.4)),
    ("dense_c32", 1, (0.2, 0.72, 0.7)),
    ("token_d64", 1, (0.1, 0.35, 0.5)),
    ("token_d128", 0, (0.2, 0.4, 0.55)),
]
DIAG_KEYS = (
    "probe_dice_mean",
    "tf_acc",
    "tf_acc_start",
    "tf_acc_lac",
    "tf_acc_lac_class",
    "tf_acc_lac_length",
    "tf_acc_eos",
    "tf_dice_mean",
    "dice_classaware",
    "dice_agnostic",
    "exposure_gap",
    "runs_missed",
    "runs_misplaced",
    "runs_spurious",
    "obj_class_ok",
    "obj_err_first_run",
    "obj_err_drift",
)


def _diag_value(key: str, validation: int, seed: int) -> float:
    """A distinct value per key, validation (0..2) and seed: ``0.1·k/…`` keeps every one in [0, 1]."""
    k = DIAG_KEYS.index(key)
    return round(0.02 * k + 0.1 * validation + 0.01 * seed, 4)


def _seeded_trial_dir(root: Path, number: int, model: str, seed: int, dice, elapsed: bool) -> Path:
    """A trained trial's folder as the sweep leaves it: ``config.yaml``, ``logs/metrics.csv``,
    ``logs/hparams.yaml``, two prediction grids; token models log ``val/diag/*``."""
    tdir = root / "runs" / f"trial_{number:04d}"
    logs = tdir / "logs"
    logs.mkdir(parents=True)
    (tdir / "config.yaml").write_text(f"seed_everything: {seed}\nmodel:\n  class_path: {MODELS[model]}\n")
    (logs / "hparams.yaml").write_text(f"lr: 0.002\nseed: {seed}\n")
    diag = model.startswith("token")
    head = ["epoch", "step", "train/loss", "val/dice_mean"]
    head += ["val/elapsed_seconds"] if elapsed else []
    head += [f"val/diag/{k}" for k in DIAG_KEYS] if diag else []
    lines = [",".join(head)]
    for v, d in enumerate(dice):
        lines.append(f"{v},{10 * v + 4},{3.0 - v}" + "," * (len(head) - 3))  # a training row
        row = [str(v), str(10 * v + 9), "", str(d)]
        row += [str(3.0 * (v + 1) + seed)] if elapsed else []
        row += [str(_diag_value(k, v, seed)) for k in DIAG_KEYS] if diag else []
        lines.append(",".join(row))
    (logs / "metrics.csv").write_text("\n".join(lines) + "\n")
    _png(logs / "val_predictions" / "epoch_000.png", seed=number)
    _png(logs / "val_predictions" / "epoch_002.png", seed=50 + number)
    return tdir


def make_seeded_study(root: Path, elapsed: bool = True, logs: bool = True) -> optuna.Study:
    """Trials 0..4 of :data:`SEEDED` (complete) and a failed trial 5 without a folder."""
    root.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name="seeded-cpu", storage=f"sqlite:///{root / 'study.db'}", direction="maximize"
    )
    study.set_user_attr(
        "sweep", {**SWEEP, "params": {"model": "model", "seed_everything": "seed_everything"}}
    )
    for number, (model, seed, dice) in enumerate(SEEDED):
        if logs:
            _seeded_trial_dir(root, number, model, seed, dice, elapsed)
        config = root / "runs" / f"trial_{number:04d}" / "config.yaml"
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=dice[-1],
                params={"model": model, "seed_everything": seed},
                distributions=SEED_DIST,
                user_attrs={"config_path": str(config), "val/dice_mean": dice[-1]},
            )
        )
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params={"model": "token_d128", "seed_everything": 1},
            distributions=SEED_DIST,
            user_attrs={"error": "RuntimeError: out of memory"},
        )
    )
    return study


def _section(md: str, heading: str) -> str:
    return md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _md_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first pipe table in ``text`` as ``{header: cell}``."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    head, _, *body = split
    return [dict(zip(head, row, strict=True)) for row in body]


def test_learning_curves_group_seeds_into_variants(tmp_path: Path):
    study = make_seeded_study(tmp_path / "sweep")
    options = ReportOptions(trial_roots=[tmp_path / "sweep"], copy_trials=False, copy_study=False)
    result = write_report(study, tmp_path / "out", options)
    md = result.markdown.read_text()
    assert "learning-curves" in result.sections and "token-diagnostics" in result.sections
    section = _section(md, "Learning curves of every trial")
    assert "![learning curves](figures/learning_curves.png)" in section
    assert "against the optimizer step (left) and the wall-clock seconds" in section
    rows = {r["variant"]: r for r in _md_rows(section)}
    # Seeds 0 and 1 of one model are one variant; the variants follow the search space's order.
    assert list(rows) == ["model=dense_c32", "model=token_d64", "model=token_d128"]
    dense, small, large = rows.values()
    assert (dense["trials"], dense["seeds"], small["trials"], large["seeds"]) == (
        "#0, #2",
        "2",
        "#1, #3",
        "1",
    )
    assert dense["final Dice per seed"] == "seed 0: 0.600, seed 1: 0.700"
    assert large["final Dice per seed"] == "0.550"
    assert [r["final Dice (mean)"] for r in rows.values()] == ["0.650", "0.450", "0.550"]
    assert [r["best Dice (mean)"] for r in rows.values()] == ["0.660", "0.450", "0.550"]
    assert [r["steps"] for r in rows.values()] == ["29", "29", "29"]
    assert [r["wall-clock s (mean)"] for r in rows.values()] == ["9.5", "9.5", "9.0"]
    # The only DenseSegModule variant is the reference.
    assert [r["vs dense"] for r in rows.values()] == ["reference", "-0.200", "-0.100"]
    assert "(model=dense_c32, model `DenseSegModule`)" in section
    assert "Not complete" not in section and "#5" not in section  # the failed trial has no folder
    width, _ = _png_size(tmp_path / "out" / "figures" / "learning_curves.png")
    assert width > 1200  # two panels and the legend


def test_learning_curves_without_elapsed_or_a_unique_dense_variant(tmp_path: Path):
    study = make_seeded_study(tmp_path / "sweep", elapsed=False)
    # A second DenseSegModule variant: no single reference, so no "vs dense" column.
    config = tmp_path / "sweep" / "runs" / "trial_0004" / "config.yaml"
    config.write_text(config.read_text().replace("RLESegModule", "DenseSegModule"))
    # Seed 1 of token_d64 stopped one validation early.
    csv = tmp_path / "sweep" / "runs" / "trial_0003" / "logs" / "metrics.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:-1]) + "\n")
    result = write_report(study, tmp_path / "out", ReportOptions(trial_roots=[tmp_path / "sweep"]))
    section = _section(result.markdown.read_text(), "Learning curves of every trial")
    assert "No trial logged `val/elapsed_seconds`: only the step panel is drawn." in section
    rows = _md_rows(section)
    assert len(rows) == 3 and "wall-clock s (mean)" not in rows[0] and "vs dense" not in rows[0]
    assert rows[0]["final Dice (mean)"] == "0.650"
    assert (rows[1]["final Dice per seed"], rows[1]["final Dice (mean)"], rows[1]["steps"]) == (
        "seed 0: 0.400, seed 1: 0.350",
        "0.375",
        "24",
    )
    assert "ended at different steps, so their mean compares unequal training: model=token_d64 (29, 19)." in (
        section
    )
    width, _ = _png_size(tmp_path / "out" / "figures" / "learning_curves.png")
    assert 500 < width < 1200  # one panel


def test_token_diagnostics_table_is_the_last_validation_averaged_over_seeds(tmp_path: Path):
    study = make_seeded_study(tmp_path / "sweep")
    options = ReportOptions(trial_roots=[tmp_path / "sweep"], copy_trials=False, copy_study=False)
    result = write_report(study, tmp_path / "out", options)
    md = result.markdown.read_text()
    section = _section(md, "Token diagnostics")
    assert "*exposure gap* = TF Dice − Dice class-aware" in section and "*probe Dice*" in section
    rows = {r["variant"]: r for r in _md_rows(section)}
    assert list(rows) == ["model=token_d64", "model=token_d128"]  # the dense baseline has none
    small = rows["model=token_d64"]
    assert (small["trials"], small["seeds"], small["step"]) == ("#1, #3", "2", "29")
    # Mean over seeds 0 and 1 of the last validation (v = 2): 0.02·k + 0.2 + 0.005.
    for key, header in (("probe_dice_mean", "probe Dice"), ("obj_err_drift", "obj. err drift")):
        assert small[header] == f"{0.02 * DIAG_KEYS.index(key) + 0.205:.3f}"
    assert rows["model=token_d128"]["TF acc lac class"] == f"{0.02 * 4 + 0.2:.3f}"
    headers = list(small)
    assert headers[4:11] == [
        "probe Dice",
        "TF acc",
        "TF acc start",
        "TF acc lac",
        "TF acc lac class",
        "TF acc lac length",
        "TF acc eos",  # a field the report does not name: after the named ones
    ]
    assert {"exposure gap", "Dice class-aware", "runs spurious", "obj. err 1st run"} <= set(headers)
    assert "Trials without diagnostics (the dense baseline, or diagnostics off): #0, #2." in section
    assert "![token diagnostics](figures/token_diagnostics.png)" in section
    assert "token_diagnostics.png" in {p.name for p in result.figures}


def test_sections_without_logs_degrade_to_sentences(tmp_path: Path):
    study = make_seeded_study(tmp_path / "sweep", logs=False)
    result = write_report(study, tmp_path / "out", ReportOptions(trial_roots=[tmp_path / "sweep"]))
    md = result.markdown.read_text()
    assert (
        "No trial's validation log with `val/dice_mean` was found: no learning curves (no trial folder: "
        "#0, #1, #2, #3, #4)." in md
    )
    assert "`rleseg report` copies their logs beside the report when it finds them" in md
    assert "## Token diagnostics" not in md  # no trial logged any: the section is left out
    names = {p.name for p in result.figures}
    assert "learning_curves.png" not in names and "token_diagnostics.png" not in names
    # A log without val/dice_mean, and an unreadable one, are sentences too.
    tdir = tmp_path / "sweep" / "runs" / "trial_0000"
    tdir.mkdir(parents=True)
    (tdir / "metrics.csv").write_text("epoch,step,train/loss\n0,4,3.0\n")
    (tdir.parent / "trial_0001").mkdir()
    (tdir.parent / "trial_0001" / "metrics.csv").write_bytes(b"\xff\xfe\x00bad")
    md = write_report(study, tmp_path / "out2", ReportOptions()).markdown.read_text()
    assert (
        "(no `val/dice_mean` in `" in md and "metrics.csv`: #0; `" in md and "(UnicodeDecodeError): #1;" in md
    )
    assert "no trial folder: #2, #3, #4)" in md


def test_copy_trials_then_regenerate_from_the_copies(tmp_path: Path, capsys: pytest.CaptureFixture):
    import shutil

    make_seeded_study(tmp_path / "sweep")
    out = tmp_path / "reports" / "seeded"
    argv = ["report", "--study", str(tmp_path / "sweep" / "study.db"), "--out", str(out)]
    assert main(argv) == 0  # copies the study and the trials' artifacts by default
    assert "and the artifacts of 5 trial(s) in" in capsys.readouterr().out
    runs = tmp_path / "sweep" / "runs"
    for n in range(5):
        copy, src = out / "trials" / f"trial_{n:04d}", runs / f"trial_{n:04d}"
        assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
            "config.yaml",
            "hparams.yaml",
            "metrics.csv",
            "val_predictions/epoch_002.png",  # the last grid only
        ]
        assert (copy / "metrics.csv").read_bytes() == (src / "logs" / "metrics.csv").read_bytes()
    assert not (out / "trials" / "trial_0005").exists()  # the failed trial has no folder
    md = (out / "report.md").read_text()
    command = next(line for line in md.splitlines() if line.startswith("rleseg report"))
    assert command.startswith(f"rleseg report --study {out / 'study.db'} --name seeded-cpu")
    assert "its files are in [trials/trial_0002/](trials/trial_0002/)" in md  # the best trial
    assert "| model=dense_c32 | [#0](trials/trial_0000/), [#2](trials/trial_0002/) |" in md
    first = _md_rows(_section(md, "Learning curves of every trial"))

    # The trials' own folders are gone (runs/ is not committed); the study is committed beside the report.
    shutil.rmtree(runs)
    shutil.copyfile(tmp_path / "sweep" / "study.db", out / "study.db")
    assert main(["report", "--study", str(out / "study.db"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert _md_rows(_section(md, "Learning curves of every trial")) == first
    assert len(_md_rows(_section(md, "Token diagnostics"))) == 2
    assert "its files are in [trials/trial_0002/](trials/trial_0002/)" in md
    assert (out / "figures" / "best_predictions.png").read_bytes() == (
        out / "trials" / "trial_0002" / "val_predictions" / "epoch_002.png"
    ).read_bytes()

    # Elsewhere: the fallback finds trials/trial_NNNN/ beside the study file (no links from another folder).
    committed = tmp_path / "committed"
    shutil.copytree(out, committed)
    result = write_report(
        load_study(str(committed / "study.db")),
        tmp_path / "other",
        ReportOptions(trial_roots=[committed]),
    )
    md = result.markdown.read_text()
    rows = _md_rows(_section(md, "Learning curves of every trial"))
    assert rows[0]["trials"] == "[#0](trials/trial_0000/), [#2](trials/trial_0002/)"  # copied there too
    assert (tmp_path / "other" / "trials" / "trial_0002" / "metrics.csv").is_file()
    assert _md_rows(_section(md, "Learning curves of every trial"))[0]["final Dice (mean)"] == "0.650"
    assert "best_training_curves.png" in {p.name for p in result.figures}


def test_find_trial_dir_falls_back_to_committed_copies(tmp_path: Path):
    from rleseg.report.study import _find_trial_dir

    (tmp_path / "trials" / "trial_0007").mkdir(parents=True)
    gone = "/nowhere/runs/sweeps/x/cpu/trial_0007/config.yaml"
    assert _find_trial_dir(7, gone, [tmp_path]) == tmp_path / "trials" / "trial_0007"
    (tmp_path / "trial_0007").mkdir()  # a folder beside the study is still preferred
    assert _find_trial_dir(7, gone, [tmp_path]) == tmp_path / "trial_0007"
    assert _find_trial_dir(8, None, [tmp_path]) is None


# ------------------------------------------------------------------------------------- the command
def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.err


def test_command_errors_are_readable(tmp_path: Path, capsys: pytest.CaptureFixture):
    out = str(tmp_path / "out")
    rc, err = _run(["report", "--study", str(tmp_path / "missing.db"), "--out", out], capsys)
    assert rc == 2 and "rleseg report: error: no study database at" in err and "missing.db" in err
    assert not (tmp_path / "missing.db").exists()  # never creates an empty database

    for name in ("encodings-cpu", "encodings-gpu"):
        optuna.create_study(storage=f"sqlite:///{tmp_path / 'two.db'}", study_name=name)
    db = str(tmp_path / "two.db")
    rc, err = _run(["report", "--study", db, "--out", out], capsys)
    assert rc == 2 and "holds 2 studies; choose one with --name: ['encodings-cpu', 'encodings-gpu']" in err
    rc, err = _run(["report", "--study", f"sqlite:///{db}", "--name", "encodings-cpy", "--out", out], capsys)
    assert rc == 2 and "no study 'encodings-cpy'" in err and "did you mean 'encodings-cpu'?" in err
    assert "studies there: ['encodings-cpu', 'encodings-gpu']" in err
    rc, err = _run(
        ["report", "--study", db, "--name", "encodings-gpu", "--out", out, "--notes", "nope.md"], capsys
    )
    assert rc == 2 and "--notes 'nope.md': no such file" in err
    rc, err = _run(
        ["report", "--study", db, "--name", "encodings-gpu", "--out", out, "--metric", "val/x"], capsys
    )
    assert rc == 2 and "--metric 'val/x' was not recorded by any trial" in err
    assert "Traceback" not in err and not Path(out, "report.md").exists()

    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(ReportError, match="holds no study"):
        load_study(str(tmp_path / "empty.db"))
    with pytest.raises(FileNotFoundError, match="no study database"):
        resolve_storage(f"sqlite:///{tmp_path / 'nope.db'}")


def test_command_accepts_a_folder_and_a_url(tmp_path: Path, capsys: pytest.CaptureFixture):
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="only")
    assert resolve_storage(str(tmp_path)) == f"sqlite:///{(tmp_path / 'study.db').resolve()}"
    assert load_study(str(tmp_path)).study_name == "only"  # one study: --name is optional
    assert resolve_storage("postgresql://user@host/db") == "postgresql://user@host/db"


# ------------------------------------------------------------------------------------- helpers
def test_over_budget_seeds_of_one_point_share_one_label():
    from rleseg.report.figures import same_place_labels

    points = [(17, 139.71), (11, 139.7), (3, 150.0)]
    assert same_place_labels(points) == [(139.7, "#11, #17"), (150.0, "#3")]
    assert same_place_labels([]) == []


def test_pareto_front():
    assert pareto_front([10.0, 20.0, 30.0, 40.0], [0.5, 0.4, 0.8, 0.7]) == [0, 2]
    assert pareto_front([1.0, 1.0, 2.0], [0.3, 0.5, 0.5]) == [1]  # ties: the cheaper-or-better one only
    assert pareto_front([float("nan"), 2.0, 3.0], [0.9, 0.1, float("inf")]) == [1]
    assert pareto_front([], []) == []


def test_metric_labels_and_notes_markdown():
    assert metric_label("val/dice_mean") == "Dice (val, mean over classes)"
    assert metric_label("val/pq") == "PQ (val)"
    page = markdown_to_html(
        "# Title\n\ntext with `a|b` and [link](x.html)\n\n```\n<code>\n```\n\n1. one\n2. two"
    )
    assert "<h1>Title</h1>" in page and "<code>a|b</code>" in page and '<a href="x.html">link</a>' in page
    assert (
        "<pre><code>&lt;code&gt;\n</code></pre>" in page and "<ol>\n<li>one</li>\n<li>two</li>\n</ol>" in page
    )


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_report_of_a_real_two_trial_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real (tiny) sweep trains two trials; the report reads their study, logs and prediction grids."""
    import yaml

    from rleseg.sweep import SweepSpec, run_sweep

    monkeypatch.setenv("RLESEG_DATA_DIR", str(ROOT / "data_cache"))
    monkeypatch.setattr("sys.argv", ["rleseg"])  # LightningCLI reads args=..., not pytest's argv
    spec = SweepSpec.from_dict(
        yaml.safe_load(
            f"""
            name: e2e
            base: {ROOT / "experiments" / "quickstart.yaml"}
            search_space: {{data.init_args.tokenizer: [mc, lac]}}
            budgets_mib: [4096]
            runner: inline
            output_dir: {tmp_path / "sweep"}
            overrides:
              trainer.max_epochs: 1
              data.init_args.limit_train: 8
              data.init_args.limit_val: 4
              data.init_args.batch_size: 4
              data.init_args.tokenizer_args.subsample: 8
              model.init_args.d_model: 32
              model.init_args.mlp_dim: 64
              model.init_args.encoder_layers: 1
              model.init_args.decoder_layers: 1
            """
        )
    )
    run_sweep(spec, log=lambda line: None)
    out = tmp_path / "report"
    assert main(["report", "--study", str(tmp_path / "sweep" / "study.db"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert {
        "best_per_class.png",
        "best_training_curves.png",
        "best_predictions.png",
        "pareto_4096mib.png",
    } <= names
    assert "**trials:** 2 — 2 complete" in md and md.count("data:image/png;base64,") == 0
    # The header says which code and machine ran the study, and how the machine was shared.
    import torch

    threads = torch.get_num_threads()
    assert "**Produced by** rleseg " in md
    assert f"1 worker of {threads} thread{'s' if threads != 1 else ''} from " in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == len(names)


# ------------------------------------------------------------------------ the committed reports
REGENERABLE = [
    d for d in sorted((ROOT / "reports").iterdir()) if (d / "report.md").is_file() and (d / "trials").is_dir()
]


@pytest.mark.parametrize("folder", REGENERABLE, ids=[d.name for d in REGENERABLE])
def test_committed_report_regenerates_from_what_is_committed(folder: Path, tmp_path: Path, monkeypatch):
    """The command at the top of a committed report, run in a copy of what git holds (no runs/), rebuilds
    every figure it links, and every relative link of the report points at a file of the copy."""
    import shlex
    import shutil

    copy = tmp_path / "reports" / folder.name
    shutil.copytree(folder, copy)
    shutil.rmtree(copy / "figures")
    md = (folder / "report.md").read_text()
    command = next(line for line in md.splitlines() if line.startswith("rleseg report "))
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:]) == 0
    rebuilt = (copy / "report.md").read_text()
    committed = {Path(link).name for link in re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)}
    assert committed and committed == {p.name for p in (copy / "figures").glob("*.png")}
    for link in re.findall(r"\]\(([^)\s]+)\)", rebuilt):
        if "://" not in link and not link.startswith("#"):
            # a link to a sibling report (../other/report.html) points into the committed reports/
            base = folder if link.startswith("../") else copy
            assert (base / link.split("#")[0]).exists(), link
