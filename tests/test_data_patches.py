"""Patches and stitching: full coverage, exact round trips, votes, and token-level reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rleseg.data.patches import PatchError, cut_patches, jitter_origin, patch_origins, stitch_patches
from rleseg.tokenizers import create_tokenizer


@pytest.mark.parametrize(("size", "stride"), [(16, None), (16, 8), ((12, 20), (5, 7)), (37, 1)])
@pytest.mark.parametrize("mode", ["vote", "last"])
def test_cut_then_stitch_is_the_identity(size, stride, mode) -> None:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 7, size=(2, 37, 50))  # a leading (time) axis rides along
    patches, origins = cut_patches(mask, size, stride)
    assert patches.shape[0] == len(origins) and patches.shape[1] == 2
    assert (stitch_patches(patches, origins, mask.shape, mode) == mask).all()


def test_origins_cover_every_pixel_and_end_flush() -> None:
    origins = patch_origins((30, 17), size=8, stride=6)
    assert origins[:, 0].max() == 22 and origins[:, 1].max() == 9
    covered = np.zeros((30, 17), bool)
    for y, x in origins:
        covered[y : y + 8, x : x + 8] = True
    assert covered.all()


def test_torch_and_batched_inputs() -> None:
    x = torch.arange(2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    patches, origins = cut_patches(x, 4, 2, batch_dims=1)
    assert isinstance(patches, torch.Tensor) and patches.shape == (2, 9, 3, 4, 4)
    back = stitch_patches(patches, origins, (8, 8), batch_dims=1)
    assert isinstance(back, torch.Tensor) and torch.equal(back, x)


def test_vote_takes_the_majority_and_ties_go_to_the_smaller_label() -> None:
    preds = np.array([[[5, 1]], [[5, 2]], [[3, 2]]])
    origins = np.zeros((3, 2), np.int64)
    assert stitch_patches(preds, origins, (1, 2)).tolist() == [[5, 2]]
    assert stitch_patches(preds, origins, (1, 2), mode="last").tolist() == [[3, 2]]
    assert stitch_patches(preds[:2], origins[:2], (1, 3), fill=9).tolist() == [[5, 1, 9]]


def test_bad_patches_raise_clear_errors() -> None:
    with pytest.raises(PatchError, match="larger than the image"):
        cut_patches(np.zeros((8, 8)), 9)
    with pytest.raises(PatchError, match="not multiples of the scale 4"):
        stitch_patches(np.zeros((1, 2, 2)), np.array([[2, 0]]), (4, 4), scale=4)
    with pytest.raises(PatchError, match="'vote' or 'last'"):
        stitch_patches(np.zeros((1, 2, 2)), np.array([[0, 0]]), (2, 2), mode="mean")


def test_jitter_stays_inside_the_image() -> None:
    rng = np.random.default_rng(1)
    seen = {jitter_origin((0, 8), 3, (16, 16), 8, rng) for _ in range(200)}
    assert all(0 <= y <= 8 and 0 <= x <= 8 for y, x in seen) and len(seen) > 5


@pytest.mark.parametrize("method", ["nearest", "any"])
@pytest.mark.parametrize(("s", "size", "stride"), [(2, 16, 16), (2, 16, 8), (4, 16, 8), (4, 24, 12)])
def test_stitched_ground_truth_token_patches_reproduce_the_subsampled_mask(method, s, size, stride) -> None:
    rng = np.random.default_rng(s * size + stride)
    mask = np.zeros((48, 64), np.uint8)
    for _ in range(12):  # rectangles of 3 classes, some smaller than a subsampling block
        y, x, h, w = rng.integers(0, 48), rng.integers(0, 64), rng.integers(1, 20), rng.integers(1, 20)
        mask[y : y + h, x : x + w] = rng.integers(1, 4)
    kw = {"num_classes": 4, "subsample": s, "subsample_method": method}
    patch_tok = create_tokenizer("lac", shape=(size, size), **kw)
    full_tok = create_tokenizer("lac", shape=mask.shape, **kw)
    patches, origins = cut_patches(mask, size, stride)
    decoded = np.stack([patch_tok.decode(patch_tok.encode(p), strict=True) for p in patches])
    stitched = stitch_patches(decoded, origins, full_tok.token_shape, scale=s)
    assert (stitched == full_tok.subsample(mask)).all()
