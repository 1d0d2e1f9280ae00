"""Tokenizers: SPEC worked examples token for token, run counts, round trips over the whole registry
(hypothesis), pycocotools as the oracle for binary runs, truncation, vocabulary layout and the registry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rleseg import create_tokenizer, list_tokenizers, register_tokenizer
from rleseg.tokenizers import EOS, PAD, PROMPTS, TokenizerError
from rleseg.tokenizers.registry import tokenizer_class
from rleseg.tokenizers.runs import find_runs, paint_runs, subsample, upsample

SPEC_MASK = np.array([[0, 1, 1, 0], [2, 2, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2]], dtype=np.uint8)
SPEC_CLIP = np.array([[[0, 1, 1, 0]], [[0, 0, 1, 2]]], dtype=np.uint8)
MC_OFFSETS = {"start": 1000, "length": 200, "class": 100}


def is_video(name: str) -> bool:
    return tokenizer_class(name).ndim == 3


def label_mask(name: str, rng: np.random.Generator, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    """A random label mask the tokenizer ``name`` takes (a panoptic-id map for ``panoptic``)."""
    cls = rng.integers(0, num_classes, size=shape)
    if name == "panoptic":
        return cls * 1000 + rng.integers(0, 3, size=shape)
    return cls.astype(np.uint8)


# ---------------------------------------------------------------------------------------------- SPEC §3
@pytest.mark.parametrize(
    "name, offsets, expected",
    [
        (
            "mc",
            MC_OFFSETS,
            [1002, 202, 101, 1005, 202, 102, 1007, 204, 101, 1011, 202, 101, 1015, 202, 102],
        ),
        ("lac", {"start": 1000, "lac": 100}, [1002, 102, 1005, 106, 1007, 104, 1011, 102, 1015, 106]),
        ("binary", {"start": 1000, "length": 100}, [1002, 102, 1005, 104, 1009, 104, 1015, 102]),
    ],
)
def test_spec3_worked_examples(name, offsets, expected):
    tok = create_tokenizer(name, num_classes=3, shape=(4, 4), max_run=4, offsets=offsets)
    tokens = tok.encode(SPEC_MASK)
    assert tokens.tolist() == expected
    assert tokens.dtype == np.int64
    want = (SPEC_MASK > 0).astype(np.uint8) if name == "binary" else SPEC_MASK
    np.testing.assert_array_equal(tok.decode(tokens), want)


def test_spec3_worked_example_2d_starts():
    offsets = {"coord": 1000, "length": 200, "class": 100}
    tok = create_tokenizer(
        "mc2d", num_classes=3, shape=(4, 4), max_run=4, shared_coords=True, offsets=offsets
    )
    expected = [1001, 1002, 202, 101, 1002, 1001, 202, 102, 1002, 1003, 204, 101]
    expected += [1003, 1003, 202, 101, 1004, 1003, 202, 102]
    assert tok.encode(SPEC_MASK).tolist() == expected
    np.testing.assert_array_equal(tok.decode(expected), SPEC_MASK)
    assert tok.tokens_per_run == 4


def test_spec3_runs_sorted_with_wrap():
    runs = find_runs(SPEC_MASK.ravel(), max_run=4)
    assert list(zip(runs.starts.tolist(), runs.lengths.tolist(), runs.values.tolist(), strict=True)) == [
        (1, 2, 1),
        (4, 2, 2),
        (6, 4, 1),
        (10, 2, 1),
        (14, 2, 2),
    ]


@pytest.mark.parametrize(
    "name, mask, runs",
    [
        ("mc", np.ones((80, 80), np.uint8), 80),
        ("mc", np.repeat([[1] * 40 + [2] * 40], 80, axis=0).astype(np.uint8), 160),
        ("binary", (np.indices((80, 80)).sum(0) % 2).astype(np.uint8), 3160),
    ],
    ids=["all-foreground", "halves", "checkerboard"],
)
def test_spec3_run_counts(name, mask, runs):
    tok = create_tokenizer(name, num_classes=3, shape=(80, 80), max_run=80)
    assert tok.num_runs(mask) == runs
    tokens = tok.encode(mask)
    assert tokens.size == runs * tok.tokens_per_run
    np.testing.assert_array_equal(tok.decode(tokens), mask)


# ---------------------------------------------------------------------------------------------- SPEC §4
@pytest.mark.parametrize(
    "name, offsets, expected",
    [
        ("tac", MC_OFFSETS, [1002, 201, 101, 1003, 201, 104, 1004, 201, 106]),
        ("ltac", {"start": 1000, "lac": 100}, [1002, 101, 1003, 113, 1004, 121]),
        ("video_mc", MC_OFFSETS, [1002, 202, 101, 1007, 201, 101, 1008, 201, 102]),
    ],
)
def test_spec4_worked_examples(name, offsets, expected):
    tok = create_tokenizer(name, num_classes=3, shape=(2, 1, 4), max_run=4, offsets=offsets)
    tokens = tok.encode(SPEC_CLIP)
    assert tokens.tolist() == expected
    np.testing.assert_array_equal(tok.decode(tokens), SPEC_CLIP)


def test_spec4_tac_mask():
    tok = create_tokenizer("tac", num_classes=3, shape=(2, 1, 4))
    assert tok.time_as_class(SPEC_CLIP).ravel().tolist() == [0, 1, 4, 6]


def test_tac_vocabulary_grows_with_time_and_ltac_more():
    tac = create_tokenizer("tac", num_classes=3, shape=(8, 80, 80))
    ltac = create_tokenizer("ltac", num_classes=3, shape=(8, 80, 80))
    assert tac.vocab["class"].count == 3**8 - 1
    assert ltac.vocab["lac"].count == 80 * (3**8 - 1)  # SPEC §4: M·6560
    assert ltac.vocab_size > tac.vocab_size


def test_static_video_flag_selects_prompt():
    tok = create_tokenizer("ltac", num_classes=3, shape=(2, 4, 4), static=True)
    assert tok.task == "static_video"
    seq, _, _ = tok.encode_sequence(np.zeros((2, 4, 4), np.uint8))
    assert seq[0] == PROMPTS["static_video"]
    assert create_tokenizer("ltac", shape=(2, 4, 4)).task == "video"


# ---------------------------------------------------------------------------------------------- registry
def test_registry_lists_every_scheme():
    expected = {"binary", "mc", "lac", "mc2d", "lac2d", "dense", "gap", "rowwise"}
    expected |= {"video_mc", "video_lac", "tac", "ltac", "panoptic"}
    assert expected <= set(list_tokenizers())
    assert list_tokenizers("video_*") == ["video_lac", "video_mc"]
    assert list_tokenizers("*lac*") == ["lac", "lac2d", "video_lac"]


def test_unknown_tokenizer_lists_names():
    with pytest.raises(TokenizerError, match=r"unknown tokenizer 'lacc'; registered: .*binary.*lac"):
        create_tokenizer("lacc")


def test_unknown_option_lists_options():
    with pytest.raises(TokenizerError, match=r"no option\(s\) \['maxrun'\]; options are .*max_run"):
        create_tokenizer("mc", maxrun=3)
    with pytest.raises(TokenizerError, match="shared_coords"):
        create_tokenizer("mc2d", shared=True)


def test_register_duplicate_name_is_an_error():
    with pytest.raises(TokenizerError, match="already registered"):

        @register_tokenizer("mc")
        class Other(tokenizer_class("lac")):  # noqa: F841
            pass


@pytest.mark.parametrize("name", list_tokenizers())
def test_vocab_ranges_disjoint_and_size_derived(name):
    tok = create_tokenizer(name)
    spans = sorted((r.lo, r.hi) for r in tok.vocab.ranges if r.count)
    assert spans[0][0] >= max(PROMPTS.values()) + 1
    assert all(a_hi <= b_lo for (_, a_hi), (b_lo, _) in zip(spans, spans[1:], strict=False))
    assert tok.vocab_size == spans[-1][1]
    assert {t.field for state in tok.grammar.states for t in state} == {r.name for r in tok.vocab.ranges}


def test_compact_layout_order_and_explicit_offsets():
    tok = create_tokenizer("mc", num_classes=3, shape=(4, 4), max_run=4)
    assert [r.name for r in tok.vocab.ranges] == ["class", "length", "start"]
    assert tok.vocab_size == 6 + 2 + 4 + 16
    with pytest.raises(TokenizerError, match="overlap"):
        create_tokenizer("mc", num_classes=3, shape=(4, 4), offsets={"start": 10, "length": 12, "class": 100})


# ---------------------------------------------------------------------------------------------- round trips
@st.composite
def configured(draw, name: str):
    """(tokenizer, mask) for a random configuration of ``name`` and a random or special mask."""
    factor = draw(st.sampled_from([1, 1, 2]))
    h, w = draw(st.integers(1, 6)) * factor, draw(st.integers(1, 6)) * factor
    num_classes = draw(st.integers(2, 4))
    shape: tuple[int, ...] = (h, w)
    if is_video(name):
        shape = (draw(st.integers(1, 3)), h, w)
    order = draw(st.sampled_from(["row", "col"]))
    line = (w if order == "row" else h) // factor
    cfg = dict(
        num_classes=num_classes,
        shape=shape,
        subsample=factor,
        subsample_method=draw(st.sampled_from(["nearest", "any"])),
        order=order,
        max_run=draw(st.sampled_from([None, 1, min(2, line), line])),
    )
    if name == "mc2d" or name == "lac2d":
        cfg["shared_coords"] = draw(st.booleans())
    if name == "panoptic" and num_classes > 2 and draw(st.booleans()):
        cfg["stuff_classes"] = (num_classes - 1,)
    tok = create_tokenizer(name, **cfg)
    kind = draw(st.sampled_from(["random", "random", "empty", "full", "pixel", "checker", "all"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "random":
        mask = label_mask(name, rng, shape, num_classes)
    else:
        top = (num_classes - 1) * (1000 if name == "panoptic" else 1)
        mask = np.zeros(shape, dtype=np.int64)
        if kind == "full":
            mask[...] = top
        elif kind == "pixel":
            mask[..., rng.integers(h), rng.integers(w)] = top
        elif kind == "checker":
            mask[...] = (np.indices((h, w)).sum(0) % 2) * top
        elif kind == "all":
            ids = np.arange(1, num_classes) * (1000 if name == "panoptic" else 1)
            mask.ravel()[: ids.size] = ids[: mask.size]
    return tok, mask


@pytest.mark.parametrize("name", list_tokenizers())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_tokenizer(name, data):
    tok, mask = data.draw(configured(name))
    token_mask = tok.subsample(mask)
    assert token_mask.shape == tok.token_shape
    tokens = tok.encode(mask)
    assert tokens.dtype == np.int64
    assert ((tokens >= 0) & (tokens < tok.vocab_size)).all()
    decoded = tok.decode(tokens)
    assert decoded.shape == tok.token_shape
    np.testing.assert_array_equal(decoded, token_mask)
    seq, truncated, runs = tok.encode_sequence(mask)
    assert not truncated and runs == tok.num_runs(mask)
    assert seq[0] == tok.prompt and seq[-1] == EOS
    report = tok.decode_report(seq, strict=True)
    assert report.validity == 1.0 and report.ended_with_eos and report.tokens_dropped == 0
    np.testing.assert_array_equal(report.mask, token_mask)


@pytest.mark.parametrize("name", list_tokenizers())
def test_runs_longer_than_max_run_split(name):
    shape = (2, 4, 6) if is_video(name) else (4, 6)
    tok = create_tokenizer(name, num_classes=3, shape=shape, max_run=2)
    mask = np.ones(shape, dtype=np.int32) * (1000 if name == "panoptic" else 1)
    np.testing.assert_array_equal(tok.decode(tok.encode(mask)), tok.subsample(mask))
    if name != "dense":
        assert tok.num_runs(mask) == tok.flat_size // 2


def test_column_major_round_trips_non_square():
    mask = np.array([[0, 1, 1, 2, 0], [1, 1, 0, 2, 2], [0, 0, 0, 1, 1]], dtype=np.uint8)
    row = create_tokenizer("mc", num_classes=3, shape=(3, 5), order="row")
    col = create_tokenizer("mc", num_classes=3, shape=(3, 5), order="col")
    assert row.max_run == 5 and col.max_run == 3
    runs = col.runs(mask)
    # column-major: column 0 is (0, 1, 0) -> the run of class 1 at flat index 1 has length 1
    assert (runs.starts[0], runs.lengths[0], runs.values[0]) == (1, 1, 1)
    assert not np.array_equal(row.encode(mask), col.encode(mask))
    np.testing.assert_array_equal(col.decode(col.encode(mask)), mask)
    c2d = create_tokenizer("mc2d", num_classes=3, shape=(3, 5), order="col")
    np.testing.assert_array_equal(c2d.decode(c2d.encode(mask)), mask)


# ---------------------------------------------------------------------------------------------- pycocotools
def coco_runs(binary: np.ndarray) -> tuple[list[int], list[int]]:
    """(starts, lengths) of the foreground runs in COCO's column-major RLE of a 2-D binary mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    counts = np.asarray(_counts(rle))
    ends = np.cumsum(counts)
    starts = ends - counts
    return starts[1::2][counts[1::2] > 0].tolist(), counts[1::2][counts[1::2] > 0].tolist()


