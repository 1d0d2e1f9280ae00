"""Sweep files, config keys, study bookkeeping, export and the pruning callback (no model training here;
the sweeps that train are in ``test_sweep_runs.py``)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from rleseg.callbacks import MonitorError, OptunaPruning, SequenceLengths
from rleseg.commands import sweep as sweep_command
from rleseg.sweep import (
    SweepError,
    SweepSpec,
    budgets_fit,
    check_keys,
    config_differences,
    export_trials,
    is_over_budget,
    make_sampler,
    open_storage,
    requeue_interrupted,
    sampler_seed,
    set_dotted,
    study_progress,
)
from rleseg.sweep.study import create_study, set_budget_constraint

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"data.init_args.tokenizer": ["mc", "lac"], "data.init_args.tokenizer_args.subsample": [2, 4]}


def make_spec(**extra) -> SweepSpec:
    return SweepSpec.from_dict({"name": "t", "base": "base.yaml", "search_space": dict(SPACE), **extra})


# ------------------------------------------------------------------------------------ sweep files
def test_search_space_kinds_and_grid():
    spec = make_spec(
        search_space={
            "model.init_args.d_model": {"low": 64, "high": 256, "step": 64},
            "model.init_args.lr": {"low": 1e-4, "high": 1e-3, "log": True},
            "data.init_args.image_size": [[64, 64], [96, 96]],
        },
        sampler={"name": "tpe", "seed": 1},
        n_trials=5,
    )
    kinds = {p.name: p.kind for p in spec.params}
    assert kinds == {"d_model": "int", "lr": "float", "image_size": "categorical"}
    assert spec.param("d_model").grid_values() == [64, 128, 192, 256]
    size = spec.param("image_size")
    assert size.encoded and size.optuna_choices() == ["[64, 64]", "[96, 96]"]
    config = spec.trial_config({"image_size": "[96, 96]", "d_model": 128}, base={})
    assert config["data"]["init_args"]["image_size"] == [96, 96]
    assert config["model"]["init_args"]["d_model"] == 128
    assert spec.target_trials() == 5
    with pytest.raises(SweepError, match="continuous range"):
        spec.param("lr").grid_values()


def test_grid_rejects_continuous_range_and_tpe_needs_n_trials():
    with pytest.raises(SweepError, match="grid sampler needs a finite set"):
        make_spec(search_space={"model.init_args.lr": {"low": 1e-4, "high": 1e-3}})
    with pytest.raises(SweepError, match="needs `n_trials:`"):
        make_spec(sampler="tpe")


def test_grid_size_and_target_trials():
    spec = make_spec()
    assert spec.grid_size() == 4
    assert spec.target_trials() == 4
    assert spec.target_trials(3) == 3
    assert spec.target_trials(10) == 4  # a grid has only so many points


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"serach_space": {}}, r"unknown key\(s\) \['serach_space'\]"),
        (
            {"sampler": "bayes"},
            r"unknown sampler 'bayes'; choose one of \['grid', 'tpe', 'nsga2', 'random'\]",
        ),
        (
            {
                "pruner": "median",
                "objectives": [{"val/dice_mean": "maximize"}, {"tokens_per_mask_p95": "minimize"}],
            },
            "cannot prune multi-objective",
        ),
        ({"objectives": [{"val/dice_mean": "up"}]}, "must be one of"),
        ({"budgets_mib": [-5]}, "budgets_mib must be positive"),
        ({"runner": "thread"}, "runner must be one of"),
        ({"overrides": {"data.init_args.tokenizer": "mc"}}, "both searched and overridden"),
        ({"storage": {"heartbeat": 3}}, "storage has unknown key"),
    ],
)
def test_bad_sweep_files(extra, match):
    with pytest.raises(SweepError, match=match):
        make_spec(**extra)


def test_bad_search_space_entries():
    with pytest.raises(SweepError, match="put fixed values under `overrides:`"):
        make_spec(search_space={"model.init_args.d_model": 64})
    with pytest.raises(SweepError, match="low=4 is above high=2"):
        make_spec(search_space={"model.init_args.d_model": {"low": 4, "high": 2}})
    with pytest.raises(SweepError, match="unknown field"):
        make_spec(search_space={"model.init_args.d_model": {"low": 1, "hi": 2}})


def test_scales_merge_and_errors():
    data = {
        "name": "t",
        "base": "b.yaml",
        "search_space": dict(SPACE),
        "budgets_mib": [100],
        "overrides": {"trainer.max_epochs": 1},
        "scales": {
            "cpu": {},
            "gpu": {
                "budgets_mib": [8000, 16000],
                "overrides": {"trainer.max_epochs": 30},
                "search_space": {
                    "data.init_args.tokenizer_args.subsample": None,
                    "model.init_args.d_model": [256],
                },
            },
        },
    }
    cpu = SweepSpec.from_dict(dict(data))
    assert cpu.scale == "cpu" and cpu.budgets_mib == [100.0] and cpu.study_name == "t-cpu"
    gpu = SweepSpec.from_dict(dict(data), scale="gpu")
    assert gpu.budgets_mib == [8000.0, 16000.0] and gpu.budget_mib == 16000.0
    assert gpu.overrides == {"trainer.max_epochs": 30}
    assert [p.name for p in gpu.params] == ["tokenizer", "d_model"]
    assert gpu.resolved_output_dir().parts[-2:] == ("t", "gpu")
    with pytest.raises(SweepError, match=r"unknown scale 'tpu'; the sweep defines \['cpu', 'gpu'\]"):
        SweepSpec.from_dict(dict(data), scale="tpu")


def test_named_choices_set_several_keys_together():
    variants = {
        "plain": {"tokenizer": "video_lac", "static": False},
        "static": {"tokenizer": "ltac", "static": True},
    }
    spec = make_spec(
        search_space={
            "data.init_args": {"name": "variant", "choices": variants},
            "data.init_args.frames": [2, 4],
        }
    )
    variant = spec.param("variant")
    assert variant.grid_values() == ["plain", "static"] and spec.grid_size() == 4
    assert variant.config_keys() == ["data.init_args.tokenizer", "data.init_args.static"]
    assert variant.describe("static") == "variant=static"
    base = {"data": {"init_args": {"tokenizer": "tac", "static": False, "batch_size": 8}}}
    config = spec.trial_config({"variant": "static", "frames": 4}, base=base)
    assert config["data"]["init_args"] == {"tokenizer": "ltac", "static": True, "batch_size": 8, "frames": 4}
    # what a label stands for defines the trials: changing it makes another study
    changed = {**variants, "static": {"tokenizer": "tac", "static": True}}
    other = make_spec(search_space={"data.init_args": {"name": "variant", "choices": changed}})
    assert (
        other.fingerprint()
        != make_spec(search_space={"data.init_args": {"name": "variant", "choices": variants}}).fingerprint()
    )
    with pytest.raises(SweepError, match="both searched and overridden"):
        make_spec(
            search_space={"data.init_args": {"name": "variant", "choices": variants}},
            overrides={"data.init_args.static": True},
        )
    with pytest.raises(SweepError, match=r"two knobs are named \['tokenizer'\]"):
        make_spec(search_space={"data.init_args": {"name": "tokenizer", "choices": variants}, **SPACE})


def test_the_root_knob_sets_model_and_data_keys_together():
    variants = {
        "dense": {
            "model.class_path": "rleseg.module.DenseSegModule",
            "model.init_args": {"feature_stride": 8},
        },
        "fine": {"model.init_args.memory_stride": 4, "data.init_args.tokenizer_args.subsample": 2},
    }
    spec = make_spec(search_space={".": {"name": "variant", "choices": variants}})
    assert spec.param("variant").config_keys() == [
        "model.class_path",
        "model.init_args",
        "model.init_args.memory_stride",
        "data.init_args.tokenizer_args.subsample",
    ]
    base = {
        "model": {"class_path": "rleseg.module.RLESegModule", "init_args": {"d_model": 64}},
        "data": {"init_args": {"tokenizer_args": {"subsample": 4}}},
    }
    fine = spec.trial_config({"variant": "fine"}, base=base)
    assert fine["model"] == {
        "class_path": "rleseg.module.RLESegModule",
        "init_args": {"d_model": 64, "memory_stride": 4},
    }
    assert fine["data"]["init_args"]["tokenizer_args"] == {"subsample": 2}
    dense = spec.trial_config({"variant": "dense"}, base=base)
    assert dense["model"] == {
        "class_path": "rleseg.module.DenseSegModule",
        "init_args": {"feature_stride": 8},
    }
    assert base["model"]["init_args"] == {"d_model": 64}  # the base is not modified
    with pytest.raises(SweepError, match="unknown config key 'data.init_args.statik'"):
        check_keys(make_spec(search_space={"data.init_args": {"choices": {"a": {"statik": True}}}}), FULL)


def test_param_names_are_short_unless_ambiguous():
    spec = make_spec(search_space={"model.init_args.lr": [1e-3], "data.init_args.lr": [1], **SPACE})
    assert [p.name for p in spec.params] == [
        "model.init_args.lr",
        "data.init_args.lr",
        "tokenizer",
        "subsample",
    ]


def test_set_dotted_creates_and_refuses():
    config = {"data": {"init_args": {"tokenizer_args": None}}}
    set_dotted(config, "data.init_args.tokenizer_args.max_run", 8)
    assert config == {"data": {"init_args": {"tokenizer_args": {"max_run": 8}}}}
    with pytest.raises(SweepError, match="holds 8, not a mapping"):
        set_dotted(config, "data.init_args.tokenizer_args.max_run.x", 1)


def test_trial_config_routes_outputs(tmp_path: Path):
    spec = make_spec(overrides={"trainer.max_epochs": 2})
    base = {"trainer": {"logger": [{"class_path": "x.Logger", "init_args": {"save_dir": "runs"}}]}}
    config = spec.trial_config({"tokenizer": "lac", "subsample": 2}, base=base, trial_dir=tmp_path)
    trainer = config["trainer"]
    assert trainer["max_epochs"] == 2 and trainer["default_root_dir"] == str(tmp_path)
    assert trainer["logger"][0]["init_args"]["save_dir"] == str(tmp_path)
    assert trainer["enable_progress_bar"] is False
    assert config["data"]["init_args"] == {"tokenizer": "lac", "tokenizer_args": {"subsample": 2}}
    assert base["trainer"]["logger"][0]["init_args"]["save_dir"] == "runs"  # the base is not modified


def test_fingerprint_follows_the_search_space_and_the_binding_the_config():
    a, b = make_spec(), make_spec(budgets_mib=[10])
    assert a.fingerprint() == b.fingerprint()  # budgets filter trials, they do not change them
    assert a.fingerprint() != make_spec(objectives=["val/iou_mean"]).fingerprint()
    # the configuration is compared key by key (base contents + overrides), not through the fingerprint
    base = {"trainer": {"max_epochs": 1}, "model": {"init_args": {"d_model": 16}}}
    old = a.binding(base)["resolved_base"]
    new = make_spec(overrides={"trainer.max_epochs": 3}).binding(base)["resolved_base"]
    assert config_differences(old, new) == ["trainer.max_epochs (1 -> 3)"]
    bigger = {"trainer": {"max_epochs": 1}, "model": {"init_args": {"d_model": 24}}}
    assert config_differences(old, a.binding(bigger)["resolved_base"]) == [
        "model.init_args.d_model (16 -> 24)"
    ]


def test_binding_stores_contents_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "sweeps" / "bases").mkdir(parents=True)
    (tmp_path / "sweeps" / "bases" / "b.yaml").write_text("trainer: {max_epochs: 1}\n")
    sweep = tmp_path / "sweeps" / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "base": "bases/b.yaml", "search_space": dict(SPACE)}))
    monkeypatch.chdir(tmp_path)
    spec = SweepSpec.load("sweeps/s.yaml")
    binding = spec.binding()
    assert binding["resolved_base"] == {"trainer": {"max_epochs": 1}}
    assert binding["base"] == "bases/b.yaml" and binding["sweep_file"] == "sweeps/s.yaml"
    assert binding["sweep_text"] == sweep.read_text() and binding["version"]
    assert binding["commit"] is None  # not a git checkout
    assert spec.summary()["base"] == "bases/b.yaml" and not spec.resolved_output_dir().is_absolute()
    assert str(tmp_path) not in json.dumps([binding, spec.summary()])


def test_repeats_add_a_seed_knob_to_the_grid():
    spec = make_spec(repeats=3, overrides={"seed_everything": 5, "trainer.max_epochs": 1})
    seed = spec.param("seed")
    assert seed.key == "seed_everything" and list(seed.choices) == [5, 6, 7]
    assert spec.grid_size() == 12 and spec.overrides == {"trainer.max_epochs": 1}
    assert spec.trial_config({"tokenizer": "mc", "subsample": 2, "seed": 6}, base={})["seed_everything"] == 6
    assert spec.fingerprint() != make_spec(repeats=2).fingerprint()
    with pytest.raises(SweepError, match="repeats needs `sampler: grid`"):
        make_spec(repeats=2, sampler="tpe", n_trials=4)
    with pytest.raises(SweepError, match="remove seed_everything from the search space"):
        make_spec(repeats=2, search_space={**SPACE, "seed_everything": [0, 1]})
    with pytest.raises(SweepError, match="repeats must be a whole number"):
        make_spec(repeats=0)


# ---------------------------------------------------------------------------------- config keys
FULL = {
    "trainer": {"max_epochs": 1, "logger": None},
    "model": {"class_path": "m.M", "init_args": {"d_model": 8, "lr": 0.1}},
    "data": {
        "class_path": "d.D",
        "init_args": {"tokenizer": "lac", "tokenizer_args": {"subsample": 4}, "source_args": None},
    },
}


def test_check_keys_accepts_known_and_free_form_keys():
    spec = make_spec(
        search_space={
            "data.init_args.tokenizer_args.max_run": [4, 8],
            "data.init_args.source_args.canvas": [32],
        },
        overrides={"trainer.max_epochs": 1, "model.init_args.d_model": 16},
    )
    check_keys(spec, FULL)


def test_check_keys_names_the_valid_keys():
    spec = make_spec(search_space={"model.init_args.dmodel": [8, 16]})
    with pytest.raises(SweepError) as err:
        check_keys(spec, FULL)
    message = str(err.value)
    assert "unknown config key 'model.init_args.dmodel'" in message
    assert "did you mean ['model.init_args.d_model'" in message
    assert "valid keys under model.init_args: model.init_args.d_model, model.init_args.lr" in message
    with pytest.raises(SweepError, match="unknown config key 'trainer.epochs'"):
        check_keys(make_spec(overrides={"trainer.epochs": 1}), FULL)


def test_check_keys_against_the_real_base_config():
    spec = SweepSpec.from_dict(
        {
            "name": "q",
            "base": str(ROOT / "experiments" / "quickstart.yaml"),
            "search_space": {"model.init_args.num_head": [2, 4]},
        }
    )
    with pytest.raises(SweepError, match=r"did you mean \['model.init_args.num_heads'"):
        check_keys(spec)


# ------------------------------------------------------------------------------- bookkeeping
DIST = {"tokenizer": CategoricalDistribution(["mc", "lac"])}


def _add(study, state, number_params, **attrs):
    study.add_trial(
        create_trial(
            state=state,
            value=0.5 if state == TrialState.COMPLETE else None,
            params={"tokenizer": number_params},
            distributions=DIST,
            user_attrs=attrs.get("user_attrs", {}),
            system_attrs=attrs.get("system_attrs", {}),
        )
    )


def test_study_progress_counts_retries_duplicates_and_interruptions(tmp_path: Path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=False)
    study = optuna.create_study(storage=storage, direction="maximize")
    _add(study, TrialState.COMPLETE, "mc")  # 0
    _add(study, TrialState.FAIL, "lac")  # 1: died, retried as 2
    _add(study, TrialState.COMPLETE, "lac", system_attrs={"failed_trial": 1, "retry_history": [1]})  # 2
    _add(study, TrialState.PRUNED, "mc", user_attrs={"duplicate_of": 0})  # 3
    _add(study, TrialState.FAIL, "mc", user_attrs={"error": "ValueError: bad"})  # 4: a real failure counts
    _add(study, TrialState.FAIL, "lac", user_attrs={"interrupted": True, "error": "KeyboardInterrupt"})  # 5
    progress = study_progress(study)
    assert (progress.done, progress.running, progress.waiting) == (3, 0, 0)
    assert progress.superseded == {1}

    assert requeue_interrupted(study, max_retry=3) == 1
    retry = study.get_trials(states=(TrialState.WAITING,))[0]
    assert retry.params == {"tokenizer": "lac"} and retry.system_attrs["retry_history"] == [5]
    assert "interrupted" not in retry.user_attrs
    progress = study_progress(study)
    assert progress.waiting == 1 and progress.superseded == {1, 5}
    assert requeue_interrupted(study, max_retry=3) == 0  # already queued

    frame = export_trials(study, tmp_path / "t.csv")
    assert list(frame["number"]) == [0, 1, 2, 3, 4, 5, 6]
    assert list(frame["superseded"]) == [False, True, False, False, False, True, False]
    assert {"param_tokenizer", "duplicate_of", "error", "state"} <= set(frame.columns)
    assert (tmp_path / "t.csv").read_text().startswith("number,state,superseded,duration_s,param_tokenizer")


def test_budget_rule_and_constraint_through_the_current_api():
    assert budgets_fit(120.0, [100, 140, 200]) == [140.0, 200.0] and is_over_budget(250.0, [100, 200])
    assert not is_over_budget(250.0, [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation (constraints_func) or experimental warning
        spec = make_spec(sampler={"name": "tpe", "seed": 0}, n_trials=3, budgets_mib=[512])
        study = create_study(spec, None, make_sampler(spec))  # in memory, objectives named
        trial = study.ask()
        set_budget_constraint(trial, 600.0, spec.budget_mib)
        study.tell(trial, state=TrialState.PRUNED)
        make_sampler(make_spec(sampler={"name": "nsga2", "seed": 1}, n_trials=3))
    (frozen,) = study.get_trials()
    assert frozen.constraints == {"estimated_peak_over_budget_mib": 88.0}
    assert study.metric_names == ["val/dice_mean"]


def _startup_params(spec: SweepSpec, run: int, worker: int, n: int = 4) -> list[tuple]:
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec, run=run, worker=worker))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(tuple(sorted((p.name, p.suggest(trial)) for p in spec.params)))
        study.tell(trial, 0.5)
    return out


@pytest.mark.parametrize("sampler", ["tpe", "random", "nsga2"])
def test_workers_and_resumes_never_replay_start_up_trials(sampler: str):
    """Each (run, worker) pair gets its own seed, derived deterministically from the sweep's seed."""
    space = {
        "model.init_args.lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "model.init_args.d_model": [8, 16],
    }
    spec = make_spec(search_space=space, sampler={"name": sampler, "seed": 0}, n_trials=8)
    pairs = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]
    seeds = [sampler_seed(0, run, worker) for run, worker in pairs]
    assert seeds[0] == 0 and len(set(seeds)) == len(seeds)
    assert seeds == [sampler_seed(0, run, worker) for run, worker in pairs]  # deterministic
    proposals = [_startup_params(spec, run, worker) for run, worker in pairs]
    flat = [p for props in proposals for p in props]
    assert len(set(flat)) == len(flat)  # no start-up point proposed twice
    assert proposals[0] == _startup_params(spec, 0, 0)  # the same run and worker reproduce their points


