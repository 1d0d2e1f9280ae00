"""The folder source: layout, classes file, and every bad-data case raising (or skipping) by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rleseg.data import DataError, create_source


def test_flat_folder_is_split_by_a_seeded_shuffle(data_png_folder: Callable[..., Path]) -> None:
    root = data_png_folder(n=10)
    src = create_source("folder", root=str(root), val_fraction=0.3)
    assert src.class_names == ["background", "class1", "class2"] and src.thing_classes == []
    train, val = src.split("train"), src.split("val")
    assert (len(train), len(val)) == (7, 3)
    names = {s.name for s in train.sequences} | {s.name for s in val.sequences}
    assert len(names) == 10
    clip = train.load(0)
    assert clip.image.shape == (1, 32, 32, 3) and clip.semantic.max() <= 2 and clip.panoptic is None
    assert len(src.split("test")) == 3  # test falls back to val


def test_split_folders_and_panoptic_masks(data_png_folder: Callable[..., Path]) -> None:
    base = data_png_folder(n=1)
    for split in ("train", "val"):
        data_png_folder(n=3, panoptic=True).rename(base / split)
    (base / "classes.yaml").write_text(
        "classes: [background, cell, debris]\nthings: [cell]\npanoptic: true\n"
    )
    src = create_source("folder", root=str(base))
    assert src.thing_classes == [1] and src.panoptic
    clip = src.split("val").load(0)
    assert (clip.panoptic // 1000 == clip.semantic).all() and (clip.panoptic % 1000).max() >= 1


def test_clips_as_subfolders(data_png_folder: Callable[..., Path]) -> None:
    root = data_png_folder(clips=3, frames=5)
    src = create_source("folder", root=str(root), val_fraction=0.34)
    assert src.has_video
    video = src.split("train", video=True)
    assert len(video) == 2 and video.num_frames(0) == 5 and video.load(0, 1, 4).image.shape == (3, 32, 32, 3)
    assert len(src.split("train")) == 10  # the image view: every frame of the training clips


def test_missing_classes_file_explains_the_format(data_png_folder: Callable[..., Path]) -> None:
    root = data_png_folder(n=2)
    (root / "classes.yaml").unlink()
    with pytest.raises(DataError, match=r"classes\.yaml like:\n  classes: \[background"):
        create_source("folder", root=str(root))


def _bad(root: Path, case: str) -> str:
    """Break one sample of a folder in the way ``case`` names; returns the file the error must name."""
    img, mask = root / "images" / "img001.png", root / "masks" / "img001.png"
    if case == "corrupt image":
        img.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
        return str(img)
    if case == "truncated image":
        img.write_bytes(img.read_bytes()[:-60])
        return str(img)
    if case == "mask size":
        Image.fromarray(np.zeros((16, 32), np.uint8)).save(mask)
        return str(mask)
    if case == "unknown class":
        Image.fromarray(np.full((32, 32), 7, np.uint8)).save(mask)
        return str(mask)
    if case == "missing mask":
        mask.unlink()
        return str(img)
    if case == "rgb mask":
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(mask)
        return str(mask)
    raise AssertionError(case)


CASES = ["corrupt image", "truncated image", "mask size", "unknown class", "missing mask", "rgb mask"]
MESSAGES = {
    "corrupt image": "cannot read image",
    "truncated image": "cannot read image",
    "mask size": "is 16x32 but image",
    "unknown class": "class id 7, outside 0..2",
    "missing mask": "no mask for",
    "rgb mask": "single-channel",
}


@pytest.mark.parametrize("case", CASES)
def test_bad_sample_raises_naming_the_file(data_png_folder: Callable[..., Path], case: str) -> None:
    root = data_png_folder(n=4)
    path = _bad(root, case)
    src = create_source("folder", root=str(root), val_fraction=0.0)
    with pytest.raises(DataError, match=MESSAGES[case]) as info:
        src.split("train")
    assert path in str(info.value)


@pytest.mark.parametrize("case", ["truncated image", "unknown class"])
def test_bad_sample_raises_at_load_time_without_validation(
    data_png_folder: Callable[..., Path], case: str
) -> None:
    root = data_png_folder(n=4)
    path = _bad(root, case)
    split = create_source("folder", root=str(root), val_fraction=0.0, validate=False).split("train")
    index = [s.name for s in split.sequences].index("img001.png")
    split.load(0 if index else 1)  # good samples load
    with pytest.raises(DataError) as info:
        split.load(index)
    assert path in str(info.value)


def test_skipping_bad_samples_is_counted_and_warned(data_png_folder: Callable[..., Path]) -> None:
    root = data_png_folder(n=5)
    _bad(root, "unknown class")
    (root / "masks" / "img003.png").unlink()
    src = create_source("folder", root=str(root), val_fraction=0.0, on_error="skip")
    with pytest.warns(UserWarning, match="skipped 2 bad sample"):
        split = src.split("train")
    assert len(split) == 3
    assert [name for name, _ in src.skipped["train"]] == ["img001.png", "img003.png"]
    with pytest.raises(DataError, match="needs validate=True"):
        create_source("folder", root=str(root), on_error="skip", validate=False)


def test_clip_with_a_missing_frame_names_the_clip_and_frame(data_png_folder: Callable[..., Path]) -> None:
    root = data_png_folder(clips=2, frames=5)
    (root / "images" / "clip1" / "0002.png").unlink()
    (root / "masks" / "clip1" / "0002.png").unlink()
    src = create_source("folder", root=str(root), val_fraction=0.0)
    with pytest.raises(DataError, match=r"clip .*clip1: frame 2 is missing between 0001\.png and 0003\.png"):
        src.split("train", video=True)
    # a frame whose mask is missing
    root2 = data_png_folder(clips=1, frames=3)
    (root2 / "masks" / "clip0" / "0001.png").unlink()
    with pytest.raises(DataError, match=r"frame 0001\.png has no mask"):
        create_source("folder", root=str(root2), val_fraction=0.0).split("train", video=True)


# ---------------------------------------------------------------------- void, VOC and labelme exports
def test_voc_export_is_read_in_place(voc_export: Path) -> None:
    from conftest import EXPORT_CLASSES

    src = create_source("folder", root=str(voc_export))
    assert src.layout == "voc" and src.ignore_index == 255 and not src.has_video
    assert src.class_names == EXPORT_CLASSES and src.num_classes == 4
    train, val = src.split("train"), src.split("val")
    assert [s.name for s in train.sequences] == [f"2007_{i:06d}" for i in range(8)]  # ImageSets lists
    assert [s.name for s in val.sequences] == [f"2007_{i:06d}" for i in range(8, 12)]
    assert len(src.split("test")) == 4  # no test.txt: validation
    assert train.ignore_index == 255 and src.peek_shape() == (64, 64)
    seen = set()
    for i in range(len(train)):
        clip = train.load(i)
        assert clip.image.shape == (1, 64, 64, 3) and clip.panoptic is None
        values = set(np.unique(clip.semantic).tolist())
        assert 255 in values and values <= {0, 1, 2, 3, 255}  # palette index = class id, 255 = void
        seen |= values
    assert seen == {0, 1, 2, 3, 255}


def test_voc_export_without_split_lists_uses_the_seeded_shuffle(voc_export: Path) -> None:
    import shutil

    shutil.rmtree(voc_export / "ImageSets")
    src = create_source("folder", root=str(voc_export), val_fraction=0.25)
    train, val = src.split("train"), src.split("val")
    assert (len(train), len(val)) == (9, 3)  # the 12 masks; the 2 images without one are no samples
    assert not {s.name for s in train.sequences} & {s.name for s in val.sequences}


def test_labelme_export_npy_and_png_masks(labelme_export: Path) -> None:
    from conftest import EXPORT_CLASSES

    src = create_source("folder", root=str(labelme_export))
    assert src.class_names == EXPORT_CLASSES  # __ignore__ dropped, _background_ named background
    train, val = src.split("train"), src.split("val")
    assert (len(train), len(val)) == (16, 4)
    assert train.sequences[0].masks[0].suffix == ".npy"  # SegmentationClass/ first
    i = [s.name for s in train.sequences].index("img_000")
    npy = np.load(labelme_export / "SegmentationClass" / "img_000.npy")
    semantic = train.load(i).semantic[0]
    assert (npy == -1).sum() == 64 and np.array_equal(semantic == 255, npy == -1)  # -1 -> the void value
    assert np.array_equal(semantic[npy >= 0], npy[npy >= 0])
    # SegmentationClassPNG alone (255 = void) reads the same
    import shutil

    shutil.rmtree(labelme_export / "SegmentationClass")
    png = create_source("folder", root=str(labelme_export)).split("train")
    assert png.sequences[i].masks[0].parent.name == "SegmentationClassPNG"
    assert np.array_equal(png.load(i).semantic[0], semantic)


def test_void_in_a_plain_folder_and_ignore_label_option(data_png_folder: Callable[..., Path]) -> None:
    root = data_png_folder(n=3)
    mask = np.asarray(Image.open(root / "masks" / "img000.png")).copy()
    mask[:2] = 255
    Image.fromarray(mask).save(root / "masks" / "img000.png")
    src = create_source("folder", root=str(root), val_fraction=0.0)
    assert src.layout == "flat" and src.ignore_index == 255
    assert (src.split("train").load(0).semantic[0, :2] == 255).all()
    with pytest.raises(DataError, match=r"class id 255, outside 0\.\.2"):
        create_source("folder", root=str(root), val_fraction=0.0, ignore_label=None).split("train")
    src = create_source("folder", root=str(root), val_fraction=0.0, ignore_label=250)
    with pytest.raises(DataError, match="void pixels are 250 or -1"):
        src.split("train")
    with pytest.raises(DataError, match="ignore_label=1 is a class id"):
        create_source("folder", root=str(root), ignore_label=1)


def test_void_in_panoptic_masks(data_png_folder: Callable[..., Path]) -> None:
    root = data_png_folder(n=2, panoptic=True)
    mask = np.asarray(Image.open(root / "masks" / "img000.png")).astype(np.int32)
    mask[:3] = 255 * 1000 + 7  # class 255: void, whatever the instance
    (root / "masks" / "img000.png").unlink()
    np.save(root / "masks" / "img000.npy", mask)  # 255007 does not fit a 16-bit PNG
    clip = create_source("folder", root=str(root), val_fraction=0.0).split("train").load(0)
    assert (clip.semantic[0, :3] == 255).all() and (clip.panoptic[0, :3] == 255000).all()
    assert (clip.panoptic // 1000 == clip.semantic).all()


def test_summary_leaves_void_out_of_the_class_frequencies(voc_export: Path) -> None:
    from rleseg.data.sources import summarize

    summary = summarize(create_source("folder", root=str(voc_export)))
    assert summary["ignore_index"] == 255
    train = summary["splits"]["train"]
    assert len(train["class_pixel_freq"]) == 4 and abs(sum(train["class_pixel_freq"]) - 1) < 1e-9
    assert 0.02 < train["void_fraction"] < 0.5


def test_a_folder_matching_no_layout_names_the_layouts(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="matches no folder layout; looked for train/images/") as info:
        create_source("folder", root=str(tmp_path), classes=["background", "a"])
    message = str(info.value)
    assert "\n" not in message and "images/ + masks/" in message
    assert "JPEGImages/ + SegmentationClass/ or SegmentationClassPNG/" in message
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DataError, match="has JPEGImages/ but no masks in SegmentationClass/ or Segm"):
        create_source("folder", root=str(tmp_path), classes=["background", "a"])


def test_voc_split_list_errors(voc_export: Path) -> None:
    sets = voc_export / "ImageSets" / "Segmentation"
    (sets / "val.txt").unlink()
    with pytest.raises(DataError, match="has train.txt but no val.txt"):
        create_source("folder", root=str(voc_export)).split("train")
    (sets / "val.txt").write_text("2007_000008\nmissing_one\n")
    with pytest.raises(DataError, match="lists 'missing_one' but .*JPEGImages has no image"):
        create_source("folder", root=str(voc_export)).split("val")
    (voc_export / "class_names.txt").unlink()
    with pytest.raises(DataError, match="class_names.txt: one class name per line"):
        create_source("folder", root=str(voc_export))


@pytest.mark.parametrize("export", ["voc_export", "labelme_export"])
def test_seg_dataset_tokens_without_void_masks_with_it(export: str, request: pytest.FixtureRequest) -> None:
    from rleseg import create_tokenizer
    from rleseg.data.datasets import SegDataset
    from rleseg.data.transforms import Augmenter
    from rleseg.tokenizers.runs import upsample

    root = request.getfixturevalue(export)
    split = create_source("folder", root=str(root)).split("train")
    tok = create_tokenizer("lac", num_classes=4, shape=(48, 48), subsample=4)
    augmenter = Augmenter({"hflip": 0.5, "affine": {"p": 1.0, "rotate": [-20, 20], "translate": 0.1}})
    for train in (False, True):
        ds = SegDataset(split, tok, train=train, image_size=(48, 48), augmenter=augmenter, seed=3)
        assert ds.ignore_index == 255  # from the split
        voids = 0
        for k in range(len(ds)):
            item = ds[k]
            mask, token_mask = item["mask"].numpy(), item["token_mask"].numpy()
            assert mask.shape == (48, 48) and set(np.unique(mask).tolist()) <= {0, 1, 2, 3, 255}
            voids += int((mask == 255).sum())
            decoded = tok.decode(item["tokens"].numpy())
            assert decoded.max() <= 3 and np.array_equal(decoded, token_mask)  # no void in the tokens
            assert np.array_equal(token_mask, tok.subsample(np.where(mask == 255, 0, mask)))
            agree = upsample(token_mask, (48, 48)) == mask
            assert agree[mask != 255].mean() > 0.7
        assert voids > 0


def test_seg_dataset_void_in_panoptic_labels() -> None:
    from rleseg.data.datasets import SegDataset

    ds = object.__new__(SegDataset)  # only the void helpers: no split or tokenizer needed
    ds.ignore_index, ds.labels = 255, "panoptic"
    labels = np.array([[1001, 255000], [255000, 0]])
    assert ds.without_void(labels).tolist() == [[1001, 0], [0, 0]]
    ds.labels = "semantic"
    assert ds.without_void(np.array([[255, 2]])).tolist() == [[0, 2]]
    ds.ignore_index = None
    assert ds.void(np.array([[255]])) is None
