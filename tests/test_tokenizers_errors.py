"""Bad input masks, bad configurations and token input that is no token sequence raise TokenizerError
naming the problem and the value; lenient decoding of any array-like of numbers never raises."""

from __future__ import annotations

import importlib.util
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from rleseg import create_tokenizer, list_tokenizers
from rleseg.tokenizers import EOS, INVALID_TOKEN, Tokenizer, TokenizerError, as_token_array
from rleseg.tokenizers.registry import tokenizer_class


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


# ------------------------------------------------------------------ token input: types and shapes
TOKENIZERS = list_tokenizers()


def small(name: str) -> Tokenizer:
    shape = (2, 4, 4) if tokenizer_class(name).ndim == 3 else (4, 4)
    return create_tokenizer(name, num_classes=3, shape=shape)


def ground_truth(tok: Tokenizer) -> np.ndarray:
    """prompt + content + EOS of a fixed mask with a few runs of every class."""
    rng = np.random.default_rng(3)
    mask = rng.integers(0, tok.num_classes, size=tok.shape) * (rng.random(tok.shape) < 0.5)
    if tok.name == "panoptic":
        mask = mask * 1000 + (mask > 0)
    seq = tok.encode_sequence(mask)[0]
    assert seq.size > 3 and tok.decode_report(seq, strict=True).runs_total > 0
    return seq


def with_last_content_token(seq: np.ndarray, value: object) -> np.ndarray:
    """``seq`` as an object array with its last content token (just before EOS) replaced by ``value``."""
    out = seq.astype(object)
    out[int(np.flatnonzero(seq == EOS)[0]) - 1] = value
    return out


def _bad_inputs(seq: np.ndarray) -> list[tuple[str, object, str]]:
    last = int(seq[int(np.flatnonzero(seq == EOS)[0]) - 1])
    content = seq[1 : int(np.flatnonzero(seq == EOS)[0])]
    fraction = seq.astype(np.float64)
    fraction[int(np.flatnonzero(seq == EOS)[0]) - 1] = last + 0.9
    nan = seq.astype(np.float64)
    nan[1] = np.nan
    inf = seq.astype(np.float32)
    inf[1] = -np.inf
    beyond_u = seq.astype(np.uint64)
    beyond_u[1] = 2**64 - 1
    beyond_f = seq.astype(np.float64)
    beyond_f[1] = 2.0**63
    return [
        ("fraction", fraction, rf"token {last + 0.9!r} at position \d+ is not an integer"),
        ("nan", nan, r"token nan at position 1 is not finite"),
        ("inf", inf, r"token -inf at position 1 is not finite"),
        ("bool", seq > 2, r"dtype bool; expected integer token ids"),
        ("object", seq.astype(object), r"dtype object; expected integer token ids"),
        ("string", seq.astype(str), r"dtype <U\d+; expected integer token ids"),
        ("str", "2 7 9 1", r"dtype <U7; expected integer token ids"),
        ("complex", seq.astype(np.complex128), r"dtype complex128; expected integer token ids"),
        ("2-D", np.stack([seq, seq]), rf"must be 1-D; got a 2-D array of shape \(2, {seq.size}\)"),
        ("column", seq[:, None], rf"must be 1-D; got a 2-D array of shape \({seq.size}, 1\)"),
        # content only, as the fast paths of binary/mc/lac (compiled kernel, numpy) take it
        ("content row", content[None, :], rf"must be 1-D; got a 2-D array of shape \(1, {content.size}\)"),
        ("content float", content + 0.5, r"token \d+\.5 at position 0 is not an integer"),
        ("0-D", np.int64(seq[0]), r"must be 1-D; got a 0-D array"),
        ("uint64 beyond int64", beyond_u, r"token 18446744073709551615 at position 1 is beyond the int64"),
        ("float beyond int64", beyond_f, r"token 9\.223372036854776e\+18 at position 1 is beyond the int64"),
        (
            "list beyond int64",
            [*seq.tolist()[:-1], 2**70],
            r"token 1180591620717411303424 at position \d+ is",
        ),
        ("negative beyond", with_last_content_token(seq, -(2**63) - 1), r"token -9223372036854775809 at"),
        ("ragged", [seq.tolist(), [1, 2]], r"not a 1-D array of integers"),
    ]


