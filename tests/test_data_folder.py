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
