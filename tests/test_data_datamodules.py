"""DataModules: real batches decode strictly back to their targets; bad combinations fail in __init__;
samples are identical across worker counts; patched evaluation stitches back exactly; folders train."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from rleseg.data import DataError, ImageSegDataModule, PanopticDataModule, VideoSegDataModule, stitch_patches
from rleseg.tokenizers import list_tokenizers


def _composites(data_dir: Path, **kw) -> dict:
    return {
        "data_dir": str(data_dir),
        "canvas": 32,
        "num_train": 24,
        "num_val": 6,
        "num_test": 4,
        "clip_len": 6,
        **kw,
    }


def _check_decodes(dm, batch: dict) -> None:
    """Every untruncated sequence decodes strictly to the batch's token mask."""
    tokens, target = batch["tokens"].numpy(), batch["token_mask"].numpy()
    assert tokens.shape == (len(target), dm.max_seq_len) and tokens.dtype == np.int64
    assert not batch["truncated"].all()
    for row, want, cut in zip(tokens, target, batch["truncated"].tolist(), strict=True):
        if not cut:
            assert np.array_equal(dm.tokenizer.decode(row, strict=True), want)


@pytest.mark.parametrize("tokenizer", ["lac", "mc", "mc2d", "gap", "rowwise"])
def test_image_batches_decode_to_their_targets(data_fashion_dir: Path, tokenizer: str) -> None:
    dm = ImageSegDataModule(
        source_args=_composites(data_fashion_dir),
        tokenizer=tokenizer,
        tokenizer_args={"subsample": 2},
        max_seq_len=384,
        batch_size=6,
    )
    assert (dm.task, dm.num_classes, dm.input_size, dm.frames, dm.in_chans) == ("image", 4, (32, 32), 1, 3)
    assert dm.class_names[0] == "background" and dm.vocab_size == dm.tokenizer.vocab_size
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        assert batch["image"].shape == (6, 3, 32, 32) and batch["image"].dtype == torch.float32
        assert batch["mask"].shape == (6, 32, 32) and batch["mask"].dtype == torch.int64
        assert batch["token_mask"].shape == (6, 16, 16) and batch["num_runs"].dtype == torch.int64
        _check_decodes(dm, batch)


