"""Bad input masks and bad configurations raise TokenizerError naming the problem and the value."""

from __future__ import annotations

import numpy as np
import pytest

from rleseg import create_tokenizer
from rleseg.tokenizers import TokenizerError


@pytest.fixture
def lac():
    return create_tokenizer("lac", num_classes=3, shape=(4, 4))


@pytest.mark.parametrize(
    "mask, message",
    [
        (
            np.zeros((4, 4), dtype=np.complex64),
            r"dtype complex64; expected an integer, bool or integer-valued",
        ),
        (np.zeros((4, 4), dtype=object), r"dtype object"),
        (np.array([["a"] * 4] * 4), r"dtype <U1"),
        (np.zeros((2, 4, 4), dtype=np.uint8), r"3 dimension\(s\) \(shape \(2, 4, 4\)\); expected 2 \(H, W\)"),
        (np.zeros(16, dtype=np.uint8), r"1 dimension\(s\)"),
        (np.zeros((0, 4), dtype=np.uint8), r"empty \(shape \(0, 4\)\)"),
        (np.zeros((0,), dtype=np.uint8), r"empty"),
        (np.zeros((4, 5), dtype=np.uint8), r"shape \(4, 5\) differs from the tokenizer's shape \(4, 4\)"),
        (np.full((4, 4), -1, dtype=np.int16), r"negative id -1"),
        (np.full((4, 4), 3, dtype=np.uint8), r"class id 3 >= num_classes 3 \(ids must be 0\.\.2\)"),
        (np.full((4, 4), 0.5), r"non-integer value 0\.5"),
        (np.full((4, 4), np.nan, dtype=np.float32), r"non-finite value nan"),
        (np.full((4, 4), -2.0), r"negative id -2\.0"),
        (np.full((4, 4), 7.0), r"class id 7 >= num_classes 3"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_masks(lac, mask, message):
    with pytest.raises(TokenizerError, match=message):
        lac.encode(mask)
    with pytest.raises(TokenizerError, match=message):
        lac.encode_sequence(mask)


def test_accepted_dtypes_give_the_same_tokens(lac):
    mask = np.array([[0, 1, 1, 0], [2, 2, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2]])
    expected = lac.encode(mask.astype(np.uint8)).tolist()
    for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint16, np.float32, np.float64):
        assert lac.encode(mask.astype(dtype)).tolist() == expected, dtype
    assert lac.encode(mask.tolist()).tolist() == expected  # nested lists
    binary = create_tokenizer("binary", shape=(4, 4))
    assert binary.encode(mask > 0).tolist() == binary.encode((mask > 0).astype(np.uint8)).tolist()


def test_nothing_is_clipped_at_the_class_boundary(lac):
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[3, 3] = 3
    with pytest.raises(TokenizerError, match="class id 3"):
        lac.encode(mask)


def test_video_window_of_wrong_length():
    tok = create_tokenizer("tac", num_classes=3, shape=(2, 4, 4))
    with pytest.raises(
        TokenizerError, match=r"video window has 3 frames \(shape \(3, 4, 4\)\); the tokenizer takes T = 2"
    ):
        tok.encode(np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(TokenizerError, match=r"2 dimension\(s\).*expected 3 \(T, H, W\)"):
        tok.encode(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(TokenizerError, match=r"shape \(2, 4, 8\) differs"):
        tok.encode(np.zeros((2, 4, 8), dtype=np.uint8))


def test_panoptic_ids():
    tok = create_tokenizer("panoptic", num_classes=3, shape=(2, 2))
    with pytest.raises(TokenizerError, match=r"panoptic map has id 3001 of class 3 >= num_classes 3"):
        tok.encode(np.array([[0, 3001], [1001, 0]]))
    with pytest.raises(TokenizerError, match="negative id -5"):
        tok.encode(np.array([[0, -5], [1001, 0]]))


@pytest.mark.parametrize(
    "name, cfg, message",
    [
        ("mc", {"num_classes": 1}, r"num_classes must be an integer >= 2.*got 1"),
        (
            "mc",
            {"shape": (4, 6), "subsample": 4},
            r"subsample factor 4 must be >= 1 and divide the spatial size \(4, 6\)",
        ),
        ("mc", {"subsample_method": "bilinear"}, r"'nearest' or 'any'; got 'bilinear'"),
        ("mc", {"order": "diagonal"}, r"order must be 'row' or 'col'; got 'diagonal'"),
        ("mc", {"max_run": 0}, r"max_run must be >= 1; got 0"),
        ("mc", {"max_seq_len": 1}, r"max_seq_len .*got 1"),
        ("mc", {"truncation": "head"}, r"'tail' or 'longest'; got 'head'"),
        ("mc", {"shape": (2, 4, 4)}, r"takes a 2-D shape; got \(2, 4, 4\)"),
        ("tac", {"shape": (4, 4)}, r"takes a 3-D shape; got \(4, 4\)"),
        ("mc", {"offsets": {"start": 1000}}, r"need an offset for field 'class'"),
        ("rowwise", {"shape": (4, 4), "max_run": 5}, r"rowwise max_run 5 exceeds the row length 4"),
        ("gap", {"gap_range": 0}, r"gap_range must be >= 1; got 0"),
        ("panoptic", {"stuff_classes": (3,)}, r"stuff classes \[3\] are not foreground classes 1\.\.2"),
        ("panoptic", {"stuff_classes": (1, 2)}, r"at least one thing class"),
    ],
)
def test_bad_configuration(name, cfg, message):
    with pytest.raises(TokenizerError, match=message):
        create_tokenizer(name, **cfg)
