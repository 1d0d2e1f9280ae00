"""Sweeps that train, on tiny data: the records of every trial, the memory budget, a failed trial, a sweep
killed with SIGKILL and resumed, and two workers on one SQLite study.

The base experiment is a ~20 k-parameter Pix2Seq on 32x32 composites (8 training scenes, 4 validation
scenes, one epoch), so each trial trains in a few seconds; the bookkeeping without training is in
``test_sweep.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from rleseg.cli import main
from rleseg.memory import instantiate_data
from rleseg.sweep import SweepSpec, open_storage, run_sweep, study_progress

TOKENIZERS = ["lac", "mc", "gap"]


def tiny_base(data_dir: Path) -> dict[str, Any]:
    """A base experiment that trains one epoch in seconds (the data dir keeps it off ./data_cache)."""
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "devices": 1,
            "precision": 32,
            "log_every_n_steps": 1,
            "logger": [
                {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}}
            ],
        },
        "model": {
            "class_path": "rleseg.module.RLESegModule",
            "init_args": {
                "backbone": "resnet10t",
                "feature_stride": 8,
                "d_model": 16,
                "encoder_layers": 1,
                "decoder_layers": 1,
                "num_heads": 2,
                "mlp_dim": 32,
                "lr": 2.0e-3,
                "num_vis": 2,
            },
        },
        "data": {
            "class_path": "rleseg.data.ImageSegDataModule",
            "init_args": {
                "source": "composites",
                "source_args": {
                    "preset": "fashion3",
                    "canvas": 32,
                    "num_train": 8,
                    "num_val": 4,
                    "num_test": 4,
                    "clip_len": 1,
                    "data_dir": str(data_dir),
                },
                "tokenizer": "lac",
                "tokenizer_args": {"subsample": 4},
                "max_seq_len": 64,
                "batch_size": 4,
                "num_workers": 0,
            },
        },
    }


@pytest.fixture(scope="module")
def base_file(data_fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_base(data_fashion_dir), sort_keys=False))
    return path


def write_sweep(root: Path, base: Path, name: str, **fields: Any) -> Path:
    """A sweep file under ``root`` whose trials go to ``root/out``."""
    sweep = {
        "name": name,
        "base": str(base),
        "search_space": {"data.init_args.tokenizer": list(TOKENIZERS)},
        "objectives": [{"val/dice_mean": "maximize"}],
        "sampler": {"name": "grid", "seed": 0},
        "budgets_mib": [1024],
        "auto_max_seq_len": {"quantile": 1.0, "samples": 8},
        "runner": "inline",
        "output_dir": str(root / "out"),
        **fields,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def load_study(spec: SweepSpec) -> optuna.Study:
    storage = open_storage(spec.resolved_storage(), heartbeat=False)
    return optuna.load_study(study_name=spec.study_name, storage=storage)


# ------------------------------------------------------------------------------ records of a sweep
@pytest.fixture(scope="module")
def recorded(base_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepSpec, optuna.Study]:
    """A finished 3-trial grid (lac, mc, gap) under one budget."""
    root = tmp_path_factory.mktemp("records")
    spec = SweepSpec.load(write_sweep(root, base_file, "records"))
    lines: list[str] = []
    study = run_sweep(spec, log=lines.append)
    assert lines[-1].startswith("sweep records-cpu: 3/3 trials done"), lines
    return spec, study, lines


def test_sweep_records_every_attribute_of_every_trial(recorded: tuple[SweepSpec, optuna.Study, list[str]]):
    spec, study, _ = recorded
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert sorted(t.params["tokenizer"] for t in trials) == sorted(TOKENIZERS)
    for t in trials:
        a = t.user_attrs
        assert t.value == pytest.approx(a["val/dice_mean"]) and 0.0 <= t.value <= 1.0
        # the resolved config: what `rleseg fit --config` reruns, with the trial's knob and sequence length
        assert a["outcome"] == "complete" and a["trial_dir"] == f"trial_{t.number:04d}"
        config = yaml.safe_load((spec.resolved_output_dir() / a["trial_dir"] / "config.yaml").read_text())
        init = config["data"]["init_args"]
        assert init["tokenizer"] == t.params["tokenizer"] and init["max_seq_len"] == a["max_seq_len"]
        # vocabulary and parameters follow the encoding (the embedding is vocab_size x d_model)
        assert a["vocab_size"] == instantiate_data(config).tokenizer.vocab_size
        assert a["num_parameters"] > 16 * a["vocab_size"]
        # memory: estimated before training, measured during it, and the two agree
        assert a["infeasible"] is False and a["budgets_fit"] == [1024]
        assert 0 < a["estimated_peak_mib"] < 1024
        assert a["estimated_parameters_mib"] > 0 and a["estimated_optimizer_mib"] > 0
        assert a["measured_method"] == "cpu-profiler"
        assert a["measured_peak_mib"] == pytest.approx(a["estimated_peak_mib"], rel=0.15)
        # sequence statistics of the ground truth (auto_max_seq_len quantile 1 of the training masks)
        assert 0 < a["tokens_per_mask_p50"] <= a["tokens_per_mask_p95"] <= a["tokens_per_mask_max"]
        assert a["tokens_per_mask_max"] <= a["max_seq_len"] - 2
        assert 0.0 <= a["truncated_fraction"] <= 1.0
        # time, decoding and metrics
        assert a["train_seconds"] > 0 and a["decode_seconds_per_image"] > 0
        assert 0.0 <= a["validity_rate"] <= 1.0
        for metric in ("dice", "iou", "precision", "recall", "ceiling_dice", "token_dice"):
            assert 0.0 <= a[f"val/{metric}_mean"] <= 1.0, metric
        assert a["val/loss"] > 0 and a["train/loss"] > 0 and a["epochs"] == 1
        assert "error" not in a
    vocab = {t.params["tokenizer"]: t.user_attrs["vocab_size"] for t in trials}
    assert len(set(vocab.values())) == 3, vocab  # three encodings, three vocabularies
    runs = {t.params["tokenizer"]: t.user_attrs["tokens_per_mask_p50"] for t in trials}
    assert runs["mc"] == pytest.approx(1.5 * runs["lac"])  # 3 tokens per run instead of 2, same runs


def test_sweep_keeps_metrics_and_predictions_and_exports(recorded: tuple[SweepSpec, optuna.Study, list[str]]):
    spec, study, _ = recorded
    out = spec.resolved_output_dir()
    for t in study.get_trials():
        logs = out / f"trial_{t.number:04d}" / "logs"
        assert (logs / "metrics.csv").is_file()
        assert list((logs / "val_predictions").glob("epoch_000_step*.png"))
    frame = __import__("pandas").read_csv(out / "trials.csv")  # written when the sweep ends
    assert len(frame) == 3 and set(frame["state"]) == {"COMPLETE"}
    for column in (
        "param_tokenizer",
        "objective_val/dice_mean",
        "estimated_peak_mib",
        "measured_peak_mib",
        "num_parameters",
        "vocab_size",
        "tokens_per_mask_p50",
        "tokens_per_mask_p95",
        "tokens_per_mask_max",
        "truncated_fraction",
        "train_seconds",
        "decode_seconds_per_image",
        "validity_rate",
        "val/recall_mean",
        "trial_dir",
        "outcome",
    ):
        assert column in frame.columns and frame[column].notna().all(), column


# ---------------------------------------------------------------------------------- the budget
def test_a_config_over_budget_is_recorded_and_never_trained(base_file: Path, tmp_path: Path):
    big = {"model.init_args.d_model": [512], "model.init_args.mlp_dim": [2048]}
    spec = SweepSpec.load(write_sweep(tmp_path, base_file, "big", search_space=big, budgets_mib=[32, 64]))
    study = run_sweep(spec, log=lambda line: None)
    (trial,) = study.get_trials()
    a = trial.user_attrs
    assert trial.state == TrialState.PRUNED and a["infeasible"] is True and a["outcome"] == "over_budget"
    assert trial.constraints["estimated_peak_over_budget_mib"] == pytest.approx(
        a["estimated_peak_mib"] - 64, abs=0.01
    )
    assert study.metric_names == ["val/dice_mean"]
    assert a["estimated_peak_mib"] > 64 and a["budgets_fit"] == [] and a["budget_mib"] == 64
    assert a["num_parameters"] > 512 * 512  # the big model was sized, not built for real
    assert "train_seconds" not in a and "measured_peak_mib" not in a
    trial_dir = spec.resolved_output_dir() / "trial_0000"
    assert sorted(p.name for p in trial_dir.iterdir()) == ["config.yaml"]  # no logs, checkpoints, job
    assert study_progress(study).done == 1  # it counts as done: a resume does not try it again


# ------------------------------------------------------------------------------- a failed trial
def test_a_failed_trial_is_recorded_with_its_error_and_the_sweep_goes_on(base_file: Path, tmp_path: Path):
    # lr = 1e30 turns the weights to inf after the first step: the next loss is NaN. Process runner: the
    # error travels from the trial's child process back to the sweep.
    space = {"model.init_args.lr": [1.0e30, 2.0e-3]}
    # pruner median: each child process attaches to the study (its URL comes through the environment).
    spec = SweepSpec.load(
        write_sweep(tmp_path, base_file, "nan", search_space=space, runner="process", pruner="median")
    )
    lines: list[str] = []
    study = run_sweep(spec, log=lines.append)
    by_lr = {t.params["lr"]: t for t in study.get_trials()}
    failed, good = by_lr[1.0e30], by_lr[2.0e-3]
    assert failed.state == TrialState.FAIL and good.state == TrialState.COMPLETE
    assert "non-finite training loss" in failed.user_attrs["error"]
    # error.txt holds the trial process's own traceback, down to the training step that raised
    assert (
        failed.user_attrs["outcome"] == "failed"
        and failed.user_attrs["error_log"] == f"trial_{failed.number:04d}/error.txt"
    )
    assert "in training_step" in (spec.resolved_output_dir() / failed.user_attrs["error_log"]).read_text()
    assert failed.user_attrs["estimated_peak_mib"] > 0  # estimated before it failed
    assert good.user_attrs["val/dice_mean"] == good.value
    assert any(f"trial {failed.number} failed" in line and "non-finite" in line for line in lines), lines
    assert lines[-1].startswith("sweep nan-cpu: 2/2 trials done")
    # The storage URL (a server's may hold a password) is not written into the trial folders.
    for trial in study.get_trials():
        job = json.loads((spec.resolved_output_dir() / f"trial_{trial.number:04d}" / "job.json").read_text())
        assert job["prune"] and "storage" not in job and "study.db" not in json.dumps(job)


# -------------------------------------------------------------------------------- SIGKILL, resume
def _wait(condition: Any, proc: subprocess.Popen, what: str, polls: int = 6000) -> None:
    # Bounded by polls, not by the clock: a machine that pauses processes must not fail the test.
    for _ in range(polls):
        if condition():
            return
        assert proc.poll() is None, f"the sweep exited (code {proc.returncode}) before {what}"
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def _trial_children(job: Path) -> list[int]:
    """Live processes training the trial of ``job`` (the sweep's child)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        # the job's path as the sweep passed it: relative to the sweep's working folder when inside it
        named = any(arg.endswith(f"{job.parent.name}/{job.name}".encode()) for arg in cmdline)
        if named and (proc / "stat").read_text().split()[2] != "Z":
            pids.append(int(proc.name))
    return pids


def test_sweep_killed_mid_trial_resumes_without_losing_or_rerunning_trials(
    base_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Trial 1 waits at its training start while `hold` exists (tests/sweep_gate.py): the kill lands
    # mid-trial by construction, not by timing. The retry (trial 2) is not held.
    hold = tmp_path / "hold"
    gate = {"class_path": "sweep_gate.HoldTrial", "init_args": {"trial": "trial_0001", "hold": str(hold)}}
    path = write_sweep(
        tmp_path,
        base_file,
        "killed",
        search_space={"data.init_args.tokenizer": ["lac", "mc"]},
        overrides={"trainer.callbacks": [gate]},
        runner="process",
        storage={"heartbeat_interval": 1, "grace_period": 2},
    )
    spec = SweepSpec.load(path)
    out = spec.resolved_output_dir()
    job = out / "trial_0001" / "job.json"
    pythonpath = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", pythonpath)  # trial processes import sweep_gate
    cmd = [sys.executable, "-m", "rleseg", "sweep", "--config", str(path)]
    hold.touch()
    try:
        with open(tmp_path / "first.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: Path(f"{hold}.trial_0001").exists(), proc, "trial 1 to start training")
            assert _trial_children(job), "trial 1 is held in its own process"
            assert (out / "trial_0000" / "result.json").is_file()
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        hold.unlink()  # released: a trial process that outlived its sweep would now train on
    # The orphaned trial process notices its parent is gone and stops.
    for _ in range(600):
        if not _trial_children(job):
            break
        time.sleep(0.2)
    assert not _trial_children(job), "the killed sweep's trial process is still running"
    assert not (out / "trial_0001" / "result.json").exists()

    before = load_study(spec).get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    done, interrupted = before

    assert main(["sweep", "--config", str(path), "--resume"]) == 0
    after = load_study(spec).get_trials()
    # The completed trial is kept as it was and not trained again.
    assert after[0].state == TrialState.COMPLETE and after[0].datetime_complete == done.datetime_complete
    assert after[0].value == done.value and after[0].user_attrs == done.user_attrs
    assert Counter(t.params["tokenizer"] for t in after if t.state == TrialState.COMPLETE) == {
        "lac": 1,
        "mc": 1,
    }
    # The interrupted one failed (stale heartbeat) and was retried once, to completion.
    assert after[1].state == TrialState.FAIL and after[1].params == interrupted.params
    (retry,) = after[2:]
    assert retry.state == TrialState.COMPLETE and retry.params == interrupted.params
    assert retry.user_attrs["retry_of"] == interrupted.number
    assert retry.system_attrs["retry_history"] == [interrupted.number]
    progress = study_progress(load_study(spec))
    assert (progress.done, progress.running, progress.waiting) == (2, 0, 0)
    assert progress.superseded == {interrupted.number}


# ---------------------------------------------------------------------------------------- workers
def test_two_workers_on_one_sqlite_study_never_train_a_grid_point_twice(base_file: Path, tmp_path: Path):
    space = {"data.init_args.tokenizer": ["lac", "mc"], "data.init_args.tokenizer_args.subsample": [4, 8]}
    spec = SweepSpec.load(write_sweep(tmp_path, base_file, "workers", search_space=space))
    study = run_sweep(spec, workers=2, log=lambda line: None)
    trials = study.get_trials()
    trained = [t for t in trials if "train_seconds" in t.user_attrs]
    points = Counter((t.params["tokenizer"], t.params["subsample"]) for t in trained)
    assert set(points) == {(k, s) for k in ("lac", "mc") for s in (4, 8)}
    assert set(points.values()) == {1}, points  # each grid point trained exactly once
    assert all(t.state == TrialState.COMPLETE for t in trained)
    # Any extra trial is a duplicate a worker drew in a race, pruned before it trained.
    for t in trials:
        if "train_seconds" not in t.user_attrs:
            assert t.state == TrialState.PRUNED and "duplicate_of" in t.user_attrs, t
            assert not (spec.resolved_output_dir() / f"trial_{t.number:04d}" / "logs").exists()
    workers = {t.user_attrs["worker"] for t in trained}
    assert all(w.rsplit(":", 1)[1] != str(os.getpid()) for w in workers)  # trained by the workers
    assert study_progress(study).done == 4


# ------------------------------------------------------------------------- progress, binding, seeds
def test_progress_lines_count_estimate_and_name_the_best_trial(
    recorded: tuple[SweepSpec, optuna.Study, list[str]],
):
    spec, study, lines = recorded
    done = [line for line in lines if "] trial " in line]
    assert [line.split("]", 1)[0] for line in done] == ["[1/3", "[2/3", "[3/3"], lines
    assert all("complete: tokenizer=" in line and "elapsed 0:00:" in line and "ETA" in line for line in done)
    assert "ETA 0:00:00" in done[-1] and " | best #" in done[-1]
    best = max(study.get_trials(), key=lambda t: t.value)
    assert f"best trial #{best.number} (tokenizer={best.params['tokenizer']})" in lines[-1]
    assert lines[-1].endswith(f"report: rleseg report --study {spec.resolved_output_dir() / 'study.db'} "
                              f"--name records-cpu --out reports/records/")  # fmt: skip
    runs = study.user_attrs["runs"]
    assert len(runs) == 1 and runs[0]["workers"] == 1 and runs[0]["machine"] and runs[0]["version"]
    assert runs[0]["threads"] == torch.get_num_threads()


def test_dry_run_says_fits_or_over_budget_per_point(base_file: Path, tmp_path: Path):
    space = {"model.init_args.d_model": [16, 512]}
    spec = SweepSpec.load(
        write_sweep(tmp_path, base_file, "dry", search_space=space, budgets_mib=[64], repeats=2)
    )
    lines: list[str] = []
    points = run_sweep(spec, dry_run=True, log=lines.append)
    assert [p.params for p in points] == [{"d_model": 16}, {"d_model": 512}]  # seeds do not change memory
    assert lines[0].startswith("point 1/2 d_model=16: est ") and lines[0].endswith("MiB, fits (64 MiB)")
    assert lines[1].startswith("point 2/2 d_model=512: est ") and "over budget (" in lines[1]
    assert lines[2] == (
        "dry run dry-cpu: 1 of 2 points fit 64 MiB, 1 over budget (d_model=512); 2 seeds each: 2 trials to "
        "train; nothing was trained or stored"
    )
    assert "PRUNED" not in "\n".join(lines) and not (tmp_path / "out").exists()


def test_resume_after_editing_the_base_refuses_and_names_the_keys(
    base_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    # Budget 1 MiB: the trial is over budget and never trained; the study still binds its configuration.
    base = tmp_path / "base.yaml"
    base.write_text(base_file.read_text())
    path = write_sweep(
        tmp_path, base, "edited", search_space={"model.init_args.lr": [2.0e-3]}, budgets_mib=[1]
    )
    assert main(["sweep", "--config", str(path)]) == 0
    capsys.readouterr()
    config = yaml.safe_load(base.read_text())
    config["model"]["init_args"]["d_model"] = 24
    base.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["sweep", "--config", str(path), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[1] == "(set RLESEG_DEBUG=1 to see the traceback)", err  # one message line
    assert "ran another configuration; differing keys: model.init_args.d_model (16 -> 24)" in err[0]
    assert "start a new study" in err[0]
    study = load_study(SweepSpec.load(path))
    assert len(study.get_trials()) == 1  # nothing was added
    binding = study.user_attrs["binding"]
    assert binding["resolved_base"]["model"]["init_args"]["d_model"] == 16 and binding["base"] == "base.yaml"


def test_resumed_and_parallel_seeded_sweeps_never_replay_start_up_trials(base_file: Path, tmp_path: Path):
    # Over budget (1 MiB): nothing trains, every proposal is estimated and recorded. TPE seed 0: before
    # seeds were derived per run and worker, the resume (and each worker) replayed trial 0's parameters.
    space = {"model.init_args.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}}
    tpe = {"name": "tpe", "seed": 0}
    sweep = write_sweep(
        tmp_path, base_file, "seeded", search_space=space, budgets_mib=[1], sampler=tpe, n_trials=2
    )
    spec = SweepSpec.load(sweep)
    run_sweep(spec, log=lambda line: None)
    run_sweep(SweepSpec.load(sweep), resume=True, n_trials=4, log=lambda line: None)
    run_sweep(SweepSpec.load(sweep), resume=True, n_trials=8, workers=2, log=lambda line: None)
    study = load_study(spec)
    lrs = [t.params["lr"] for t in study.get_trials()]
    assert len(lrs) >= 8 and len(set(lrs)) == len(lrs), lrs
    assert all(t.user_attrs["outcome"] == "over_budget" for t in study.get_trials())
    runs = study.user_attrs["runs"]
    seeds = [s for run in runs for s in run["sampler_seeds"]]
    assert [len(run["sampler_seeds"]) for run in runs] == [1, 1, 2] and seeds[0] == 0
    assert len(set(seeds)) == 4


def test_dry_run_survives_points_that_cannot_be_built(base_file: Path, tmp_path: Path):
    # anchor: true refuses encodings whose start tokens name no 2-D cell. Each refusal happens half-way
    # through building the model under FakeTensorMode; the fake leftovers used to be freed later, inside
    # the next estimate or at exit, and corrupted the heap (SIGSEGV / "free(): corrupted ..." after 2+).
    path = write_sweep(
        tmp_path,
        base_file,
        "unbuildable",
        search_space={"data.init_args.tokenizer": ["gap", "rowwise", "lac2d", "lac"]},
        overrides={"model.init_args.anchor": True},
    )
    done = subprocess.run(
        [sys.executable, "-m", "rleseg", "sweep", "--config", str(path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("error: ValueError: anchor needs a tokenizer") == 3
    assert "1 of 4 points fit 1024 MiB, 3 could not be estimated" in done.stdout


def test_an_estimate_that_cannot_build_keeps_where_it_failed_as_text():
    from rleseg.memory import estimate_step_memory

    def make_step() -> Any:
        raise ValueError("no such model")

    with pytest.raises(ValueError) as caught:
        estimate_step_memory(make_step)
    assert str(caught.value) == "no such model" and caught.value.__traceback__ is not None
    if sys.version_info >= (3, 11):
        assert "in make_step" in "\n".join(caught.value.__notes__)