def test_real_sources_through_the_image_datamodule(
    data_mri_dir: Path, tmp_path: Path, data_fake_wheel: Path
) -> None:
    mri = ImageSegDataModule(
        source="mri", source_args={"data_dir": str(data_mri_dir), "grouping": "lobes"}, image_size=64,
        tokenizer="lac", tokenizer_args={"subsample": 2}, max_seq_len=512, batch_size=4,
    )  # fmt: skip
    batch = next(iter(mri.val_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and int(batch["mask"].max()) < 9
    _check_decodes(mri, batch)
    nuclei = ImageSegDataModule(
        source="nuclei", source_args={"data_dir": str(tmp_path), "wheel": str(data_fake_wheel), "tile": 64},
        tokenizer="binary", tokenizer_args={"subsample": 2}, max_seq_len=256, batch_size=4,
    )  # fmt: skip
    assert nuclei.num_classes == 2 and nuclei.thing_classes == [1]
    _check_decodes(nuclei, next(iter(nuclei.train_dataloader())))


@pytest.mark.parametrize(
    ("tokenizer", "static"),
    [("tac", False), ("ltac", False), ("video_mc", False), ("video_lac", False), ("tac", True)],
)
def test_video_batches_decode_to_their_targets(data_fashion_dir: Path, tokenizer: str, static: bool) -> None:
    dm = VideoSegDataModule(
        source_args=_composites(data_fashion_dir),
        tokenizer=tokenizer,
        tokenizer_args={"subsample": 4},
        frames=2,
        static=static,
        max_seq_len=512,
        batch_size=4,
    )
    assert dm.task == ("static_video" if static else "video") and dm.frames == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 2, 3, 32, 32)  # static video still carries every frame
    assert batch["mask"].shape == (4, 2, 32, 32) and batch["token_mask"].shape == (4, 2, 8, 8)
    assert (batch["tokens"][:, 0] == (4 if static else 3)).all()  # the task prompt
    _check_decodes(dm, batch)
    # train windows: stride 1 over 6-frame clips; eval windows: stride T, so frames 0..5 are all covered
    assert len(dm.datasets["train"]) == 24 * 5
    val = dm.val_dataloader().dataset
    assert len(val) == 6 * 3 and sorted({int(f) for i in range(3) for f in val[i]["frame_ids"]}) == list(
        range(6)
    )


def test_video_eval_stride_and_final_window(data_fashion_dir: Path) -> None:
    dm = VideoSegDataModule(
        source_args=_composites(data_fashion_dir), frames=4, eval_stride=4, max_seq_len=1024
    )
    dm.setup("validate")
    starts = [int(dm.datasets["val"][i]["frame_ids"][0]) for i in range(2)]
    assert starts == [0, 2]  # 6 frames, T=4: a second window flush with the end


@pytest.mark.skipif("panoptic" not in list_tokenizers(), reason="the panoptic tokenizer is not registered")
def test_panoptic_batches_decode_to_their_targets(data_fashion_dir: Path) -> None:
    dm = PanopticDataModule(
        source_args=_composites(data_fashion_dir, stuff_labels=True),
        tokenizer_args={"subsample": 2},
        max_seq_len=512,
    )
    assert dm.task == "panoptic" and dm.thing_classes == [1, 2, 3] and dm.label_divisor == 1000
    batch = next(iter(dm.val_dataloader()))
    assert int(batch["mask"].max()) > 1000 and (batch["mask"] // 1000).max() <= 6
    _check_decodes(dm, batch)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (ImageSegDataModule, {"tokenizer": "tac"}, r"task 'video'.*image tokenizer: one of \[.*'lac'"),
        (VideoSegDataModule, {"tokenizer": "lac"}, r"task 'image'.*video tokenizer: one of \[.*'tac'"),
        (PanopticDataModule, {"tokenizer": "mc"}, r"panoptic tokenizer"),
        (ImageSegDataModule, {"tokenizer": "nope"}, r"unknown tokenizer 'nope'; registered"),
        (ImageSegDataModule, {"tokenizer": "mc", "max_seq_len": 4}, r"max_seq_len=4 cannot hold.*at least 5"),
        (ImageSegDataModule, {"source": "imagenet"}, r"unknown source 'imagenet'"),
        (VideoSegDataModule, {"tokenizer": "video_mc", "static": True}, r"static=True needs"),
        (
            ImageSegDataModule,
            {"patch_size": 16, "patch_stride": 6, "tokenizer_args": {"subsample": 4}},
            r"patch_stride \(6, 6\) must be a multiple of the subsampling factor 4",
        ),
        (ImageSegDataModule, {"patch_size": 64}, r"larger than the images"),
        (ImageSegDataModule, {"augment": {"blur": 1}}, r"unknown augment keys"),
    ],
)
def test_bad_combinations_fail_in_init(data_fashion_dir: Path, cls, kwargs, message) -> None:
    kwargs = {"source_args": _composites(data_fashion_dir), **kwargs}
    if kwargs.get("source") == "imagenet":
        kwargs.pop("source_args")
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_video_source_required(tmp_path: Path, data_fake_wheel: Path) -> None:
    with pytest.raises(DataError, match="has no clips"):
        VideoSegDataModule(
            source="nuclei", source_args={"data_dir": str(tmp_path), "wheel": str(data_fake_wheel)}
        )


def _batches(dm, n: int = 3) -> list[dict]:
    out = []
    for i, batch in enumerate(dm.train_dataloader()):
        out.append(batch)
        if i + 1 == n:
            break
    return out


def test_same_seed_same_samples_for_any_worker_count(data_fashion_dir: Path) -> None:
    def make(workers: int, seed: int = 0) -> ImageSegDataModule:
        return ImageSegDataModule(
            source_args=_composites(data_fashion_dir),
            tokenizer_args={"subsample": 2},
            max_seq_len=256,
            batch_size=4,
            num_workers=workers,
            seed=seed,
            patch_size=16,
            patch_stride=8,
            patch_jitter=4,
            augment={"hflip": 0.5, "affine": {"p": 0.8, "rotate": [-20, 20]}, "color": {"p": 0.5}},
        )

    a, b = _batches(make(0)), _batches(make(2))
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        for key in x:
            assert torch.equal(x[key], y[key]), key
    c = _batches(make(0, seed=1))
    assert not torch.equal(a[0]["image"], c[0]["image"])


