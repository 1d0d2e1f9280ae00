"""What a run shows people: the closing summary, pictures and learning rate in the loggers, legends."""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import TINY_TOKEN_MODEL

from rleseg.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--config",
    str(ROOT / "experiments" / "quickstart.yaml"),
    *TINY_TOKEN_MODEL,
    "--model.init_args.num_vis=2",
    "--data.init_args.limit_train=16",
    "--data.init_args.limit_val=4",
    "--data.init_args.batch_size=4",
    "--trainer.max_epochs=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.log_every_n_steps=1",
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch, data_fashion_dir: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RLESEG_DATA_DIR", str(data_fashion_dir))
    monkeypatch.setattr(sys, "argv", ["rleseg"])
    return tmp_path


def test_fit_ends_with_its_dice_and_the_best_checkpoint(workdir, capsys):
    assert main(["fit", *TINY, "--trainer.logger=false"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    tail = "\n".join(lines[-10:])
    assert lines[-1].startswith("  run folder: ")
    assert lines[-2].startswith("  best checkpoint: ") and ".ckpt (val/dice_mean " in lines[-2]
    best = lines[-2].split("best checkpoint: ")[1].split(" (")[0]
    assert Path(best).is_file()
    assert "mean (foreground)" in tail and "token resolution" in tail and "ceiling" in tail, tail
    for name in ("clothing", "footwear", "bag"):  # every class has its Dice (per-class keys are logged)
        row = next(line for line in lines[-10:] if line.startswith(f"  {name}"))
        assert row.split()[-1] != "-", row

    # validate with that checkpoint ends with its own table, naming the checkpoint
    assert main(["validate", *TINY, "--trainer.logger=false", f"--ckpt_path={best}"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"  checkpoint: {best}" and any("mean (foreground)" in line for line in out[-6:])


def test_a_tensorboard_run_holds_pictures_and_the_learning_rate(workdir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loggers = (
        "[{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: runs}},"
        " {class_path: lightning.pytorch.loggers.TensorBoardLogger, init_args: {save_dir: runs}}]"
    )
    assert main(["fit", *TINY, f"--trainer.logger={loggers}"]) == 0
    # both loggers named after the experiment file, in one version folder
    folder = workdir / "runs" / "quickstart" / "version_0"
    assert (folder / "metrics.csv").is_file()
    events = glob.glob(str(folder / "events.out.tfevents.*"))
    assert events, sorted(p.name for p in folder.iterdir())
    acc = EventAccumulator(events[0], size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert {"val/predictions", "val/confusion_matrix"} <= set(acc.Tags()["images"])
    scalars = set(acc.Tags()["scalars"])
    assert any(tag.startswith("lr-") for tag in scalars), scalars  # LearningRateMonitor, on by default
    hp = [event.value for event in acc.Scalars("hp_metric")]
    dice = [event.value for event in acc.Scalars("val/dice_mean")]
    # hp_metric follows the validation Dice (after Lightning's -1 placeholder at the start)
    assert dice and hp[-len(dice) :] == dice
    # the PNG files are named by step: two validations of two epochs, never overwritten
    pictures = sorted(p.name for p in (folder / "val_predictions").iterdir())
    assert len([p for p in pictures if p.startswith("epoch_")]) == 2
    assert all("_step" in p for p in pictures)


def test_prediction_grids_have_a_legend_and_void_is_grey(tmp_path):
    from PIL import Image

    from rleseg.visualize import class_colors, legend_strip, overlay, save_prediction_grid

    colors = class_colors(4)
    assert len({tuple(c) for c in colors[1:]}) == 3
    assert colors[3].tolist() != [44 / 255, 160 / 255, 44 / 255]  # the bag is no longer green
    images = np.zeros((2, 3, 16, 16), np.float32)
    masks = np.zeros((2, 16, 16), np.int64)
    masks[:, 4:8, 4:8] = 3
    masks[:, 0, :] = 255  # void
    plain = save_prediction_grid(tmp_path / "plain.png", images, masks, masks, 4)
    named = save_prediction_grid(
        tmp_path / "named.png", images, masks, masks, 4, class_names=["bg", "a", "b", "bag"]
    )
    assert Image.open(plain).size == Image.open(named).size
    over = overlay(np.zeros((16, 16, 3), np.float32), masks[0], 4)
    assert np.allclose(over[0, 0], 0.25)  # void: half grey over black
    strip = legend_strip(60, 4, ["bg", "a", "b", "bag"])
    assert strip.shape[1:] == (60, 3) and strip.shape[0] >= 3 * 14
