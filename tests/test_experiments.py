"""Every experiment YAML in the repo trains one batch and validates one batch (``fast_dev_run``).

The data is shrunk to a handful of samples and the model keeps its configured size, so no config in
``experiments/`` can rot unnoticed (the lightning-hydra-template habit). The experiments are composed
from pieces under ``experiments/shared/``: the pieces are really shared, each experiment builds the model
sizes it states, and :func:`rleseg.commands.experiments.compose_experiment` (what ``rleseg experiments
copy`` writes and sweeps start from) reads them as LightningCLI does.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import yaml

from rleseg.commands.experiments import (
    CompositionError,
    compose_experiment,
    composed_text,
    header,
    pieces,
)
from rleseg.lightning_cli import RlesegCLI

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
SHARED = sorted((ROOT / "experiments" / "shared").glob("*.yaml"))

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
    # the default loggers are named after the experiment file, not after a shared piece it includes
    names = {logger.init_args.name for logger in cli.config["fit"]["trainer"]["logger"]}
    assert names == {path.stem}, names


# ------------------------------------------------------------------------------------ composition
def test_shared_pieces_are_shared():
    """Each piece under experiments/shared/ is read by two or more experiments, every experiment reads
    the shared trainer, and no model or data block is written out in two experiment files."""
    users = {piece: [] for piece in SHARED}
    for path in EXPERIMENTS:
        read = pieces(path)
        assert ROOT / "experiments" / "shared" / "trainer.yaml" in read, path.name
        for piece in read[1:]:
            users[piece].append(path.stem)
    lonely = {p.name: u for p, u in users.items() if len(u) < 2}
    assert not lonely, f"pieces read by fewer than two experiments: {lonely}"
    inline: dict[str, list[tuple[str, object]]] = {"model": [], "data": [], "trainer": []}
    for path in EXPERIMENTS:
        raw = yaml.safe_load(path.read_text())
        for key in inline:
            if isinstance(raw.get(key), dict):
                inline[key].append((path.stem, raw[key]))
    for key, blocks in inline.items():
        for i, (name, block) in enumerate(blocks):
            twins = [other for other, b in blocks[i + 1 :] if b == block]
            assert not twins, f"the {key} block of {name} is repeated in {twins}: make it a shared piece"
    assert not inline["model"], "models come from experiments/shared/model_*.yaml"


def _sizes(mlp_dim: int) -> dict:
    return dict(backbone="resnet10t", feature_stride=8, d_model=128, layers=2, heads=4, mlp_dim=mlp_dim)


#: The model each token experiment builds (``resolve_preset`` of its composed options): the `tiny`
#: preset, with the quickstart's narrower MLP where the headers say so.
TOKEN_SIZES = {
    "quickstart": _sizes(256),
    "image_mri_lobes": _sizes(256),
    "panoptic_composites": _sizes(512),
    "panoptic_nuclei": _sizes(512),
    "video_composites_plain": _sizes(512),
    "video_composites_tac": _sizes(512),
    "video_composites_ltac": _sizes(512),
    "video_composites_static": _sizes(512),
}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_builds_the_sizes_it_states(path: Path):
    from rleseg.module import resolve_preset

    model = compose_experiment(path)["model"]
    if not model["class_path"].endswith("RLESegModule"):
        assert path.stem.startswith("dense_"), path.stem
        assert model["init_args"]["backbone"] == "resnet10t"
        return
    sizes = resolve_preset(model["init_args"])
    layers = {sizes["encoder_layers"], sizes["decoder_layers"]}
    got = dict(
        backbone=sizes["backbone"],
        feature_stride=sizes["feature_stride"],
        d_model=sizes["d_model"],
        layers=layers.pop() if len(layers) == 1 else sorted(layers),
        heads=sizes["num_heads"],
        mlp_dim=sizes["mlp_dim"],
    )
    assert got == TOKEN_SIZES[path.stem]


def _printed(config: Path) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        RlesegCLI(args=["--config", str(config), "--print_config"], run=False)
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(out.getvalue())
    printed.pop("config", None)
    return printed


def test_composed_copies_parse_as_the_experiments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``rleseg experiments copy`` writes one file per experiment that LightningCLI reads as it reads the
    experiment with its pieces (the same --print_config), and keeps the header."""
    monkeypatch.setattr(sys, "argv", ["rleseg"])
    for path in EXPERIMENTS:
        copy = tmp_path / path.name
        text = composed_text(path, ROOT)
        copy.write_text(text)
        assert text.startswith(header(path)), path.name
        assert "config" not in yaml.safe_load(text), path.name
        assert _printed(copy) == _printed(path), path.name


def test_composition_rules(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("seed_everything: 1\ntrainer: {max_epochs: 3, devices: 1}\n")
    (tmp_path / "model.yaml").write_text("class_path: a.B\ninit_args: {x: 1}\n")
    good = tmp_path / "good.yaml"
    good.write_text("config: base.yaml\ntrainer.max_epochs: 5\nmodel: model.yaml\ndata: {class_path: c.D}\n")
    assert compose_experiment(good) == {
        "seed_everything": 1,
        "trainer": {"max_epochs": 5, "devices": 1},
        "model": {"class_path": "a.B", "init_args": {"x": 1}},
        "data": {"class_path": "c.D"},
    }
    bad = {
        "late.yaml": ("trainer.max_epochs: 5\nconfig: base.yaml\n", "must be the first key"),
        "whole.yaml": ("config: base.yaml\ntrainer: {max_epochs: 5}\n", "replaces the whole `trainer`"),
        "mixed.yaml": ("model: model.yaml\nmodel.init_args.x: 2\n", "holds 'model.yaml'"),
        "loop.yaml": ("config: loop.yaml\n", "includes itself"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(CompositionError, match=message):
            compose_experiment(tmp_path / name)
    (tmp_path / "gone.yaml").write_text("config: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        compose_experiment(tmp_path / "gone.yaml")


def test_experiments_command(tmp_path: Path, capsys: pytest.CaptureFixture):
    from rleseg.cli import main

    assert main(["experiments"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {p.stem} " in listed for p in EXPERIMENTS) and "  encodings " in listed
    assert main(["experiments", "copy", "quickstart", str(tmp_path)]) == 0
    copy = tmp_path / "quickstart.yaml"
    assert yaml.safe_load(copy.read_text()) == compose_experiment(ROOT / "experiments" / "quickstart.yaml")
    capsys.readouterr()
    assert main(["experiments", "copy", "quickstart", str(tmp_path)]) == 2  # no silent overwrite
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["experiments", "copy", "sweeps/video", str(tmp_path / "sw")]) == 0
    sweep = yaml.safe_load((tmp_path / "sw" / "video.yaml").read_text())
    assert (tmp_path / "sw" / sweep["base"]).is_file()
    capsys.readouterr()
    assert main(["experiments", "show", "nonesuch"]) == 2
    assert "no experiment or sweep named 'nonesuch'" in capsys.readouterr().err
