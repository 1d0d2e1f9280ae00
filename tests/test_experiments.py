"""Every experiment YAML in the repo trains one batch and validates one batch (``fast_dev_run``).

The data is shrunk to a handful of samples and the model keeps its configured size, so no config in
``experiments/`` can rot unnoticed (the lightning-hydra-template habit).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rleseg.lightning_cli import RlesegCLI

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))

TINY_DATA = [
    "--data.init_args.limit_train=8",
    "--data.init_args.limit_val=4",
    "--data.init_args.batch_size=2",
    "--data.init_args.num_workers=0",
]


def test_experiments_exist():
    names = {p.stem for p in EXPERIMENTS}
    assert "quickstart" in names
    assert len(names) >= 8, names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_fast_dev_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "argv", ["rleseg"])  # LightningCLI reads args=..., not pytest's argv
    monkeypatch.chdir(tmp_path)  # runs/ and checkpoints land in the temporary folder
    monkeypatch.setenv("RLESEG_DATA_DIR", str(ROOT / "data_cache"))
    cli = RlesegCLI(args=["fit", "--config", str(path), "--trainer.fast_dev_run=1", *TINY_DATA])
    trainer = cli.trainer
    assert trainer.state.finished, trainer.state
    assert trainer.global_step == 1
    metrics = trainer.callback_metrics
    assert "train/loss" in metrics and bool(metrics["train/loss"].isfinite())
    assert "val/dice_mean" in metrics, sorted(metrics)
    # every model reports its decode time per image (the sweep reports' decode-time axis), dense included
    assert float(metrics["val/decode_seconds_per_image"]) > 0, sorted(metrics)
    # each validation epoch leaves the overlays and the confusion matrix beside them
    pictures = {p.name for p in tmp_path.rglob("val_predictions/*.png")}
    assert {"epoch_000_step000001.png", "confusion_000_step000001.png"} <= pictures, pictures