def _counts(rle: dict) -> list[int]:
    """Uncompressed counts of a pycocotools RLE (its string format is LEB128-like, decoded here)."""
    s, counts, p = rle["counts"], [], 0
    s = s.decode() if isinstance(s, bytes) else s
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    order=st.sampled_from(["row", "col"]),
)
def test_binary_runs_equal_pycocotools(h, w, density, seed, order):
    mask = (np.random.default_rng(seed).random((h, w)) < density).astype(np.uint8)
    tok = create_tokenizer("binary", shape=(h, w), max_run=h * w, order=order)
    runs = tok.runs(mask)
    # COCO RLE is column-major: our column order matches it directly; row order is COCO on the transpose
    starts, lengths = coco_runs(mask if order == "col" else mask.T)
    assert runs.starts.tolist() == starts
    assert runs.lengths.tolist() == lengths
    np.testing.assert_array_equal(tok.decode(tok.encode(mask)), mask)


def test_coco_counts_decoder_matches_pycocotools_decode():
    from pycocotools import mask as mask_utils

    mask = (np.random.default_rng(0).random((9, 7)) < 0.4).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(mask))
    flat = np.repeat(np.arange(len(_counts(rle))) % 2, _counts(rle))
    np.testing.assert_array_equal(flat.reshape(7, 9).T, mask_utils.decode(rle))