# ------------------------------------------------------------------------------- pruning callback
class ScoreModule(LightningModule):
    """Logs ``val/score`` = 1, 0.8, 0.6, ... over epochs."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", 1.0 - 0.2 * self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 2)), batch_size=2)

    val_dataloader = train_dataloader


def _fit(callback, epochs: int = 5) -> Trainer:
    trainer = Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(ScoreModule())
    return trainer


def test_pruning_callback_stops_training_when_the_pruner_says_so():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    callback = OptunaPruning(trial, monitor="val/score")
    trainer = _fit(callback)
    assert callback.pruned
    # values pass through float32 logging: compare approximately
    assert [step for step, _ in callback.reports] == [0, 1, 2, 3]
    assert [value for _, value in callback.reports] == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert trainer.current_epoch == 4  # stopped after the 4th validation, not 5 epochs
    assert "pruned at validation 3" in callback.message
    frozen = study.get_trials(deepcopy=False)[0]
    assert frozen.intermediate_values == pytest.approx({0: 1.0, 1: 0.8, 2: 0.6, 3: 0.4})


def test_pruning_callback_reports_every_validation_without_pruning():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    callback = OptunaPruning(study.ask(), monitor="val/score")
    trainer = _fit(callback, epochs=3)
    assert not callback.pruned and trainer.current_epoch == 3
    assert [step for step, _ in callback.reports] == [0, 1, 2]


def test_pruning_callback_rejects_a_metric_never_logged():
    study = optuna.create_study(direction="maximize")
    with pytest.raises(
        MonitorError, match=r"'val/dice_mean' was not logged; logged metrics: \['val/score'\]"
    ):
        _fit(OptunaPruning(study.ask(), monitor="val/dice_mean"), epochs=1)


def test_sequence_lengths_counts_content_tokens():
    lengths = SequenceLengths()
    # prompt 2, content, EOS 1, PAD 0
    tokens = torch.tensor([[2, 7, 8, 9, 1, 0], [2, 7, 1, 0, 0, 0], [2, 7, 8, 9, 10, 11]])
    lengths.on_validation_epoch_start(None, None)
    lengths.on_validation_batch_end(
        None, None, None, {"tokens": tokens, "truncated": torch.tensor([0, 0, 1])}, 0
    )
    lengths.on_validation_epoch_end(None, None)
    summary = lengths.summary()
    assert summary["tokens_per_mask_max"] == 5 and summary["tokens_per_mask_p50"] == 3
    assert summary["truncated_fraction"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------ the command
def test_command_reports_an_unknown_key_with_the_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture):
    from rleseg.cli import main

    sweep = tmp_path / "bad.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "bad",
                "base": str(ROOT / "experiments" / "quickstart.yaml"),
                "search_space": {"data.init_args.tokeniser": ["mc", "lac"]},
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    assert main(["sweep", "--config", str(sweep), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'data.init_args.tokeniser'" in err
    assert "data.init_args.tokenizer_args" in err and "data.init_args.batch_size" in err
    assert not (tmp_path / "out").exists()


def test_command_parser_and_argument_errors(tmp_path: Path):
    parser = argparse.ArgumentParser()
    sweep_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sweep", "--config", "x.yaml", "--workers", "0"])
    with pytest.raises(SweepError, match="--workers must be >= 1"):
        sweep_command.run(args)
    args = parser.parse_args(["sweep", "--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        sweep_command.run(args)


# ------------------------------------------------------------------------- the committed sweeps
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))


def _scales(path: Path) -> list[str]:
    return sorted((yaml.safe_load(path.read_text()).get("scales") or {"cpu": {}}).keys())


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_every_committed_sweep_and_scale_builds_its_trials(path: Path, tmp_path: Path, capsys):
    """Each scale of each sweeps/*.yaml: its keys exist in the base experiment, and every grid point
    gives a trial config; a named choice that swaps a whole section (token_vs_dense's `model`) must
    give a config the CLI accepts as it stands."""
    import itertools

    from rleseg.lightning_cli import RlesegCLI

    assert SWEEP_FILES, "no sweeps/*.yaml found"
    for scale in _scales(path):
        spec = SweepSpec.load(path, scale=scale)
        check_keys(spec)
        grid = spec.grid()
        points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
        assert len(points) == spec.grid_size() > 0
        base = spec.base_config()
        for params in points:
            config = spec.trial_config(params, base=base)
            assert config["model"]["class_path"].startswith("rleseg.module.")
            swaps_section = any(p.labels and p.key in ("model", "data") for p in spec.params)
            if swaps_section and scale == "cpu":
                trial_file = tmp_path / "trial.yaml"
                trial_file.write_text(yaml.safe_dump(config))
                with pytest.raises(SystemExit) as done:
                    RlesegCLI(args=["--config", str(trial_file), "--print_config"], run=False)
                assert done.value.code in (0, None), capsys.readouterr().err
                assert config["model"]["class_path"] in capsys.readouterr().out