BAD_CASES = [c[0] for c in _bad_inputs(np.array([2, 10, 11, 1]))]


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.parametrize("name", TOKENIZERS)
def test_strict_decoding_rejects_input_that_is_no_token_sequence(name, case):
    """The same sequence as int64 decodes; as floats with a fraction, NaN or inf, bool, object, strings,
    complex, not 1-D, or with a value beyond int64 it raises TokenizerError naming what is wrong, through
    both the fast path (``decode``) and the parser (``decode_report``)."""
    tok = small(name)
    seq = ground_truth(tok)
    tok.decode(seq)  # the values themselves are fine
    tok.decode(seq[1 : int(np.flatnonzero(seq == EOS)[0])])
    _, bad, message = next(c for c in _bad_inputs(seq) if c[0] == case)
    with pytest.raises(TokenizerError, match=message):
        tok.decode(bad)
    with pytest.raises(TokenizerError, match=message):
        tok.decode_report(bad, strict=True)


def test_strict_rejects_1002_9_instead_of_truncating_it():
    tok = create_tokenizer(
        "mc", num_classes=3, shape=(4, 4), offsets={"start": 1000, "length": 200, "class": 100}
    )
    assert tok.decode(np.array([1002, 203, 101])).ravel().tolist()[:5] == [0, 1, 1, 1, 0]  # start 1, length 3
    with pytest.raises(TokenizerError, match=r"token 1002\.9 at position 0 is not an integer"):
        tok.decode(np.array([1002.9, 203, 101]))
    with pytest.raises(TokenizerError, match=r"token 1002\.9 at position 0 is not an integer"):
        tok.decode_report(np.array([1002.9, 203, 101]), strict=True)
    # lenient: 1002.9 is no token id and is dropped, not read as 1002 (its run is dropped with it)
    r = tok.decode_report(np.array([1002.9, 203, 101]))
    assert not r.mask.any() and r.tokens_dropped == 3


@pytest.mark.parametrize("name", TOKENIZERS)
def test_strict_decoding_accepts_integral_floats_and_any_int_dtype(name):
    """Floats whose values are all exact integers (a sequence that went through a float tensor), other
    integer dtypes, lists and tuples decode exactly as the int64 array does."""
    tok = small(name)
    seq = ground_truth(tok)
    expected = tok.decode(seq)
    forms = [
        seq.astype(np.float64),
        seq.astype(np.float32),
        seq.astype(np.int32),
        seq.astype(np.uint16),
        seq.tolist(),
        tuple(seq.tolist()),
        seq.astype(np.float64).tolist(),
        np.repeat(seq, 2)[::2],  # a strided view
    ]
    for form in forms:
        np.testing.assert_array_equal(tok.decode(form), expected)
        np.testing.assert_array_equal(tok.decode_report(form, strict=True).mask, expected)
    assert tok.decode([]).shape == tok.token_shape  # an empty list is the empty mask
    assert not tok.decode(np.zeros(0)).any()


