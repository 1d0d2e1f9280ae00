"""Augmentation keeps images and labels aligned, treats clip frames alike, and is seeded per sample."""

from __future__ import annotations

import numpy as np
import pytest

from rleseg.data import DataError
from rleseg.data.transforms import Augmenter, denormalize, normalize, resize_clip

GEOMETRIC = {
    "hflip": 0.5,
    "vflip": 0.5,
    "rotate90": 0.5,
    "affine": {"p": 1.0, "scale": [0.7, 1.3], "rotate": [-30, 30], "translate": 0.1},
}


def _shape_sample(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A white ellipse on black, and its mask labelled with a panoptic id."""
    yy, xx = np.mgrid[0:size, 0:size]
    inside = ((yy - 0.45 * size) / (0.3 * size)) ** 2 + ((xx - 0.55 * size) / (0.2 * size)) ** 2 <= 1
    image = np.repeat((inside * 255).astype(np.uint8)[None, ..., None], 3, axis=-1)
    return image, (inside * 2003).astype(np.int32)[None]


@pytest.mark.parametrize("seed", range(6))
def test_augmented_image_and_mask_stay_aligned(seed: int) -> None:
    image, labels = _shape_sample()
    aug_img, aug_lab = Augmenter(GEOMETRIC)(image, labels, seed=seed)
    bright, fg = aug_img[0, ..., 0] > 127, aug_lab[0] > 0
    overlap = 2 * (bright & fg).sum() / (bright.sum() + fg.sum())
    assert overlap >= 0.99, overlap
    assert set(np.unique(aug_lab).tolist()) <= {0, 2003}  # labels stay labels (nearest)


def test_clip_frames_get_identical_transforms() -> None:
    image, labels = _shape_sample(64)
    clip_img, clip_lab = np.repeat(image, 4, axis=0), np.repeat(labels, 4, axis=0)
    config = {**GEOMETRIC, "color": {"p": 1.0}, "extra": [{"name": "GaussNoise", "p": 1.0}]}
    out_img, out_lab = Augmenter(config)(clip_img, clip_lab, seed=3)
    assert out_img.shape == clip_img.shape
    assert all((out_img[t] == out_img[0]).all() and (out_lab[t] == out_lab[0]).all() for t in range(4))
    assert not (out_img[0] == clip_img[0]).all()


def test_augmentation_is_a_function_of_the_seed() -> None:
    image, labels = _shape_sample(64)
    aug = Augmenter({**GEOMETRIC, "color": {"p": 1.0}})
    a, b = aug(image, labels, seed=11), aug(image, labels, seed=11)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    others = [aug(image, labels, seed=s)[1] for s in range(12, 16)]
    assert any((o != a[1]).any() for o in others)


def test_bad_augment_configs_are_named() -> None:
    with pytest.raises(DataError, match=r"unknown augment keys \['flip'\]"):
        Augmenter({"flip": 0.5})
    with pytest.raises(DataError, match="no transform 'NoSuchTransform'"):
        Augmenter({"extra": [{"name": "NoSuchTransform"}]})


def test_normalize_round_trip_and_resize_keeps_labels() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    x = normalize(img)
    assert x.shape == (2, 3, 8, 8) and x.dtype == np.float32 and abs(float(x.mean())) < 1.0
    assert (denormalize(x) == img).all()
    lab = rng.integers(0, 5, size=(2, 8, 8)).astype(np.int32) * 1000 + 7
    _, small = resize_clip(img, lab, (4, 6))
    assert small.shape == (2, 4, 6) and set(np.unique(small)) <= set(np.unique(lab))