def test_each_epoch_draws_new_augmentations(data_fashion_dir: Path) -> None:
    dm = ImageSegDataModule(
        source_args=_composites(data_fashion_dir),
        max_seq_len=1024,
        batch_size=24,
        augment={"affine": {"p": 1.0, "rotate": [-30, 30]}},
    )
    loader = dm.train_dataloader()
    first, second = next(iter(loader)), next(iter(loader))
    by_index = [dict(zip(b["index"].tolist(), b["mask"], strict=True)) for b in (first, second)]
    assert sorted(by_index[0]) == sorted(by_index[1]) == list(range(24))
    assert any(not torch.equal(by_index[0][i], by_index[1][i]) for i in range(24))


@pytest.mark.parametrize("stride", [16, 8])
def test_patched_training_and_whole_image_evaluation(data_fashion_dir: Path, stride: int) -> None:
    dm = ImageSegDataModule(
        source_args=_composites(data_fashion_dir),
        tokenizer_args={"subsample": 2},
        max_seq_len=256,
        batch_size=3,
        patch_size=16,
        patch_stride=stride,
        patch_jitter=3,
    )
    assert (
        dm.input_size == (16, 16) and dm.tokenizer.shape == (16, 16) and dm.patch_stride == (stride, stride)
    )
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (3, 3, 16, 16) and train["token_mask"].shape == (3, 8, 8)
    _check_decodes(dm, train)
    per_image = 4 if stride == 16 else 9
    assert len(dm.datasets["train"]) == 24 * per_image
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (3, 3, 32, 32) and val["mask"].shape == (3, 32, 32) and "tokens" not in val
    assert val["token_mask"].shape == (3, 16, 16) and val["patch_tokens"].shape == (3, per_image, 256)
    # what the module does: decode every patch, stitch at token resolution, compare with the whole target
    for b in range(3):
        decoded = np.stack([dm.tokenizer.decode(row.numpy(), strict=True) for row in val["patch_tokens"][b]])
        stitched = stitch_patches(decoded, val["patch_origins"][b].numpy(), (16, 16), scale=2)
        assert np.array_equal(stitched, val["token_mask"][b].numpy())


def test_limits(data_fashion_dir: Path) -> None:
    dm = ImageSegDataModule(
        source_args=_composites(data_fashion_dir), limit_train=5, limit_val=2, max_seq_len=512
    )
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 5 and len(dm.datasets["val"]) == 2


def test_predict_dataloader_reads_a_folder_of_images(data_fashion_dir: Path, data_png_folder) -> None:
    root = data_png_folder(n=3)
    dm = ImageSegDataModule(
        source_args=_composites(data_fashion_dir),
        predict_path=str(root / "images"),
        image_size=48,
        batch_size=2,
    )
    batch = next(iter(dm.predict_dataloader()))
    # one raw image per batch, as on disk (any size): rleseg.inference prepares it as training did
    assert isinstance(batch, list) and len(batch) == 1
    item = batch[0]
    assert set(item) == {"raw", "index", "path", "frames"}
    assert item["raw"].dtype == np.uint8 and item["raw"].ndim == 3 and item["raw"].shape[-1] == 3
    assert item["path"].endswith("img000.png") and item["frames"] == [item["path"]]


def test_a_png_folder_trains_through_lightning(data_png_folder: Callable[..., Path], tmp_path: Path) -> None:
    """The folder source goes through the same DataModule path as the built-in sources, into a Trainer."""
    import lightning.pytorch as pl

    root = data_png_folder(n=12)
    dm = ImageSegDataModule(
        source="folder",
        source_args={"root": str(root), "val_fraction": 0.25},
        tokenizer="lac",
        max_seq_len=64,
        batch_size=4,
        augment={"hflip": 0.5},
    )

    class TinyTokenModel(pl.LightningModule):
        def __init__(self, vocab: int) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, 16)
            self.image = torch.nn.Conv2d(3, 16, 8, stride=8)
            self.out = torch.nn.Linear(16, vocab)

        def _loss(self, batch: dict) -> torch.Tensor:
            ctx = self.image(batch["image"]).mean(dim=(2, 3))[:, None]
            logits = self.out(self.embed(batch["tokens"][:, :-1]) + ctx)
            return torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["tokens"][:, 1:])

        def training_step(self, batch: dict, _: int) -> torch.Tensor:
            return self._loss(batch)

        def validation_step(self, batch: dict, _: int) -> None:
            self.log("val_loss", self._loss(batch))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    model = TinyTokenModel(dm.vocab_size)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 6  # 9 training images, batch 4: 3 steps per epoch
    assert torch.isfinite(trainer.callback_metrics["val_loss"])