INVALID_VALUES = [np.nan, np.inf, -np.inf, 2.5, -0.5, 2**63, 2**70, -(2**70), "7", None, Fraction(5, 2)]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_lenient_decoding_counts_invalid_values_like_out_of_vocabulary_ids(name):
    """A value that is no token id (NaN, inf, 2.5, beyond int64, a string, None) in place of a
    content token is dropped and counted exactly like an out-of-vocabulary id (-7) in its place."""
    tok = small(name)
    seq = ground_truth(tok)
    reference = tok.decode_report(with_last_content_token(seq, -7).astype(np.int64))
    assert reference.tokens_dropped > 0  # the out-of-vocabulary id does count as dropped
    for value in INVALID_VALUES:
        forms = [with_last_content_token(seq, value)]
        forms.append(forms[0].tolist())
        if isinstance(value, float):
            forms.append(forms[0].astype(np.float64))
            forms.append(forms[0].astype(np.float32))
        for form in forms:
            r = tok.decode_report(form)
            np.testing.assert_array_equal(r.mask, reference.mask)
            got = (r.runs_total, r.runs_dropped, r.tokens_dropped, r.ended_with_eos)
            want = (reference.runs_total, reference.runs_dropped, reference.tokens_dropped, True)
            assert got == want, (value, type(form))
            with pytest.raises(TokenizerError):
                tok.decode_report(form, strict=True)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_lenient_decoding_never_raises_on_array_likes_of_numbers(name):
    tok = small(name)
    seq = ground_truth(tok)
    whole = tok.decode_report(seq)
    inputs = [
        [],
        (),
        np.zeros(0),
        np.zeros((0, 3), dtype=np.int64),
        np.array(7),
        np.float64(np.nan),
        -seq,
        np.full(9, -(2**63), dtype=np.int64),
        np.full(9, 2**64 - 1, dtype=np.uint64),
        np.array([np.nan, np.inf, -np.inf, 1e300, -1e300, 0.5]),
        np.array([2**70, -(2**70), 3.5, Fraction(1, 3), 1 + 2j, "x", None, [1, [2]]], dtype=object),
        seq.astype(np.complex64),
        seq > 3,
        np.stack([seq, seq]),
        [seq.tolist(), [7, 8]],  # ragged
        seq.astype(str),
    ]
    for x in inputs:
        r = tok.decode_report(x)
        assert r.mask.shape == tok.token_shape
        assert 0 <= r.runs_dropped <= r.runs_total and r.tokens_dropped >= 0
        assert tok.decode(x, strict=False).shape == tok.token_shape
    assert tok.decode_report([]).tokens_dropped == 0 and not tok.decode_report([]).mask.any()
    # lenient decoding flattens 2-D input; a list, a tuple and float copies decode as the array does
    np.testing.assert_array_equal(tok.decode_report(seq[None, :]).mask, whole.mask)
    for form in (seq.tolist(), tuple(seq.tolist()), seq.astype(np.float64), seq.astype(object)):
        r = tok.decode_report(form)
        np.testing.assert_array_equal(r.mask, whole.mask)
        assert (r.runs_total, r.tokens_dropped) == (whole.runs_total, whole.tokens_dropped)
    # every element of an all-invalid input counts as dropped (no EOS: the whole input is content)
    assert tok.decode_report(np.full(5, np.nan)).tokens_dropped == 5
    assert tok.decode_report(seq.astype(str)).tokens_dropped == seq.size


def test_as_token_array():
    lenient = as_token_array(np.array([1002.9, np.nan, np.inf, 2.0**63, 9.0, -3.0]), strict=False)
    assert lenient.tolist() == [INVALID_TOKEN, INVALID_TOKEN, INVALID_TOKEN, INVALID_TOKEN, 9, -3]
    assert lenient.dtype == np.int64
    objects = [2**70, 5, True, "3", 2.0, Fraction(6, 2), np.int8(4), np.float32(1.5), 2**63 - 1, None]
    assert as_token_array(objects, strict=False).tolist() == [-1, 5, 1, -1, 2, 3, 4, -1, 2**63 - 1, -1]
    assert as_token_array(np.array([True, False]), strict=False).tolist() == [-1, -1]  # a mask, not tokens
    assert as_token_array([[1, 2], [3, [4, 5]]], strict=False).tolist() == [1, 2, 3, 4, 5]
    assert as_token_array(np.array([[1, 2], [3, 4]]), strict=False).tolist() == [1, 2, 3, 4]
    seq = np.arange(5, dtype=np.int64)
    assert as_token_array(seq, strict=True) is seq  # the common case is not copied
    assert as_token_array([2**63 - 1, -(2**63)], strict=True).tolist() == [2**63 - 1, -(2**63)]
    assert as_token_array(np.array([3.0, -1.0], dtype=np.float16), strict=True).tolist() == [3, -1]
    with pytest.raises(TokenizerError, match=r"token 0\.5 at position 1 is not an integer"):
        as_token_array([3, 0.5], strict=True)


# ------------------------------------------------------------------ fuzz (small; the full run is a benchmark)
def _fuzz_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_tokenizers.py"
    spec = importlib.util.spec_from_file_location("fuzz_tokenizers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_tokenizers", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", TOKENIZERS)
def test_fuzz_200_inputs_of_random_types(name):
    """``benchmarks/fuzz_tokenizers.py`` at 200 inputs per tokenizer: lenient decoding never raises,
    strict decoding decodes or raises TokenizerError, rejects every non-token kind and accepts ground
    truth in every numeric form (``--per-tokenizer 10000`` for the full run)."""
    fuzz = _fuzz_module()
    stats = fuzz.fuzz(name, 200, seed=1)
    assert stats.failed == 0, "\n".join(stats.failures)
    assert stats.sequences == 200
    assert stats.strict_rejects > 0 and stats.strict_decoded > 0 and stats.lenient_tokens_dropped > 0
    kinds = [k for k, expect in fuzz.KINDS.items() if expect == "reject"]
    assert all(stats.rejects_by_kind.get(k, 0) > 0 for k in kinds), stats.rejects_by_kind