# ---------------------------------------------------------------------------------------------- truncation
def test_truncation_tail_and_longest():
    mask = np.zeros((4, 8), dtype=np.uint8)
    mask[0, 0:1] = 1  # run (0, 1)
    mask[1, 0:6] = 2  # run (8, 6)
    mask[2, 2:4] = 1  # run (18, 2)
    mask[3, 0:8] = 1  # run (24, 8)
    tail = create_tokenizer("mc", num_classes=3, shape=(4, 8), max_seq_len=2 + 3 * 2)
    seq, truncated, runs = tail.encode_sequence(mask)
    assert truncated and runs == 4 and seq.size == 8
    assert seq[0] == tail.prompt and seq[-1] == EOS
    kept = tail.decode(seq)
    assert kept[0, 0] == 1 and (kept[1, :6] == 2).all() and kept[2:].sum() == 0

    longest = create_tokenizer("mc", num_classes=3, shape=(4, 8), max_seq_len=8, truncation="longest")
    seq, truncated, _ = longest.encode_sequence(mask)
    kept = longest.decode(seq)
    assert truncated and kept[0, 0] == 0 and (kept[1, :6] == 2).all() and (kept[3] == 1).all()
    assert longest.decode_report(seq, strict=True).validity == 1.0  # re-sorted by start

    roomy = create_tokenizer("mc", num_classes=3, shape=(4, 8), max_seq_len=20)
    seq, truncated, _ = roomy.encode_sequence(mask)
    assert not truncated and seq.size == 20 and (seq[14:] == PAD).all() and seq[13] == EOS


