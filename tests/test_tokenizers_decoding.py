"""Decoding model output (SPEC §6): grammars that generate only valid sequences, a 10,000-sequence fuzz of
every decoder, exact drop counts on hand-made malformed sequences, and strict decoding of ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from rleseg import create_tokenizer, list_tokenizers
from rleseg.tokenizers import EOS, PAD, PROMPTS, Grammar, Tokenizer, TokenizerError
from rleseg.tokenizers.registry import tokenizer_class

MC_OFFSETS = {"start": 1000, "length": 200, "class": 100}


def small(name: str, **cfg) -> Tokenizer:
    shape = (2, 4, 4) if tokenizer_class(name).ndim == 3 else (4, 4)
    return create_tokenizer(name, **{"num_classes": 3, "shape": shape, **cfg})


# Every registered tokenizer, plus the variants whose grammars differ.
VARIANTS = [(name, {}) for name in list_tokenizers()] + [
    ("mc2d", {"shared_coords": True}),
    ("lac2d", {"order": "col"}),
    ("gap", {"lac": True}),
    ("gap", {"num_classes": 2, "gap_range": 3}),
    ("rowwise", {"lac": True}),
    ("rowwise", {"num_classes": 2, "order": "col"}),
    ("panoptic", {"num_classes": 4, "stuff_classes": (2, 3)}),
    ("binary", {"max_run": 3}),
]
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in cfg.items()) for name, cfg in VARIANTS]


def random_walk(grammar: Grammar, rng: np.random.Generator, limit: int) -> list[int]:
    """A sequence that only ever picks allowed tokens (uniformly), EOS only in accepting states.

    Respects ``monotonic``/``nondecreasing`` (restarting after ``reset_on`` fields), ``max_len`` and
    ``min_tokens_to_close`` (it never opens a record it cannot finish within ``limit``).
    """
    vocab = grammar.vocab
    limit = min(limit, grammar.max_len or limit)
    state, content, last = 0, [], {}
    while True:
        options = []
        for t in grammar.states[state]:
            r = vocab[t.field]
            lo = r.lo
            if t.field in last and t.field in grammar.monotonic:
                lo = last[t.field] + 1
            if t.field in last and t.field in grammar.nondecreasing:
                lo = last[t.field]
            if lo < r.hi and len(content) + 1 + grammar.min_tokens_to_close[t.next_state] <= limit:
                options.append((t, lo, r.hi))
        accepting = state in grammar.accepting
        if accepting and (not options or rng.random() < 0.08):
            break
        assert options, f"dead end in non-accepting state {state} after {content}"
        sizes = np.array([hi - lo for _, lo, hi in options])
        pick = int(rng.integers(sizes.sum()))
        i = int(np.searchsorted(np.cumsum(sizes), pick, side="right"))
        t, lo, _ = options[i]
        token = lo + pick - int(sizes[:i].sum())
        content.append(token)
        if t.field in grammar.reset_on:
            last.clear()
        last[t.field] = token
        state = t.next_state
    return [grammar.prompt, *content, EOS]


@pytest.mark.parametrize("name, cfg", VARIANTS, ids=VARIANT_IDS)
def test_grammar_random_walks_decode_with_validity_one(name, cfg):
    tok = small(name, **cfg)
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(300):
        seq = random_walk(tok.grammar, rng, limit=40)
        lengths.append(len(seq))
        report = tok.decode_report(np.array(seq))
        assert report.runs_dropped == 0 and report.tokens_dropped == 0, seq
        assert report.validity == 1.0 and report.ended_with_eos
        assert report.mask.shape == tok.token_shape
    assert max(lengths) > 6  # the walks did produce content


@pytest.mark.parametrize("name, cfg", VARIANTS, ids=VARIANT_IDS)
def test_encoded_ground_truth_is_grammatical(name, cfg):
    tok = small(name, **cfg)
    rng = np.random.default_rng(1)
    shape = tok.shape
    for _ in range(20):
        cls = rng.integers(0, tok.num_classes, size=shape)
        mask = cls * 1000 + rng.integers(0, 3, size=shape) if name == "panoptic" else cls
        content = tok.encode(mask)
        assert (tok.parser.field_of(content) >= 0).all()
        ends = tok.parser.record_ends(content)  # raises if the content is not grammatical
        assert ends.size == 0 or ends[-1] == content.size


def fuzz_sequences(tok: Tokenizer, rng: np.random.Generator, count: int, length: int) -> np.ndarray:
    """Half uniform over [-3, vocab + 3) (specials, gaps between ranges, out of vocabulary), half drawn
    from the field ranges so that many sequences get deep into the grammar."""
    uniform = rng.integers(-3, tok.vocab_size + 3, size=(count // 2, length))
    ranges = tok.vocab.ranges
    which = rng.integers(len(ranges), size=(count - count // 2, length))
    lo = np.array([r.lo for r in ranges])[which]
    size = np.array([max(r.count, 1) for r in ranges])[which]
    in_field = lo + (rng.random(which.shape) * size).astype(np.int64)
    in_field[rng.random(which.shape) < 0.03] = EOS
    seqs = np.concatenate([uniform, in_field])
    seqs[rng.random(count) < 0.5, 0] = tok.prompt
    return seqs


@pytest.mark.parametrize("name, cfg", VARIANTS, ids=VARIANT_IDS)
def test_fuzz_10000_sequences_never_raise(name, cfg):
    """10,000 sequences through every registered decoder; 1,000 through each further variant."""
    tok = small(name, **cfg)
    rng = np.random.default_rng(2)
    seqs = fuzz_sequences(tok, rng, 1_000 if cfg else 10_000, int(rng.integers(8, 16)))
    dropped = 0
    for seq in seqs:
        r = tok.decode_report(seq)
        assert r.mask.shape == tok.token_shape
        assert 0 <= r.runs_dropped <= r.runs_total and 0.0 <= r.validity <= 1.0
        dropped += r.tokens_dropped
    assert dropped > 0
    tok.decode_report(np.zeros(0, dtype=np.int64))  # empty
    tok.decode_report(np.array([PAD, PAD]))
    tok.decode_report(np.array([tok.prompt, 2**40, -(2**40), EOS]))
    tok.decode_report(np.array([1.0, 7.0]))  # floats from a model are cast


# ---------------------------------------------------------------------------------------------- exact counts
def mc() -> Tokenizer:
    return create_tokenizer("mc", num_classes=3, shape=(4, 4), offsets=MC_OFFSETS)


def S(i: int) -> int:  # noqa: N802  (start token of the mc tokenizer above)
    return 1001 + i


def L(n: int) -> int:  # noqa: N802
    return 200 + n


def C(c: int) -> int:  # noqa: N802
    return 100 + c


@pytest.mark.parametrize(
    "content, total, runs_dropped, tokens_dropped, painted",
    [
        # trailing partial run
        ([S(1), L(2), C(1), S(4), L(2)], 2, 1, 2, {1: 1, 2: 1}),
        # a class token where a start belongs is dropped alone
        ([S(1), L(2), C(1), C(2), S(4), L(2), C(2)], 2, 0, 1, {1: 1, 2: 1, 4: 2, 5: 2}),
        # a start where the class belongs: the partial run (start, length) goes, the start opens the next
        ([S(1), L(2), S(4), L(2), C(2)], 2, 1, 2, {4: 2, 5: 2}),
        # an out-of-vocabulary and an unassigned token (150 lies between the class and length ranges)
        ([S(1), 5000, L(2), C(1), S(8), L(1), C(1), 150], 2, 1, 5, {8: 1}),
        # a prompt in the middle
        ([S(0), L(1), C(1), PROMPTS["video"], S(3), L(1), C(2)], 2, 0, 1, {0: 1, 3: 2}),
        # overlapping runs are kept and painted in order (later wins); a run past the end is clipped
        ([S(0), L(4), C(1), S(2), L(1), C(2), S(15), L(4), C(2)], 3, 0, 0, {0: 1, 1: 1, 2: 2, 3: 1, 15: 2}),
    ],
)
def test_malformed_exact_counts(content, total, runs_dropped, tokens_dropped, painted):
    tok = mc()
    r = tok.decode_report(np.array([PROMPTS["image"], *content, EOS, PAD, PAD]))
    assert (r.runs_total, r.runs_dropped, r.tokens_dropped) == (total, runs_dropped, tokens_dropped)
    expected = np.zeros(16, dtype=np.uint8)
    for pixel, value in painted.items():
        expected[pixel] = value
    np.testing.assert_array_equal(r.mask.ravel(), expected)
    if runs_dropped or tokens_dropped:
        with pytest.raises(TokenizerError):
            tok.decode_report(np.array(content), strict=True)


def test_end_of_sequence_handling():
    tok = mc()
    run = [S(1), L(2), C(1)]
    r = tok.decode_report(np.array([PROMPTS["image"], *run, EOS, *run]))
    assert r.ended_with_eos and r.runs_total == 1 and r.extras["tokens_after_end"] == 3
    r = tok.decode_report(np.array([*run, PAD, PAD]))  # no prompt, PAD ends the sequence
    assert not r.ended_with_eos and r.runs_total == 1 and r.tokens_dropped == 0
    with pytest.raises(TokenizerError, match="after the end"):
        tok.decode_report(np.array([PROMPTS["image"], *run, EOS, *run]), strict=True)
    with pytest.raises(TokenizerError, match="prompt 3"):
        tok.decode_report(np.array([PROMPTS["video"], *run, EOS]), strict=True)


def test_clipping_past_the_end():
    tok = mc()
    r = tok.decode_report(np.array([S(14), L(4), C(2)]))
    assert r.validity == 1.0 and r.extras["runs_clipped"] == 1
    assert r.mask.ravel().tolist() == [0] * 14 + [2, 2]
    with pytest.raises(TokenizerError, match="past the end"):
        tok.decode_report(np.array([S(14), L(4), C(2)]), strict=True)


def test_strict_rejects_decreasing_starts():
    tok = mc()
    assert tok.decode_report(np.array([S(5), L(1), C(1), S(2), L(1), C(1)])).validity == 1.0
    with pytest.raises(TokenizerError, match="'start' must increase"):
        tok.decode(np.array([S(5), L(1), C(1), S(2), L(1), C(1)]))
    with pytest.raises(TokenizerError, match="ends inside a record"):
        tok.decode(np.array([S(5), L(1)]))
    with pytest.raises(TokenizerError, match="expected one of \\['class'\\]"):
        tok.decode(np.array([S(5), L(1), S(6)]))


def test_shared_coords_out_of_range_row_is_dropped():
    offsets = {"coord": 1000, "length": 200, "class": 100}
    tok = create_tokenizer("mc2d", num_classes=3, shape=(2, 4), shared_coords=True, offsets=offsets)
    # coordinates range over 0..3; row 3 is outside a 2-row mask
    r = tok.decode_report(np.array([1001, 1002, 201, 101, 1004, 1001, 201, 102]))
    assert (r.runs_total, r.runs_dropped, r.tokens_dropped) == (2, 1, 4)
    assert r.mask.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(TokenizerError, match="outside"):
        tok.decode(np.array([1004, 1001, 201, 102]))


def test_lac_decoding_formula():
    tok = create_tokenizer("lac", num_classes=4, shape=(1, 8), max_run=3, offsets={"start": 1000, "lac": 100})
    # lac = M·(class−1) + length: 100 + 3·1 + 2 -> class 2, length 2; 100 + 3·2 + 3 -> class 3, length 3
    assert tok.decode(np.array([1001, 105, 1004, 109])).tolist() == [[2, 2, 0, 3, 3, 3, 0, 0]]


def test_gap_skip_tokens():
    tok = create_tokenizer("gap", num_classes=3, shape=(3, 4), gap_range=3)
    skip, gap, length, cls = (tok.vocab[n] for n in ("skip", "gap", "length", "class"))
    mask = np.zeros((3, 4), dtype=np.uint8)
    mask[0, 1] = 1  # gap 1
    mask[2, 0:3] = 2  # starts at 8, 6 after the previous run's end: 2 skips (3 each) + gap 0
    tokens = tok.encode(mask).tolist()
    assert tokens == [gap.lo + 1, length.lo, cls.lo, skip.lo, skip.lo, gap.lo, length.lo + 2, cls.lo + 1]
    np.testing.assert_array_equal(tok.decode(tokens), mask)
    assert tok.vocab_size == create_tokenizer("gap", num_classes=3, shape=(30, 4), gap_range=3).vocab_size
    # a run that lands past the end is clipped away, not dropped
    r = tok.decode_report(np.array([skip.lo] * 5 + [gap.lo, length.lo, cls.lo]))
    assert r.validity == 1.0 and r.extras["runs_clipped"] == 1 and r.mask.sum() == 0


def test_rowwise_eor_and_row_clipping():
    tok = create_tokenizer("rowwise", num_classes=2, shape=(3, 4))
    col, length, eor = (tok.vocab[n] for n in ("col", "length", "eor"))
    mask = np.array([[0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)
    tokens = tok.encode(mask).tolist()
    assert tokens == [col.lo + 1, length.lo + 2, eor.lo, col.lo, length.lo, eor.lo, eor.lo]
    np.testing.assert_array_equal(tok.decode(tokens), mask)
    r = tok.decode_report(np.array([col.lo + 2, length.lo + 3, eor.lo]))  # length 4 from column 2
    assert r.mask.tolist() == [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert r.validity == 1.0 and r.extras["runs_clipped"] == 1
    with pytest.raises(TokenizerError, match="cross a line end"):
        tok.decode(np.array([col.lo + 2, length.lo + 3, eor.lo]))


def test_panoptic_short_group_is_skipped_not_glued():
    offsets = {"start": 1000, "length": 200, "class": 100}
    tok = create_tokenizer("panoptic", num_classes=3, shape=(2, 4), offsets=offsets)
    seq = [PROMPTS["panoptic"]]
    seq += [1001, 201, 101]  # instance of class 1 at pixel 0
    seq += [1002, 101]  # too short: start then class
    seq += [1003, 202, 101]  # another class-1 instance: pixels 2..3
    seq += [1006, 201, 102, EOS]
    probs = np.linspace(0.1, 0.9, len(seq))
    r = tok.decode_report(np.array(seq), token_probs=probs)
    assert r.mask.tolist() == [[1001, 0, 1002, 1002], [0, 2001, 0, 0]]
    assert (r.runs_total, r.runs_dropped, r.tokens_dropped) == (4, 1, 2)
    assert r.extras["instance_ids"].tolist() == [1001, 1002, 2001]
    np.testing.assert_allclose(r.extras["instance_scores"], probs[[3, 8, 11]])


def test_panoptic_stuff_after_things_and_wrong_order():
    offsets = {"start": 1000, "length": 200, "class": 100, "lac": 300}
    tok = create_tokenizer("panoptic", num_classes=3, shape=(1, 6), stuff_classes=(2,), offsets=offsets)
    pan = np.array([[2000, 1001, 1001, 0, 2000, 2000]])
    tokens = tok.encode(pan).tolist()
    assert tokens == [1002, 202, 101, 1001, 301, 1005, 302]
    np.testing.assert_array_equal(tok.decode(tokens), pan)
    # a thing group after stuff is not allowed: it is dropped (start+length partial, then the class)
    r = tok.decode_report(np.array([1001, 301, 1002, 202, 101]))
    assert (r.runs_total, r.runs_dropped, r.tokens_dropped) == (2, 1, 3)


# ---------------------------------------------------------------- fast paths == general paths
FAST_VARIANTS = [
    ("binary", {"num_classes": 2}),
    ("binary", {"num_classes": 4}),  # all foreground classes count as one
    ("binary", {"num_classes": 2, "max_run": 3}),
    ("binary", {"num_classes": 2, "shape": (5, 37)}),  # rows long enough for the kernel's 8-byte scan
    ("mc", {"num_classes": 4}),
    ("mc", {"num_classes": 3, "subsample": 2, "order": "col"}),
    ("mc", {"num_classes": 3, "shape": (4, 33), "max_run": 12}),
    ("lac", {"num_classes": 4, "max_run": 5}),
    ("lac", {"num_classes": 3, "subsample": 2, "subsample_method": "any"}),
    ("lac", {"num_classes": 3, "shape": (6, 40), "order": "col"}),
]


@pytest.fixture(params=["kernels", "numpy"])
def fast_path(request, monkeypatch):
    """Run a test with the compiled kernels (skipped where they were not built) and without them."""
    from rleseg.tokenizers import runs

    if request.param == "numpy":
        monkeypatch.setattr(runs, "kernels", None)
    elif runs.kernels is None:
        pytest.skip("the compiled kernels are not built (no C compiler, or RLESEG_NO_EXTENSIONS=1)")
    return request.param


@pytest.mark.parametrize(
    "name, cfg", FAST_VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FAST_VARIANTS)]
)
def test_fast_paths_agree_with_the_general_paths(name, cfg, fast_path):
    """binary/mc/lac encode and strict-decode without the grammar parser (compiled kernels, else a few
    numpy calls); both must give exactly what the general (parser) path gives, and leave to it whatever
    they cannot vouch for."""
    from rleseg.tokenizers.image import RunTokenizer

    cfg = dict(cfg)
    shape = cfg.pop("shape", (8, 6))
    tok = create_tokenizer(name, shape=shape, **cfg)
    rng = np.random.default_rng(0)
    for trial in range(300):
        density = rng.uniform(0, 1)
        mask = np.where(rng.random(shape) < density, rng.integers(0, cfg["num_classes"], shape), 0)
        if trial % 4 == 3:  # long runs, and runs that go on across line ends
            mask = np.repeat(mask.ravel()[:: shape[1]], shape[1]).reshape(shape)
        mask = [mask.astype(np.uint8), mask > 0, mask.astype(np.int32), mask.astype(np.int64)][trial % 4]
        if mask.dtype == bool and cfg["num_classes"] > 2 and name != "binary":
            mask = mask.astype(np.uint8)
        tokens = tok.encode(mask)
        np.testing.assert_array_equal(tokens, RunTokenizer.encode(tok, mask))
        sequence, truncated, num_runs = tok.encode_sequence(mask)
        general = RunTokenizer.encode_sequence(tok, mask)
        np.testing.assert_array_equal(sequence, general[0])
        assert (truncated, num_runs) == general[1:]
        fast_runs, general_runs = tok.runs(mask), RunTokenizer.runs(tok, mask)
        for field in ("starts", "lengths", "values"):
            np.testing.assert_array_equal(getattr(fast_runs, field), getattr(general_runs, field))
        fast, general = tok.decode(tokens), tok.decode_report(tokens, strict=True).mask
        np.testing.assert_array_equal(fast, general)
        assert fast.dtype == general.dtype and fast.shape == tok.token_shape
        np.testing.assert_array_equal(tok.decode(tokens.astype(np.int32)), general)  # other int dtypes
        np.testing.assert_array_equal(tok.decode(np.repeat(tokens, 2)[::2]), general)  # a strided view
        # corrupt the sequence: whenever a fast decoder accepts it, the parser must accept it too and
        # agree; otherwise the general path raises its usual error
        bad = tokens.copy()
        if bad.size:
            bad[rng.integers(bad.size)] = rng.integers(0, tok.vocab_size + 2)
        fast = tok._decode_strict_fast(bad) if fast_path == "numpy" else tok._kernel_decode(bad)
        if fast is not None:
            np.testing.assert_array_equal(fast, tok.decode_report(bad, strict=True).mask)
        else:
            with pytest.raises(TokenizerError):
                tok.decode_report(bad, strict=True)


def test_kernels_are_built():
    """The compiled kernels are what make small binary masks faster than pycocotools (benchmarks/
    bench_tokenizers.py); an install with a C compiler must have them."""
    import os

    from rleseg.tokenizers import runs

    if os.environ.get("RLESEG_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("RLESEG_NO_EXTENSIONS is set")
    assert runs.kernels is not None, "rleseg/tokenizers/_kernels.c was not built: run `make install` again"


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.float32])
def test_bad_labels_give_the_same_error_with_and_without_kernels(dtype, monkeypatch):
    """Out-of-range labels, also at pixels subsampling skips, raise the general path's error either way."""
    from rleseg.tokenizers import runs

    messages = {}
    for path in ("kernels", "numpy"):
        if path == "numpy":
            monkeypatch.setattr(runs, "kernels", None)
        found = []
        for name, factor in [("binary", 1), ("mc", 1), ("lac", 2), ("mc", 2)]:
            tok = create_tokenizer(name, num_classes=3, shape=(4, 4), subsample=factor)
            for value, at in [(3, (0, 0)), (-1, (0, 0)), (3, (3, 3)), (-1, (2, 3)), (0.5, (1, 1))]:
                mask = np.zeros((4, 4), dtype=np.float64)
                mask[at] = value
                if np.dtype(dtype).kind == "u" and value < 0 or np.dtype(dtype).kind in "iu" and value % 1:
                    continue
                try:
                    tok.encode(mask.astype(dtype))
                    found.append(None)
                except TokenizerError as e:
                    found.append(str(e))
        messages[path] = found
    assert messages["kernels"] == messages["numpy"]
    assert all(messages["numpy"]), messages["numpy"]  # every case is an error


def test_fast_paths_leave_bad_input_to_the_general_errors():
    tok = create_tokenizer("binary", shape=(4, 4))
    with pytest.raises(TokenizerError, match="class id 2 >= num_classes 2"):
        tok.encode(np.full((4, 4), 2, dtype=np.uint8))
    with pytest.raises(TokenizerError, match="shape"):
        tok.encode(np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(TokenizerError, match="negative id -1"):
        tok.encode(np.full((4, 4), -1, dtype=np.int32))
    with pytest.raises(TokenizerError):
        tok.decode(np.array([5, 1, 3, 1]))  # runs out of order
