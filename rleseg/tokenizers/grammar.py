"""Grammar builders and the grammar-driven parser every decoder uses (SPEC §6).

A :class:`~rleseg.tokenizers.base.Grammar` says which field each position holds. Tokenizers build theirs
with the helpers below, and decode through :class:`GrammarParser`, so what constrained generation allows
and what decoding accepts come from the same machine.

Parsing a model sequence (lenient, never raises):

0. read the input with :func:`~rleseg.tokenizers.base.as_token_array` (values that are no token id,
   such as NaN or 2.5, become an out-of-vocabulary id and are dropped like one);
1. strip a leading task prompt, stop at the first EOS (or, lacking one, at the first PAD);
2. cut the content at ``max_len`` when the grammar fixes it (the excess counts as dropped tokens);
3. walk the machine. A *record* is the tokens that lead from an accepting state back to an accepting
   state (one run, one instance group, one skip token...). A token the current state does not allow ends
   the partial record, which is dropped (one run, its tokens), and is then retried from the last accepting
   state; if it does not fit there either it is dropped alone. A partial record at the end is dropped.

Well-formed sequences (all ground truth, most model output) take a vectorised path; only malformed ones
walk the machine token by token. ``strict=True`` raises :class:`TokenizerError` instead of dropping.

>>> from rleseg.tokenizers.base import VocabLayout, PROMPTS, EOS
>>> v = VocabLayout.build([("length", 4, 1), ("start", 16, 0)])
>>> p = GrammarParser(cycle_grammar(v, PROMPTS["image"], ["start", "length"]))
>>> # start 3, length 2 | start 4, then a start where a length belongs | start 5, length 3
>>> r = p.parse(np.array([PROMPTS["image"], 13, 7, 14, 15, 8, EOS]))
>>> r.tokens.tolist(), r.records, r.runs_dropped, r.tokens_dropped
([13, 7, 15, 8], 2, 1, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from rleseg.tokenizers.base import (
    EOS,
    PAD,
    PROMPTS,
    Grammar,
    TokenizerError,
    Transition,
    VocabLayout,
    as_token_array,
)

_PROMPT_IDS = frozenset(PROMPTS.values())


def build_grammar(
    vocab: VocabLayout,
    prompt: int,
    edges: dict[int, Sequence[tuple[str, int]]],
    accepting: Iterable[int] = (0,),
    **constraints,
) -> Grammar:
    """A grammar from ``{state: [(field, next_state), ...]}``; ``constraints`` are Grammar's keywords."""
    for state, trans in edges.items():
        for name, nxt in trans:
            if name not in vocab:
                raise TokenizerError(
                    f"grammar state {state} names field {name!r}, which the vocabulary lacks"
                )
            if nxt not in edges:
                raise TokenizerError(f"grammar state {state} leads to undefined state {nxt}")
    states = tuple(tuple(Transition(f, n) for f, n in edges[s]) for s in range(len(edges)))
    return Grammar(vocab=vocab, prompt=prompt, states=states, accepting=frozenset(accepting), **constraints)


def cycle_grammar(vocab: VocabLayout, prompt: int, fields: Sequence[str], **constraints) -> Grammar:
    """The grammar of a fixed-k run scheme: ``fields[0] fields[1] ... fields[k-1]`` repeated."""
    k = len(fields)
    return build_grammar(vocab, prompt, {i: [(fields[i], (i + 1) % k)] for i in range(k)}, **constraints)


