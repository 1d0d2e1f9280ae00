"""Generation: cached == uncached, output format, the KV cache, and grammar-constrained decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rleseg.models import GenerationError, GrammarConstraint, KVCache, Pix2Seq
from rleseg.tokenizers import (
    EOS,
    PAD,
    PROMPTS,
    Grammar,
    Transition,
    VocabLayout,
    create_tokenizer,
    list_tokenizers,
)

VIDEO_TOKENIZERS = {"video_mc", "video_lac", "tac", "ltac"}


def tiny(vocab: int, max_len: int, **overrides) -> Pix2Seq:
    cfg = dict(
        backbone="test_resnet", feature_stride=8, d_model=32, encoder_layers=1, decoder_layers=2,
        num_heads=4, mlp_dim=64, dropout=0.0,
    )  # fmt: skip
    return Pix2Seq(vocab, max_len, **{**cfg, **overrides})


def clips(batch: int, frames: int, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, frames, 3, size, size) if frames > 1 else torch.randn(batch, 3, size, size)


# Three sequences that end at different steps (EOS at positions 3, 5 and 8).
TARGETS = torch.tensor(
    [
        [2, 7, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [2, 11, 8, 12, 15, 1, 0, 0, 0, 0, 0, 0],
        [2, 9, 9, 13, 17, 6, 18, 10, 1, 0, 0, 0],
    ]
)


def overfit(model: Pix2Seq, x: torch.Tensor, targets: torch.Tensor, max_steps: int = 400) -> None:
    """Teacher-force ``model`` on ``targets`` until greedy generation reproduces them."""
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(max_steps):
        logits = model(x, targets[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets[:, 1:].flatten())
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step % 10 == 9 and torch.equal(model.generate(x, 2, targets.shape[1]).tokens, targets):
            return
    raise AssertionError("the tiny model did not learn the three target sequences")


@pytest.mark.parametrize(("frames", "fusion"), [(1, "sequential"), (2, "sequential"), (2, "late")])
def test_cached_equals_uncached_greedy_with_rows_ending_at_different_steps(frames, fusion):
    torch.manual_seed(0)
    model = tiny(20, 16, frames=frames, fusion=fusion)
    x = clips(3, frames)
    overfit(model, x, TARGETS)
    cached = model.generate(x, 2, 12)
    uncached = model.generate(x, 2, 12, use_cache=False)
    assert torch.equal(cached.tokens, TARGETS)  # rows end at steps 3, 5 and 8
    assert torch.equal(uncached.tokens, cached.tokens)
    torch.testing.assert_close(uncached.probs, cached.probs)
    assert cached.steps == 8  # stopped when the last row emitted EOS, not at max_len


@pytest.mark.parametrize("grammar", [False, True])
def test_cached_equals_uncached_when_sampling_with_the_same_generator(grammar):
    torch.manual_seed(1)
    tok = create_tokenizer("mc", num_classes=3, shape=(8, 8))
    model = tiny(tok.vocab_size, 40)
    x = clips(4, 1)
    kwargs = dict(strategy="top_p", top_p=0.9, temperature=1.5, grammar=tok.grammar if grammar else None)
    a = model.generate(x, PROMPTS["image"], **kwargs, generator=torch.Generator().manual_seed(7))
    b = model.generate(
        x, PROMPTS["image"], **kwargs, generator=torch.Generator().manual_seed(7), use_cache=False
    )
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.probs, b.probs)
    c = model.generate(x, PROMPTS["image"], **kwargs, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a.tokens, c.tokens)  # the generator really drives the sampling


def test_output_format():
    torch.manual_seed(0)
    model = tiny(20, 16)
    x = clips(3, 1)
    overfit(model, x, TARGETS)
    out = model.generate(x, torch.tensor([2, 2, 2]), 14)
    assert out.tokens.dtype == torch.int64 and out.tokens.shape == (3, 14)
    assert out.tokens[:, 0].tolist() == [2, 2, 2]
    assert torch.all(out.probs[:, 0] == 1.0)
    ends = [3, 5, 8]
    for row, end in enumerate(ends):
        assert out.tokens[row, end] == EOS
        assert torch.all(out.tokens[row, end + 1 :] == PAD)
        assert torch.all(out.probs[row, end + 1 :] == 0.0)
        assert torch.all((out.probs[row, 1 : end + 1] > 0) & (out.probs[row, 1 : end + 1] <= 1))
    assert out.lengths.tolist() == [e + 1 for e in ends]


def test_greedy_probs_are_the_softmax_of_the_chosen_token():
    torch.manual_seed(0)
    model = tiny(30, 10).eval()
    x = clips(2, 1)
    out = model.generate(x, 2, 6)
    with torch.no_grad():
        logits = model(x, out.tokens[:, :5])
    expected = logits.softmax(-1).gather(2, out.tokens[:, 1:6, None]).squeeze(2)
    live = out.tokens[:, 1:6] != PAD
    torch.testing.assert_close(out.probs[:, 1:6][live], expected[live])
    assert torch.equal(out.tokens[:, 1:6][live], logits.argmax(-1)[live])


def test_kv_cache_is_preallocated_and_written_in_place():
    torch.manual_seed(0)
    model = tiny(30, 12).eval()
    dec = model.decoder
    with torch.no_grad():
        memory = model.encode(clips(2, 1))
        tokens = torch.randint(2, 30, (2, 6))
        cache = KVCache.allocate(dec.num_layers, 2, dec.num_heads, 12, dec.head_dim)
        buffers = [k.data_ptr() for k in cache.keys]
        cross = dec.cross_kv(memory)
        for pos in range(6):
            step_logits = dec.step(tokens[:, pos], pos, cache, cross)
        full = dec(tokens, memory)
        # layer 0's cached keys equal the keys of the teacher-forced pass
        x0 = dec.embed(tokens) + dec.pos_embed[:6]
        k0, _ = dec.layers[0].self_attn.project_kv(dec.layers[0].norm1(x0))
    assert cache.keys[0].shape == (2, dec.num_heads, 12, dec.head_dim)
    assert [k.data_ptr() for k in cache.keys] == buffers
    torch.testing.assert_close(cache.keys[0][:, :, :6], k0)
    torch.testing.assert_close(step_logits, full[:, -1], atol=1e-5, rtol=1e-4)


def test_generation_argument_errors():
    model = tiny(30, 12)
    x = clips(1, 1)
    with pytest.raises(GenerationError, match="strategy"):
        model.generate(x, 2, strategy="beam")
    with pytest.raises(GenerationError, match="top_p"):
        model.generate(x, 2, strategy="top_p", top_p=0.0)
    with pytest.raises(GenerationError, match="temperature"):
        model.generate(x, 2, temperature=0)
    with pytest.raises(GenerationError, match=r"max_len must be in 2..12"):
        model.generate(x, 2, max_len=13)
    tok = create_tokenizer("lac", num_classes=3, shape=(8, 8))
    with pytest.raises(GenerationError, match="smaller than the grammar's vocabulary"):
        model.generate(x, PROMPTS["image"], grammar=tok.grammar)
    model = tiny(tok.vocab_size, 12)
    with pytest.raises(GenerationError, match="does not match the grammar's task prompt 2"):
        model.generate(x, PROMPTS["video"], grammar=tok.grammar)


# ---------------------------------------------------------------- GrammarConstraint on a hand-built grammar

VOCAB = VocabLayout.build([("class", 2, 1), ("length", 4, 1), ("row", 3, 0), ("col", 3, 0)])
CLS, LEN, ROW, COL = (VOCAB[f] for f in ("class", "length", "row", "col"))


def tokens_of(r) -> set[int]:
    return set(range(r.lo, r.hi))


def allowed_set(gc: GrammarConstraint, st, position: int, max_len: int) -> set[int]:
    return set(torch.nonzero(gc.allowed(st, position, max_len)[0]).flatten().tolist())


def row_col_grammar(**kwargs) -> Grammar:
    # row col length class, repeated (an mc2d-like run)
    states = (
        (Transition("row", 1),),
        (Transition("col", 2),),
        (Transition("length", 3),),
        (Transition("class", 0),),
    )
    return Grammar(VOCAB, PROMPTS["image"], states, frozenset({0}), **kwargs)


def test_constraint_allows_only_the_field_of_the_state_and_eos_at_run_boundaries():
    gc = GrammarConstraint(row_col_grammar(), VOCAB.size)
    st = gc.start(1)
    assert allowed_set(gc, st, 1, 50) == tokens_of(ROW) | {EOS}
    for token, field in [(ROW.lo, COL), (COL.lo, LEN), (LEN.lo, CLS), (CLS.lo, ROW)]:
        gc.advance(st, torch.tensor([token]))
        expected = tokens_of(field) | ({EOS} if field is ROW else set())
        assert allowed_set(gc, st, 1 + st.content, 50) == expected


def test_constraint_orders_fields_and_resets_them():
    grammar = row_col_grammar(monotonic=("col",), nondecreasing=("row",), reset_on=("row",))
    gc = GrammarConstraint(grammar, VOCAB.size)
    st = gc.start(1)
    for token in (ROW.lo + 1, COL.lo + 1, LEN.lo, CLS.lo):
        gc.advance(st, torch.tensor([token]))
    # a row may repeat but not go back
    assert allowed_set(gc, st, 5, 50) == {ROW.lo + 1, ROW.lo + 2, EOS}
    gc.advance(st, torch.tensor([ROW.lo + 1]))
    # a row token resets the col order (reset_on): every col is allowed again
    assert allowed_set(gc, st, 6, 50) == tokens_of(COL)
    grammar = row_col_grammar(monotonic=("col",))
    gc = GrammarConstraint(grammar, VOCAB.size)
    st = gc.start(1)
    for token in (ROW.lo, COL.lo + 1, LEN.lo, CLS.lo, ROW.lo):
        gc.advance(st, torch.tensor([token]))
    assert allowed_set(gc, st, 6, 50) == {COL.lo + 2}  # strictly greater than the last col


def test_constraint_never_opens_a_run_it_cannot_close():
    gc = GrammarConstraint(row_col_grammar(), VOCAB.size)
    st = gc.start(1)
    # max_len 6: prompt + 4 run tokens + EOS fits exactly; one position fewer and only EOS is possible
    assert allowed_set(gc, st, 1, 6) == tokens_of(ROW) | {EOS}
    assert allowed_set(gc, st, 1, 5) == {EOS}
    gc.advance(st, torch.tensor([ROW.lo]))
    assert allowed_set(gc, st, 2, 6) == tokens_of(COL)


def test_constraint_forces_eos_when_an_ordered_field_is_exhausted():
    grammar = row_col_grammar(monotonic=("col",))
    gc = GrammarConstraint(grammar, VOCAB.size)
    st = gc.start(1)
    for token in (ROW.lo, COL.hi - 1, LEN.lo, CLS.lo, ROW.lo):
        gc.advance(st, torch.tensor([token]))
    assert allowed_set(gc, st, 6, 50) == {EOS}


def test_constraint_respects_the_grammar_max_len():
    states = ((Transition("class", 0),),)
    grammar = Grammar(VOCAB, PROMPTS["image"], states, frozenset({0}), max_len=3)
    gc = GrammarConstraint(grammar, VOCAB.size)
    st = gc.start(2)
    for _ in range(3):
        assert allowed_set(gc, st, 1 + st.content, 50) == tokens_of(CLS) | {EOS}
        gc.advance(st, torch.tensor([CLS.lo, CLS.lo]))
    assert allowed_set(gc, st, 4, 50) == {EOS}


def test_constraint_tracks_each_row_separately():
    gc = GrammarConstraint(row_col_grammar(nondecreasing=("row",)), VOCAB.size)
    st = gc.start(2)
    gc.advance(st, torch.tensor([ROW.lo + 2, EOS]))
    ok = gc.allowed(st, 2, 50)
    assert set(torch.nonzero(ok[0]).flatten().tolist()) == tokens_of(COL)
    assert set(torch.nonzero(ok[1]).flatten().tolist()) == tokens_of(ROW) | {EOS}


def test_constraint_rejects_bad_grammars():
    with pytest.raises(GenerationError, match="smaller than the grammar's vocabulary"):
        GrammarConstraint(row_col_grammar(), VOCAB.size - 1)
    bad = Grammar(VOCAB, 2, ((Transition("start", 0),),), frozenset({0}))
    with pytest.raises(GenerationError, match="field 'start', which the vocabulary lacks"):
        GrammarConstraint(bad, VOCAB.size)
    twice = Grammar(VOCAB, 2, ((Transition("row", 0), Transition("row", 0)),), frozenset({0}))
    with pytest.raises(GenerationError, match="two transitions on field 'row'"):
        GrammarConstraint(twice, VOCAB.size)


def test_max_len_shorter_than_the_shortest_sequence_is_an_error():
    grammar = Grammar(VOCAB, 2, ((Transition("row", 1),), (Transition("col", 0),)), frozenset({1}))
    model = tiny(VOCAB.size, 8)
    with pytest.raises(GenerationError, match="shortest sequence"):
        model.generate(clips(1, 1), 2, max_len=2, grammar=grammar)


# ---------------------------------------------------------------- validity with the real tokenizers


def _tokenizer(name: str):
    if name in VIDEO_TOKENIZERS:
        return create_tokenizer(name, num_classes=3, shape=(2, 8, 8)), 2
    if name == "panoptic":
        return create_tokenizer(name, num_classes=4, shape=(8, 8)), 1
    return create_tokenizer(name, num_classes=3, shape=(8, 8)), 1


def _validity(tok, tokens: torch.Tensor) -> tuple[float, list]:
    reports = tok.decode_batch(tokens.numpy())
    total = sum(r.runs_total for r in reports)
    dropped = sum(r.runs_dropped for r in reports)
    return (1.0 if total == 0 else 1 - dropped / total), reports


@pytest.mark.parametrize("name", list_tokenizers())
@pytest.mark.parametrize("eos_bias", [0.0, -1e4])
def test_constrained_decoding_of_an_untrained_model_is_always_valid(name, eos_bias):
    # eos_bias -1e4: a model that never wants to stop; the grammar must still close the last run in time
    torch.manual_seed(0)
    tok, frames = _tokenizer(name)
    model = tiny(tok.vocab_size, 47, frames=frames)
    with torch.no_grad():
        model.decoder.out_bias[EOS] = eos_bias
    x = clips(6, frames)
    for kwargs in (dict(), dict(strategy="top_p", top_p=0.9, generator=torch.Generator().manual_seed(0))):
        out = model.generate(x, tok.grammar.prompt, grammar=tok.grammar, **kwargs)
        validity, reports = _validity(tok, out.tokens)
        assert validity == 1.0
        assert all(r.ended_with_eos and r.tokens_dropped == 0 for r in reports)
        limit = tok.grammar.max_len
        if limit is not None:
            assert int(out.lengths.max()) <= limit + 2
        _replay(tok, out.tokens, eos_only_when_forced=eos_bias < 0)


def _replay(tok, tokens: torch.Tensor, *, eos_only_when_forced: bool) -> None:
    """Every emitted token was allowed; with EOS suppressed, EOS came only when nothing else was."""
    gc = GrammarConstraint(tok.grammar, tok.vocab_size)
    max_len = tokens.shape[1]
    for row in tokens:
        st = gc.start(1)
        for pos in range(1, max_len):
            token = int(row[pos])
            ok = gc.allowed(st, pos, max_len)[0]
            assert ok[token], (pos, token)
            if token == EOS:
                assert not eos_only_when_forced or int(ok.sum()) == 1
                break
            gc.advance(st, row[pos : pos + 1])
        else:
            raise AssertionError("no EOS")


@pytest.mark.parametrize(
    "name", ["binary", "mc", "lac", "mc2d", "lac2d", "tac", "ltac", "video_mc", "panoptic"]
)
def test_unconstrained_decoding_of_an_untrained_model_is_not_always_valid(name):
    torch.manual_seed(0)
    tok, frames = _tokenizer(name)
    model = tiny(tok.vocab_size, 60, frames=frames)
    out = model.generate(
        clips(6, frames), tok.grammar.prompt, strategy="top_p", top_p=0.9,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    validity, _ = _validity(tok, out.tokens)
    assert validity < 1.0


def test_constrained_decoding_lets_a_trained_model_say_what_it_learned():
    # the mask only removes options: a model that already writes valid sequences is unaffected
    torch.manual_seed(0)
    tok = create_tokenizer("lac", num_classes=3, shape=(4, 4), max_seq_len=16)
    masks = np.array(
        [
            [[0, 1, 1, 0], [2, 2, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2]],
            [[0, 0, 0, 0], [0, 2, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        ],
        dtype=np.uint8,
    )
    seqs = torch.as_tensor(np.stack([tok.encode_sequence(m)[0] for m in masks]))
    width = int((seqs != PAD).sum(1).max()) + 1
    targets = seqs[:, :width]
    model = tiny(tok.vocab_size, 16)
    x = clips(2, 1)
    overfit(model, x, targets)
    out = model.generate(x, PROMPTS["image"], width, grammar=tok.grammar)
    assert torch.equal(out.tokens, targets)
    for row, mask in zip(out.tokens.numpy(), masks, strict=True):
        assert np.array_equal(tok.decode(row), mask)


def test_anchored_fine_memory_model_steps_equal_the_teacher_forced_pass():
    """memory_stride + anchor: cached steps track each row's latest start exactly as the full pass does."""
    torch.manual_seed(3)
    model = tiny(80, 24, memory_stride=4, anchor=True).eval()
    x = clips(3, 1)
    memory = model.encode(x)
    assert memory.shape == (3, 8 * 8, 32)  # 32x32 input: the stride-4 grid, not the stride-8 one
    model.decoder.configure_anchor(10, torch.randperm(64))  # starts are tokens 10..73
    tokens = torch.tensor(
        [[2, 3, 12, 40, 15, 15, 50, 1], [2, 11, 5, 5, 5, 30, 33, 1], [2, 5, 6, 7, 8, 9, 4, 1]]
    )
    with torch.no_grad():
        full = model.decoder(tokens, memory)
        cross = model.decoder.cross_kv(memory)
        cache = KVCache.allocate(2, 3, 4, tokens.shape[1], 8)
        steps = torch.stack(
            [model.decoder.step(tokens[:, p], p, cache, cross) for p in range(tokens.shape[1])], 1
        )
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    # the anchor changes what follows a start and nothing before it
    with torch.no_grad():
        moved = model.decoder(torch.where(tokens == 12, 13, tokens), memory)
    assert torch.equal(moved[0, :2], full[0, :2]) and not torch.allclose(moved[0, 2:], full[0, 2:])
    assert torch.equal(moved[2], full[2])  # row 2 has no start token: no anchor input anywhere


def test_anchor_must_be_built_and_fine_memory_is_for_images():
    from rleseg.models import ModelConfigError

    with pytest.raises(ValueError, match="anchor=True"):
        tiny(20, 8).decoder.configure_anchor(2, torch.arange(4))
    with pytest.raises(ModelConfigError, match="image models"):
        tiny(20, 8, memory_stride=4, frames=2)
