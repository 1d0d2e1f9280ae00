"""The LightningModules: the data contract, own data with void labels, patched evaluation, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import TINY_TOKEN_MODEL

from rleseg.data import ImageSegDataModule
from rleseg.lightning_cli import RlesegCLI
from rleseg.module import DataInfo, DenseSegModule, RLESegModule
from rleseg.tokenizers import create_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SMALL_MODEL = [*TINY_TOKEN_MODEL, "--model.init_args.num_vis=2"]
TRAINER = [
    "--trainer.enable_progress_bar=false",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.max_epochs=1",
    "--trainer.logger=false",
]


def _fit(experiment: str, *args: str) -> RlesegCLI:
    cli = RlesegCLI(args=["--config", str(ROOT / "experiments" / experiment), *TRAINER, *args], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rleseg"])
    return tmp_path


# ------------------------------------------------------------------------------------ own data


@pytest.mark.parametrize("export", ["voc_export", "labelme_export"])
@pytest.mark.parametrize("experiment", ["quickstart.yaml", "dense_quickstart.yaml"])
def test_an_export_with_void_pixels_trains_through_the_normal_path(export, experiment, workdir, request):
    root = request.getfixturevalue(export)
    small = SMALL_MODEL if experiment == "quickstart.yaml" else ["--model.init_args.num_vis=2"]
    cli = _fit(
        experiment,
        *small,
        "--data.init_args.source=folder",
        f"--data.init_args.source_args={json.dumps({'root': str(root)})}",
        "--data.init_args.batch_size=4",
    )
    info = cli.model.info
    assert info.ignore_index == 255 and info.class_names[1:] == ["red_square", "green_square", "blue_square"]
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    assert 0.0 <= float(metrics["val/dice_mean"]) <= 1.0
    # the void pixels were in the validation masks, and no metric saw them as a class
    val = next(iter(cli.datamodule.val_dataloader()))
    assert (val["mask"] == 255).any() and not (val["token_mask"] == 255).any()


def test_void_pixels_weigh_nothing_in_the_dense_loss(voc_export):
    dm = ImageSegDataModule(source="folder", source_args={"root": str(voc_export)}, batch_size=4)
    dm.setup("fit")
    module = DenseSegModule(data_info=DataInfo.from_datamodule(dm), num_vis=0)
    batch = next(iter(dm.train_dataloader()))
    assert (batch["mask"] == 255).any()
    loss = module._loss(batch)
    cleaned = dict(batch, mask=torch.where(batch["mask"] == 255, 0, batch["mask"]))
    assert torch.isfinite(loss) and not torch.isclose(loss, module._loss(cleaned))


# --------------------------------------------------------------------------------- the contract


def test_the_module_builds_its_tokenizer_from_the_contract(data_fashion_dir):
    dm = ImageSegDataModule(
        source="composites", source_args={"data_dir": str(data_fashion_dir)}, tokenizer="lac", max_seq_len=128
    )
    info = DataInfo.from_datamodule(dm)
    module = RLESegModule(data_info=info, d_model=32, encoder_layers=1, decoder_layers=1, mlp_dim=64)
    assert module.tokenizer is not None and module.tokenizer is not dm.tokenizer
    assert module.tokenizer.vocab_size == dm.tokenizer.vocab_size
    mask = np.zeros(info.input_size, np.uint8)
    mask[8:20, 4:30] = 2
    assert np.array_equal(module.tokenizer.decode(dm.tokenizer.encode(mask)), mask)


def test_a_tokenizer_of_another_vocabulary_is_refused():
    info = DataInfo(num_classes=3, vocab_size=10, max_seq_len=16, input_size=(16, 16))
    module = RLESegModule(data_info=info, d_model=16, encoder_layers=1, decoder_layers=1, mlp_dim=32)
    assert module.tokenizer is None  # the contract names none: attach one by hand
    with pytest.raises(ValueError, match=r"tokenizer vocabulary \(\d+\) differs from the model's \(10\)"):
        module.attach_tokenizer(create_tokenizer("lac", num_classes=3, shape=(16, 16)))


def test_an_input_size_that_does_not_tile_names_the_nearest_valid_sides():
    info = DataInfo(num_classes=3, vocab_size=10, max_seq_len=16, input_size=(60, 64))
    with pytest.raises(ValueError, match=r"must be a multiple of 8 .* nearest valid sides: 56, 64"):
        RLESegModule(
            data_info=info, feature_stride=8, d_model=16, encoder_layers=1, decoder_layers=1, mlp_dim=32
        )


def test_a_non_finite_loss_stops_training_with_the_step(data_fashion_dir, monkeypatch):
    dm = ImageSegDataModule(
        source="composites", source_args={"data_dir": str(data_fashion_dir)}, tokenizer="lac", max_seq_len=128
    )
    dm.setup("fit")
    module = RLESegModule(
        data_info=DataInfo.from_datamodule(dm), d_model=16, encoder_layers=1, decoder_layers=1, mlp_dim=32
    )
    batch = next(iter(dm.train_dataloader()))
    monkeypatch.setattr(module, "_losses", lambda b, dense: (torch.tensor(float("nan")), None))
    with pytest.raises(FloatingPointError, match="non-finite training loss nan at step 0"):
        module.training_step(batch, 0)


# ------------------------------------------------------------------------------ evaluation paths


def test_patched_evaluation_stitches_whole_frames(workdir, data_fashion_dir, monkeypatch):
    monkeypatch.setenv("RLESEG_DATA_DIR", str(data_fashion_dir))
    cli = _fit(
        "quickstart.yaml",
        *SMALL_MODEL,
        "--data.init_args.patch_size=32",
        "--data.init_args.limit_train=16",
        "--data.init_args.limit_val=4",
        "--data.init_args.batch_size=4",
    )
    assert cli.model.info.input_size == (32, 32) and cli.model.info.patch_size == (32, 32)
    val = next(iter(cli.datamodule.val_dataloader()))
    out = cli.model.predict_masks(val)
    assert tuple(out["mask"].shape[-2:]) == (64, 64)  # whole frames, stitched from 4 patches
    assert "val/dice_mean" in cli.trainer.callback_metrics
    # the same geometry without the DataModule: the patch grid comes from the contract
    seg_input = {"image": val["image"]}
    assert tuple(cli.model.predict_masks(seg_input)["mask"].shape[-2:]) == (64, 64)


def test_predict_step_returns_masks_at_each_inputs_size(data_fashion_dir):
    dm = ImageSegDataModule(
        source="composites", source_args={"data_dir": str(data_fashion_dir)}, tokenizer="lac", max_seq_len=128
    )
    module = RLESegModule(
        data_info=DataInfo.from_datamodule(dm), d_model=16, encoder_layers=1, decoder_layers=1, mlp_dim=32
    )
    items = [
        {"raw": np.zeros((40, 90, 3), np.uint8), "path": "a.png", "frames": ["a.png"], "index": 0},
        {"raw": np.zeros((64, 64, 3), np.uint8), "path": "b.png", "frames": ["b.png"], "index": 1},
    ]
    out = module.predict_step(items, 0)
    assert [o["mask"].shape for o in out] == [(40, 90), (64, 64)]
    assert [o["path"] for o in out] == ["a.png", "b.png"]


def test_the_dense_baseline_can_be_an_smp_architecture(data_fashion_dir):
    pytest.importorskip("segmentation_models_pytorch")
    dm = ImageSegDataModule(
        source="composites", source_args={"data_dir": str(data_fashion_dir)}, tokenizer="lac", max_seq_len=128
    )
    dm.setup("fit")
    info = DataInfo.from_datamodule(dm)
    module = DenseSegModule(data_info=info, arch="unet", backbone="resnet10t", feature_stride=8, num_vis=0)
    assert type(module.model).__name__ == "SmpDenseSegmenter"
    batch = next(iter(dm.train_dataloader()))
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and tuple(module.predict_masks(batch)["mask"].shape) == tuple(
        batch["mask"].shape
    )


def test_pretrained_weights_get_the_normalisation_they_expect(monkeypatch):
    import rleseg.models.backbones as backbones

    info = DataInfo(num_classes=3, input_size=(32, 32))
    module = DenseSegModule(data_info=info, backbone="resnet10t", num_vis=0)
    assert module._renormalise(torch.ones(1, 3, 4, 4)).equal(torch.ones(1, 3, 4, 4))  # no weights: as is
    monkeypatch.setattr(backbones, "pretrained_normalisation", lambda name: ((0.5,) * 3, (0.5,) * 3))
    module._setup_input_normalisation("vit_clip_like", pretrained=True)
    pixels = torch.rand(1, 3, 4, 4)
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
    data = (pixels - mean) / std  # what the DataModule delivers (ImageNet statistics)
    assert torch.allclose(module._renormalise(data), (pixels - 0.5) / 0.5, atol=1e-5)


def test_the_cli_leaves_hf_hub_offline_to_the_user(monkeypatch):
    from rleseg.cli import _offline_defaults

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _offline_defaults()
    import os

    assert "HF_HUB_OFFLINE" not in os.environ
