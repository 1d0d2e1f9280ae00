"""The contract every tokenizer keeps: vocabulary layout, grammar, and the encode/decode interface.

This module is numpy-only. Models (constrained generation), DataModules (tokenizing in workers) and
metrics (validity rate) all talk to tokenizers through the objects defined here and nothing else.

Sequence layout the model sees (SPEC §2.5)::

    [task prompt] + content tokens + [EOS] + [PAD] * (max_seq_len - len)

``encode`` returns *content tokens only* (what SPEC §3/§4's worked examples show); ``encode_sequence``
adds the prompt, EOS, padding and truncation. ``decode`` accepts either form: special tokens (PAD, EOS,
prompts) live in their own range, so a full sequence is recognised and stripped.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

Task = Literal["image", "video", "static_video", "panoptic"]
TASKS: tuple[str, ...] = ("image", "video", "static_video", "panoptic")

# Special tokens always come first and keep these ids in both offset policies.
PAD, EOS = 0, 1
PROMPTS: dict[str, int] = {"image": 2, "video": 3, "static_video": 4, "panoptic": 5}
NUM_SPECIAL = 2 + len(PROMPTS)


class TokenizerError(ValueError):
    """A bad input mask, a bad configuration, or a malformed ground-truth sequence."""


#: what lenient decoding puts in place of a value that is no token id (NaN, 2.5, 2**70, "a", None): a
#: negative id, which is neither PAD, EOS nor a prompt and lies in no field, so the parser drops it and
#: counts it in ``tokens_dropped`` like any other out-of-vocabulary id
INVALID_TOKEN = -1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT64 = np.dtype(np.int64)


def as_token_array(tokens: object, *, strict: bool) -> np.ndarray:
    """The one place token input is coerced: a 1-D int64 array of the ids in ``tokens``.

    Every decoder (the grammar parser, and the strict fast paths of the run tokenizers) takes its
    input through here, so all tokenizers accept and reject the same things.

    ``strict=True`` (ground truth) takes a 1-D array-like of integer dtype, or of a float dtype whose
    values are *all* exact integers (``[5.0, 7.0]`` is read as ``[5, 7]``, so tokens that went through a
    float tensor still decode; ``1002.9``, NaN and inf are not integers and are rejected, never
    truncated). Everything else raises :class:`TokenizerError` naming what is wrong: bool, object,
    string, complex or other non-integer dtypes, arrays that are not 1-D (nothing is flattened), and
    values outside the int64 range (``2**63``, or ``2**70`` in a list, which numpy stores as float or
    object).

    ``strict=False`` (model output) never raises on an array-like of numbers: anything numpy can read,
    including ragged nested lists and object arrays, is flattened, and every value that is not an
    integer within int64 (2.5, NaN, inf, 2**70, a string, None) becomes :data:`INVALID_TOKEN`, which
    decoding drops and counts in ``tokens_dropped`` like an out-of-vocabulary id. A bool *array* is a
    mask, not tokens: all its values are invalid. A bool scalar among numbers (``[3, True]``) is read as
    0/1, as numpy and Python read it.

    >>> as_token_array([5.0, 7], strict=True).tolist()
    [5, 7]
    >>> as_token_array(np.array([1002.9, np.nan, 2**70, 9]), strict=False).tolist()
    [-1, -1, -1, 9]
    >>> as_token_array([[1, 2], [3]], strict=False).tolist()
    [1, 2, 3]
    """
    if type(tokens) is np.ndarray and tokens.dtype == _INT64 and (tokens.ndim == 1 or not strict):
        return tokens if tokens.ndim == 1 else tokens.reshape(-1)  # the common case, no copy
    try:
        arr = np.asarray(tokens)
    except (ValueError, TypeError) as e:  # ragged nested lists, objects numpy cannot read
        if strict:
            raise TokenizerError(f"token sequence is not a 1-D array of integers ({e})") from None
        return _lenient_objects(_leaves(tokens))
    if strict:
        return _strict(arr)
    kind = arr.dtype.kind
    if kind == "i":
        return arr.reshape(-1).astype(np.int64, copy=False)
    flat = arr.reshape(-1)
    if kind == "u":
        out = flat.astype(np.int64)
        out[flat > _INT64_MAX] = INVALID_TOKEN
        return out
    if kind == "c":
        real = flat.real
        ok = (flat.imag == 0) & _integral(real)
        return np.where(ok, real, INVALID_TOKEN).astype(np.int64)
    if kind == "f":
        return np.where(_integral(flat), flat, INVALID_TOKEN).astype(np.int64)
    if kind == "O" or (kind in "US" and not isinstance(tokens, np.ndarray | str | bytes)):
        # element by element (numpy turns a list holding one string into an all-string array)
        return _lenient_objects(_leaves(flat if kind == "O" else tokens))
    # bool, strings, bytes, datetimes, structured: no value is a token id
    return np.full(flat.size, INVALID_TOKEN, dtype=np.int64)


def _integral(values: np.ndarray) -> np.ndarray:
    """Which float values are exact integers inside the int64 range (NaN and inf are not)."""
    if values.dtype.itemsize < 8:  # float16 cannot even hold the bound 2**63
        values = values.astype(np.float64)
    with np.errstate(invalid="ignore"):
        return (
            np.isfinite(values) & (np.floor(values) == values) & (values >= _INT64_MIN) & (values < 2.0**63)
        )


def _strict(arr: np.ndarray) -> np.ndarray:
    kind = arr.dtype.kind
    if kind == "O":
        for i, x in enumerate(_leaves(arr.reshape(-1))):
            if isinstance(x, numbers.Integral) and _object_id(x) is None:
                raise TokenizerError(f"token {int(x)} at position {i} is beyond the int64 range")
    if kind not in "iuf":
        raise TokenizerError(f"token sequence has dtype {arr.dtype}; expected integer token ids")
    if arr.ndim != 1:
        raise TokenizerError(
            f"token sequence must be 1-D; got a {arr.ndim}-D array of shape {arr.shape} "
            "(strict decoding flattens nothing)"
        )
    if kind == "i":
        return arr.astype(np.int64, copy=False)
    if kind == "u":
        over = np.flatnonzero(arr > _INT64_MAX)
        if over.size:
            i = int(over[0])
            raise TokenizerError(f"token {int(arr[i])} at position {i} is beyond the int64 range")
        return arr.astype(np.int64)
    ok = _integral(arr)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        v = float(arr[i])
        if not math.isfinite(v) or v != math.floor(v):
            what = "is not finite" if not math.isfinite(v) else "is not an integer"
            raise TokenizerError(
                f"token {v!r} at position {i} {what}; float tokens are accepted only when every value "
                "is an exact integer"
            )
        raise TokenizerError(f"token {v!r} at position {i} is beyond the int64 range")
    return arr.astype(np.int64)


def _leaves(obj: object) -> list:
    """The scalars of a (possibly ragged) nesting of lists, tuples and arrays, in order."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind != "O":
            return list(obj.reshape(-1))
        obj = obj.reshape(-1).tolist()
    if isinstance(obj, list | tuple):
        out: list = []
        for x in obj:
            if isinstance(x, list | tuple | np.ndarray):
                out += _leaves(x)
            else:
                out.append(x)
        return out
    return [obj]