@pytest.mark.parametrize("name", list_tokenizers())
@pytest.mark.parametrize("policy", ["tail", "longest"])
def test_truncation_every_tokenizer(name, policy):
    shape = (2, 6, 6) if is_video(name) else (6, 6)
    mask = label_mask(name, np.random.default_rng(1), shape, 3)
    tok = create_tokenizer(name, num_classes=3, shape=shape, max_seq_len=13, truncation=policy)
    seq, truncated, runs = tok.encode_sequence(mask)
    assert truncated and runs == tok.num_runs(mask) and seq.size == 13
    report = tok.decode_report(seq, strict=True)
    assert report.validity == 1.0 and report.ended_with_eos
    batch = tok.encode_batch([mask, np.zeros_like(mask)])
    assert batch.tokens.shape == (2, 13) and batch.truncated.tolist() == [True, name == "dense"]
    assert batch.num_runs[1] == (tok.flat_size if name == "dense" else 0)


def test_encode_batch_without_max_seq_len_pads_to_longest():
    tok = create_tokenizer("lac", num_classes=3, shape=(4, 4))
    batch = tok.encode_batch([SPEC_MASK, np.zeros((4, 4), np.uint8)])
    assert batch.tokens.shape == (2, 12) and batch.lengths.tolist() == [12, 2]