@dataclass
class Parsed:
    """What survived parsing: only complete, grammatical records, plus the account of what was dropped."""

    tokens: np.ndarray  # kept content tokens, int64
    records: int  # complete records kept (marker records such as skip / end-of-row not counted)
    runs_dropped: int
    tokens_dropped: int
    ended_with_eos: bool
    tokens_after_end: int = 0
    # index of each kept token in the array given to ``parse``; None: consecutive from ``offset``
    kept_at: np.ndarray | None = None
    offset: int = 0
    # field of each kept token, computed on first use (the fast path of fixed-k grammars never needs it)
    _fields: np.ndarray | None = None
    _parser: GrammarParser | None = None

    @property
    def records_total(self) -> int:
        return self.records + self.runs_dropped

    @property
    def fields(self) -> np.ndarray:
        """Index into ``vocab.ranges`` of each kept token's field."""
        if self._fields is None:
            assert self._parser is not None
            self._fields = self._parser.field_of(self.tokens)
        return self._fields

    @property
    def positions(self) -> np.ndarray:
        """Index of each kept token in the array given to ``parse`` (to look up per-token scores)."""
        if self.kept_at is None:
            return np.arange(self.offset, self.offset + self.tokens.size)
        return self.kept_at


class GrammarParser:
    """Parses token sequences with a compiled :class:`Grammar` (see the module docstring).

    Args:
        grammar: the tokenizer's grammar.
        markers: fields whose one-token records are not runs (a skip token, an end-of-row token); they
            do not count towards ``records``.
    """

    def __init__(self, grammar: Grammar, markers: Sequence[str] = ()) -> None:
        self.grammar = grammar
        ranges = grammar.vocab.ranges
        self.field_names = [r.name for r in ranges]
        index = {name: i for i, name in enumerate(self.field_names)}
        n_states, n_fields = len(grammar.states), len(ranges)
        # next_state[s, f]; the extra state n_states is a dead sink
        table = np.full((n_states + 1, n_fields), n_states, dtype=np.int64)
        for s, trans in enumerate(grammar.states):
            for t in trans:
                table[s, index[t.field]] = t.next_state
        self.dead = n_states
        self.table = table
        self.accepting = np.zeros(n_states + 1, dtype=bool)
        self.accepting[list(grammar.accepting)] = True
        self._dicts = [{index[t.field]: t.next_state for t in trans} for trans in grammar.states]
        # A grammar is field-determined when a field always leads to the same state: then the state
        # sequence is a shifted lookup and well-formedness one vectorised check.
        self.next_of_field: np.ndarray | None = np.full(n_fields, n_states, dtype=np.int64)
        for f in range(n_fields):
            targets = set(table[:n_states, f].tolist()) - {n_states}
            if len(targets) > 1:
                self.next_of_field = None
                break
            if targets:
                self.next_of_field[f] = targets.pop()
        # A simple cycle (one transition per state, back to 0 after k tokens, no resets): well-formedness
        # is then a range check per column of the content reshaped to (records, k).
        self._cycle: list[tuple[int, int, int]] | None = None
        if all(len(t) == 1 for t in grammar.states) and grammar.accepting == {0} and not grammar.reset_on:
            path, state = [], 0
            while True:
                t = grammar.states[state][0]
                r = grammar.vocab[t.field]
                path.append((index[t.field], r.lo, r.count))
                state = t.next_state
                if state == 0 or len(path) > n_states:
                    break
            if state == 0 and len(path) == n_states:
                self._cycle = path
        self.markers = np.zeros(n_fields, dtype=bool)
        self.markers[[index[m] for m in markers]] = True
        order = np.argsort([r.lo for r in ranges])
        self._los = np.array([ranges[i].lo for i in order], dtype=np.int64)
        self._his = np.array([ranges[i].hi for i in order], dtype=np.int64)
        self._ids = order.astype(np.int64)
        self._constraints = [
            (index[name], strictly, [index[r] for r in grammar.reset_on])
            for names, strictly in ((grammar.monotonic, True), (grammar.nondecreasing, False))
            for name in names
        ]

    def field_of(self, tokens: np.ndarray) -> np.ndarray:
        """Index into ``vocab.ranges`` of each token's field; -1 for special or unassigned ids."""
        pos = np.searchsorted(self._los, tokens, side="right") - 1
        ok = (pos >= 0) & (tokens < self._his[np.maximum(pos, 0)])
        return np.where(ok, self._ids[np.maximum(pos, 0)], -1)

    # ------------------------------------------------------------------ sequences
    def split_sequence(self, tokens: object, strict: bool) -> tuple[np.ndarray, int, bool, int]:
        """``(content, offset, ended_with_eos, non-PAD tokens after the end)`` of a model sequence."""
        t = as_token_array(tokens, strict=strict)
        begin = 0
        if t.size and int(t[0]) in _PROMPT_IDS:
            if strict and t[0] != self.grammar.prompt:
                raise TokenizerError(
                    f"sequence starts with prompt {int(t[0])}; this tokenizer's is {self.grammar.prompt}"
                )
            begin = 1
        body = t[begin:]
        # PAD = 0 and EOS = 1: as unsigned, negative garbage ids become huge and are not mistaken for them
        stop = np.flatnonzero(body.view(np.uint64) <= max(PAD, EOS))
        if stop.size == 0:
            return body, begin, False, 0
        end = int(stop[0])
        ended = bool(body[end] == EOS)
        after = body[end + 1 :]
        extra = int(np.count_nonzero(after != PAD))
        if strict and extra:
            bad = after[after != PAD][0]
            raise TokenizerError(f"token {int(bad)} after the end of the sequence (position {begin + end})")
        return body[:end], begin, ended, extra

    def parse(self, tokens: object, *, strict: bool = False) -> Parsed:
        content, offset, ended, extra = self.split_sequence(tokens, strict)
        dropped_tail = 0
        max_len = self.grammar.max_len
        if max_len is not None and content.size > max_len:
            if strict:
                raise TokenizerError(
                    f"content has {content.size} tokens; the grammar allows at most {max_len}"
                )
            dropped_tail = content.size - max_len
            content = content[:max_len]
        if self._cycle is not None and self._cycle_well_formed(content):
            if strict:
                self._check_cycle_order(content)
            k = len(self._cycle)
            return Parsed(
                content, content.size // k, 0, dropped_tail, ended, extra, offset=offset, _parser=self
            )
        fields = self.field_of(content)
        ok = self._well_formed(fields)
        if ok is not None:
            if strict:
                self._check_order(content, fields)
            records = int(np.count_nonzero(ok)) - int(np.count_nonzero(self.markers[fields]))
            return Parsed(content, records, 0, dropped_tail, ended, extra, offset=offset, _fields=fields)
        keep, records, runs_dropped, tokens_dropped = self._walk(content, fields, strict)
        kept, kept_fields = content[keep], fields[keep]
        if strict:
            self._check_order(kept, kept_fields)
        tokens_dropped += dropped_tail
        return Parsed(
            kept,
            records,
            runs_dropped,
            tokens_dropped,
            ended,
            extra,
            kept_at=keep + offset,
            _fields=kept_fields,
        )

    def record_ends(self, content: np.ndarray) -> np.ndarray:
        """Indices one past each record of well-formed ``content`` (where a tail may be cut)."""
        fields = self.field_of(content)
        closes = self._well_formed(fields)
        if closes is None:
            raise TokenizerError("record_ends needs a well-formed content sequence")
        return np.flatnonzero(closes) + 1

    # ------------------------------------------------------------------ internals
    def _cycle_well_formed(self, content: np.ndarray) -> bool:
        assert self._cycle is not None
        k = len(self._cycle)
        if content.size % k:
            return False
        block = content.reshape(-1, k)
        for j, (_, lo, count) in enumerate(self._cycle):
            # one unsigned comparison checks lo <= token < lo + count
            if not ((block[:, j] - lo).view(np.uint64) < count).all():
                return False
        return True

    def _check_cycle_order(self, content: np.ndarray) -> None:
        assert self._cycle is not None
        block = content.reshape(-1, len(self._cycle))
        for f, strictly, _ in self._constraints:
            for j, (field_index, _, _) in enumerate(self._cycle):
                if field_index == f:
                    k = block.shape[1]
                    self._raise_if_unordered(f, strictly, block[:, j], lambda i, j=j, k=k: i * k + j)

    def _well_formed(self, fields: np.ndarray) -> np.ndarray | None:
        """Boolean "this token closes a record" per token if the sequence is grammatical, else None."""
        if fields.size == 0:
            return np.zeros(0, dtype=bool)
        if (fields < 0).any():
            return None
        if self.next_of_field is not None:
            before = np.empty(fields.size, dtype=np.int64)
            before[0] = 0
            before[1:] = self.next_of_field[fields[:-1]]
            after = self.table[before, fields]
        else:
            after = self._prefix_states(fields)
        if (after == self.dead).any() or not self.accepting[after[-1]]:
            return None
        return self.accepting[after]

    def _prefix_states(self, fields: np.ndarray) -> np.ndarray:
        """State after each token, by a log-depth parallel scan over transition functions."""
        funcs = self.table[:, fields].T.copy()  # [n, S+1]: state before -> state after token i
        d = 1
        while d < fields.size:
            # compose: apply funcs[i - d] first, then funcs[i]
            funcs[d:] = np.take_along_axis(funcs[d:], funcs[:-d], axis=1)
            d *= 2
        return funcs[:, 0]

    def _walk(
        self, content: np.ndarray, fields: np.ndarray, strict: bool
    ) -> tuple[np.ndarray, int, int, int]:
        accepting, dicts, markers = self.accepting, self._dicts, self.markers
        state = home = 0
        keep: list[int] = []
        cur: list[int] = []
        records = runs_dropped = tokens_dropped = 0
        for i, f in enumerate(fields.tolist()):
            nxt = dicts[state].get(f)
            if nxt is None:
                if strict:
                    self._raise_unexpected(content, fields, i, state)
                if cur:
                    runs_dropped += 1
                    tokens_dropped += len(cur)
                    cur = []
                    state = home
                    nxt = dicts[state].get(f)
                if nxt is None:
                    tokens_dropped += 1
                    continue
            cur.append(i)
            state = nxt
            if accepting[state]:
                if not (len(cur) == 1 and markers[f]):
                    records += 1
                keep.extend(cur)
                cur = []
                home = state
        if cur:
            if strict:
                raise TokenizerError(
                    f"sequence ends inside a record: {len(cur)} trailing token(s) {content[cur].tolist()}"
                )
            runs_dropped += 1
            tokens_dropped += len(cur)
        return np.asarray(keep, dtype=np.int64), records, runs_dropped, tokens_dropped

    def _raise_unexpected(self, content: np.ndarray, fields: np.ndarray, i: int, state: int) -> None:
        want = [t.field for t in self.grammar.states[state]]
        got = self.field_names[fields[i]] if fields[i] >= 0 else "no field (special or unassigned id)"
        raise TokenizerError(
            f"token {int(content[i])} at content position {i} is {got}; expected one of {want}"
        )

    def _check_order(self, tokens: np.ndarray, fields: np.ndarray) -> None:
        """Strict mode: monotonic / nondecreasing fields, restarting after ``reset_on`` fields."""
        for f, strictly, resets in self._constraints:
            at = np.flatnonzero(fields == f)
            same = None
            if resets and at.size > 1:
                segment = np.cumsum(np.isin(fields, resets))[at]
                same = segment[1:] == segment[:-1]
            self._raise_if_unordered(f, strictly, tokens[at], lambda i, at=at: int(at[i]), same)

    def _raise_if_unordered(
        self,
        f: int,
        strictly: bool,
        values: np.ndarray,
        position: Callable[[int], int],
        same: np.ndarray | None = None,
    ) -> None:
        """Raise unless ``values`` increase (strictly) wherever ``same`` (consecutive pairs) is True;
        ``position(i)`` is the content position of ``values[i]``, for the message."""
        if values.size < 2:
            return
        bad = (values[1:] <= values[:-1]) if strictly else (values[1:] < values[:-1])
        if same is not None:
            bad &= same
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            kind = "increase" if strictly else "not decrease"
            raise TokenizerError(
                f"field {self.field_names[f]!r} must {kind} along the sequence: "
                f"token {int(values[j + 1])} follows {int(values[j])} (content position {position(j + 1)})"
            )