def _object_id(x: object) -> int | None:
    """The token id a Python/numpy scalar stands for, or None when it is no integer within int64."""
    if isinstance(x, str | bytes):
        return None
    try:
        if isinstance(x, numbers.Integral | np.bool_):  # a bool scalar is 0/1, as numpy reads [3, True]
            v = int(x)
        elif isinstance(x, numbers.Complex) and not isinstance(x, numbers.Real):
            return _object_id(x.real) if x.imag == 0 else None
        elif isinstance(x, numbers.Number):  # float, numpy floats, Fraction, Decimal
            f = float(x)  # type: ignore[arg-type]
            if not math.isfinite(f) or f != math.floor(f):
                return None
            v = int(f)
        else:
            return None
    except (ValueError, TypeError, OverflowError, ArithmeticError):
        return None
    return v if _INT64_MIN <= v <= _INT64_MAX else None


def _lenient_objects(values: list) -> np.ndarray:
    ids = [_object_id(x) for x in values]
    return np.array([INVALID_TOKEN if v is None else v for v in ids], dtype=np.int64)


@dataclass(frozen=True)
class TokenRange:
    """A contiguous block of token ids holding one field.

    Token ``lo + (value - value_min)`` encodes ``value``; ``count`` values are representable.
    Example (SPEC §3, explicit offsets): starts 0..15 at offset 1000 are ``TokenRange("start", 1001, 16, 0)``.
    """

    name: str
    lo: int
    count: int
    value_min: int = 0

    @property
    def hi(self) -> int:
        """One past the last token id of the range."""
        return self.lo + self.count

    def to_tokens(self, values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """int64 tokens of ``values`` (written into ``out`` when given)."""
        return np.add(values, self.lo - self.value_min, out=out, dtype=np.int64)

    def to_values(self, tokens: np.ndarray) -> np.ndarray:
        return np.add(tokens, self.value_min - self.lo, dtype=np.int64)

    def contains(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        return (tokens >= self.lo) & (tokens < self.hi)


@dataclass(frozen=True)
class VocabLayout:
    """Named, disjoint token ranges; ``size`` is derived, never typed by hand (SPEC §3, Vocabulary layout).

    Build it with :meth:`build`, which supports the two offset policies: ``compact`` (ranges packed
    after the special tokens, in the order given) and explicit offsets (``offsets={"start": 1000, ...}``
    puts the token of the *smallest* value of a field at ``offset + 1``, which reproduces the
    reference's ``1000 + 1 + start``, ``200 + length`` and ``100 + class``).
    """

    ranges: tuple[TokenRange, ...]

    def __post_init__(self) -> None:
        spans = sorted((r.lo, r.hi, r.name) for r in self.ranges if r.count > 0)
        for (lo_a, hi_a, a), (lo_b, _hi_b, b) in zip(spans, spans[1:], strict=False):
            if lo_b < hi_a:
                raise TokenizerError(f"token ranges {a!r} [{lo_a}, {hi_a}) and {b!r} overlap at {lo_b}")
        if spans and spans[0][0] < NUM_SPECIAL:
            raise TokenizerError(
                f"token range {spans[0][2]!r} overlaps the special tokens [0, {NUM_SPECIAL})"
            )

    @classmethod
    def build(cls, fields: list[tuple[str, int, int]], offsets: dict[str, int] | None = None) -> VocabLayout:
        """Lay out ``fields`` given as ``(name, count, value_min)``.

        >>> v = VocabLayout.build([("class", 2, 1), ("length", 4, 1), ("start", 16, 0)])
        >>> v["start"].lo, v.size
        (12, 28)
        >>> v = VocabLayout.build([("class", 2, 1), ("length", 4, 1), ("start", 16, 0)],
        ...                       offsets={"class": 100, "length": 200, "start": 1000})
        >>> int(v["start"].to_tokens(np.array(1))), v.size
        (1002, 1017)
        """
        ranges, nxt = [], NUM_SPECIAL
        for name, count, value_min in fields:
            if offsets is not None:
                if name not in offsets:
                    raise TokenizerError(
                        f"explicit offsets need an offset for field {name!r}; got {sorted(offsets)}"
                    )
                lo = offsets[name] + 1
            else:
                lo = nxt
            ranges.append(TokenRange(name, lo, count, value_min))
            nxt = lo + count
        return cls(tuple(ranges))

    def __getitem__(self, name: str) -> TokenRange:
        for r in self.ranges:
            if r.name == name:
                return r
        raise KeyError(f"no token range {name!r}; ranges are {[r.name for r in self.ranges]}")

    def __contains__(self, name: str) -> bool:
        return any(r.name == name for r in self.ranges)

    @property
    def size(self) -> int:
        return max([NUM_SPECIAL] + [r.hi for r in self.ranges])

    def describe(self) -> str:
        rows = [f"special [0, {NUM_SPECIAL}): PAD={PAD} EOS={EOS} prompts={PROMPTS}"]
        rows += [
            f"{r.name} [{r.lo}, {r.hi}) values {r.value_min}..{r.value_min + r.count - 1}"
            for r in self.ranges
        ]
        return "\n".join(rows + [f"vocab_size {self.size}"])


@dataclass(frozen=True)
class Transition:
    """From a grammar state, a token in range ``field`` is allowed and leads to state ``next_state``."""

    field: str
    next_state: int


@dataclass(frozen=True)
class Grammar:
    """Which field each position holds, as a small finite-state machine over token ranges.

    ``states[i]`` lists the transitions allowed in state ``i``; state 0 is the state right after the
    task prompt. ``accepting`` are the states in which EOS may be emitted (a sequence may only end at a
    run boundary). ``monotonic`` names fields whose values must strictly increase along the sequence
    (the start of each run), ``nondecreasing`` fields that may repeat but not go back (the row of a
    2-D start). ``reset_on`` names fields after which those order constraints restart (the class token
    closing an instance in the panoptic scheme). ``max_len`` bounds the content length when it is fixed
    (the dense baseline). ``min_tokens_to_close[s]`` is the fewest tokens that lead from state ``s`` to an
    accepting state, which lets a constrained generator stop opening runs it cannot finish.

    Decoding uses the same machine, so what generation allows and what decoding accepts cannot drift.
    """

    vocab: VocabLayout
    prompt: int
    states: tuple[tuple[Transition, ...], ...]
    accepting: frozenset[int]
    monotonic: tuple[str, ...] = ()
    nondecreasing: tuple[str, ...] = ()
    reset_on: tuple[str, ...] = ()
    max_len: int | None = None
    min_tokens_to_close: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.min_tokens_to_close:
            object.__setattr__(self, "min_tokens_to_close", self._distances_to_accept())

    def _distances_to_accept(self) -> tuple[int, ...]:
        big = 1 << 30
        dist = [0 if s in self.accepting else big for s in range(len(self.states))]
        for _ in range(len(self.states)):
            for s, trans in enumerate(self.states):
                for t in trans:
                    dist[s] = min(dist[s], dist[t.next_state] + 1)
        return tuple(dist)

    def field_of_token(self, tokens: np.ndarray) -> np.ndarray:
        """Index into ``vocab.ranges`` of each token's field, -1 for special or unassigned tokens."""
        tokens = np.asarray(tokens)
        out = np.full(tokens.shape, -1, dtype=np.int64)
        for i, r in enumerate(self.vocab.ranges):
            out[r.contains(tokens)] = i
        return out


@dataclass
class DecodeResult:
    """A decoded mask and an account of what decoding had to drop (SPEC §6)."""

    mask: np.ndarray
    runs_total: int = 0
    runs_dropped: int = 0
    tokens_dropped: int = 0
    ended_with_eos: bool = False
    extras: dict = field(default_factory=dict)

    @property
    def validity(self) -> float:
        """Fraction of runs kept; 1.0 for an empty sequence."""
        return 1.0 if self.runs_total == 0 else 1.0 - self.runs_dropped / self.runs_total


@dataclass
class EncodedBatch:
    """Model-ready sequences: ``tokens[b]`` = prompt + content + EOS + PAD, all of length ``max_seq_len``."""

    tokens: np.ndarray  # int64 [B, max_seq_len]
    lengths: np.ndarray  # int64 [B], number of non-PAD tokens (prompt and EOS included)
    truncated: np.ndarray  # bool [B]
    num_runs: np.ndarray  # int64 [B], runs before truncation


class Tokenizer(ABC):
    """Base class of every registered tokenizer. See ``rleseg.tokenizers.create_tokenizer``."""

    #: registry name, set by ``register_tokenizer``
    name: ClassVar[str] = ""
    #: which task prompt (and DataModule) the tokenizer belongs to
    task: ClassVar[Task] = "image"
    #: names of the vocabulary ranges whose tokens carry the class (weighted by the model's
    #: ``class_token_weight``); a tokenizer with other field names declares its own
    class_fields: ClassVar[tuple[str, ...]] = ("class", "lac", "tac", "ltac", "stuff_lac", "stuff_class")

    vocab: VocabLayout
    grammar: Grammar
    #: tokens per run (k in SPEC §3); for the panoptic scheme, per (start, length) pair
    tokens_per_run: int
    #: shape of the label mask the tokenizer takes ((H, W) or (T, H, W)), before subsampling
    shape: tuple[int, ...]
    #: shape after subsampling by ``subsample`` (the token mask)
    token_shape: tuple[int, ...]
    num_classes: int
    max_seq_len: int | None
    truncation: Literal["tail", "longest"]

    @property
    def vocab_size(self) -> int:
        return self.vocab.size

    @abstractmethod
    def subsample(self, mask: np.ndarray) -> np.ndarray:
        """Validate ``mask`` and shrink it to ``token_shape`` (SPEC §2.1)."""

    @abstractmethod
    def encode(self, mask: np.ndarray) -> np.ndarray:
        """Content tokens (int64, 1-D) of a label mask at full resolution. No prompt, EOS or truncation."""

    @abstractmethod
    def decode_report(self, tokens: np.ndarray, *, strict: bool = False) -> DecodeResult:
        """Decode content tokens or a full model sequence into a token-resolution mask.

        Lenient by default (never raises on any array-like of numbers, counts what it drops); ``strict=True``
        raises :class:`TokenizerError` on anything malformed (ground truth). What input is accepted, and
        how values that are no token id are counted, is :func:`as_token_array`'s to say.
        """

    def decode(self, tokens: np.ndarray, *, strict: bool = True) -> np.ndarray:
        """The token-resolution mask of ``tokens`` (strict by default: use for ground truth)."""
        return self.decode_report(tokens, strict=strict).mask

    def num_runs(self, mask: np.ndarray) -> int:
        """Runs R of ``mask`` after splitting (sequence length = ``tokens_per_run * R`` for run schemes)."""
        return len(self.encode(mask)) // self.tokens_per_run

    @abstractmethod
    def encode_sequence(self, mask: np.ndarray) -> tuple[np.ndarray, bool, int]:
        """``(sequence, truncated, num_runs)``: the model sequence of one mask, truncated by policy."""

    def encode_batch(self, masks: list[np.ndarray] | np.ndarray) -> EncodedBatch:
        """Sequences of ``masks`` stacked; without ``max_seq_len`` they are padded to the longest."""
        seqs, flags, runs = zip(*(self.encode_sequence(m) for m in masks), strict=True)
        tokens = np.full((len(seqs), max(s.size for s in seqs)), PAD, dtype=np.int64)
        for row, seq in zip(tokens, seqs, strict=True):
            row[: seq.size] = seq
        return EncodedBatch(
            tokens=tokens,
            lengths=(tokens != PAD).sum(axis=1).astype(np.int64),
            truncated=np.asarray(flags, dtype=bool),
            num_runs=np.asarray(runs, dtype=np.int64),
        )

    def decode_batch(self, tokens: np.ndarray, *, strict: bool = False) -> list[DecodeResult]:
        """One :meth:`decode_report` per row (a list of sequences may be ragged)."""
        rows = tokens if isinstance(tokens, list | tuple) else np.asarray(tokens)
        return [self.decode_report(row, strict=strict) for row in rows]

    def describe(self) -> str:
        """Human-readable summary: scheme, shapes, k, vocabulary layout."""
        return (
            f"{self.name} ({self.task}) label shape {self.shape} -> token shape {self.token_shape}, "
            f"{self.tokens_per_run} tokens/run, max_seq_len {self.max_seq_len}\n{self.vocab.describe()}"
        )