# ---------------------------------------------------------------------------------------------- runs.py
def test_subsample_methods_and_upsample():
    m = np.zeros((4, 4), dtype=np.uint8)
    m[1, 1] = 1
    m[0, 3] = 2
    m[1, 2] = 1
    # nearest samples the centre of each 2x2 block, i.e. pixels (1, 1), (1, 3), (3, 1), (3, 3)
    assert subsample(m, 2, "nearest").tolist() == [[1, 0], [0, 0]]
    assert subsample(m, 2, "any").tolist() == [[1, 2], [0, 0]]
    assert upsample(np.array([[1, 2], [0, 3]]), (4, 4))[1:3, 1:3].tolist() == [[1, 2], [0, 3]]


def test_paint_overlap_later_run_wins_and_clips():
    out = paint_runs(6, np.array([0, 2, 5]), np.array([4, 1, 9]), np.array([1, 2, 3]), np.uint8)
    assert out.tolist() == [1, 1, 2, 1, 0, 3]
    assert out.dtype == np.uint8


def test_dtype_is_kept():
    tok = create_tokenizer("lac", num_classes=3, shape=(4, 4))
    assert tok.decode(tok.encode(SPEC_MASK.astype(np.int32))).dtype == np.uint8
    assert tok.subsample(SPEC_MASK).dtype == np.uint8


def test_panoptic_canonical_and_vanished_instances():
    tok = create_tokenizer("panoptic", num_classes=3, shape=(4, 4), subsample=2, stuff_classes=(2,))
    pan = np.zeros((4, 4), dtype=np.int64)
    pan[0:2, 0:2] = 1007  # kept: instance 1 of class 1
    pan[0, 3] = 1003  # vanishes with nearest subsampling (centre pixels (1|3, 1|3) are kept)
    pan[2:4, 0:2] = 1009  # instance 2 (id order: 1003 gone, 1007 -> 1, 1009 -> 2)
    pan[2:4, 2:4] = 2005  # stuff: instance number dropped
    token_mask = tok.subsample(pan)
    assert token_mask.tolist() == [[1001, 0], [1002, 2000]]
    assert tok.last_instances_vanished == 1
    report = tok.decode_report(tok.encode(pan), strict=True)
    np.testing.assert_array_equal(report.mask, token_mask)
    assert report.extras["instance_ids"].tolist() == [1001, 1002]
