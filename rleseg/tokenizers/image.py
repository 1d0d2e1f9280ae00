"""Image tokenizers (SPEC §3 and §9): binary, mc, lac, their 2-D-start forms, dense, gap and row-wise RLE.

:class:`RunTokenizer` holds what every run scheme shares (validation, subsampling, run finding,
sequence assembly, truncation, grammar-driven lenient decoding); a scheme only says how one run maps to
tokens and back.

Worked example (SPEC §3, explicit offsets):

>>> import numpy as np
>>> from rleseg.tokenizers import create_tokenizer
>>> m = np.array([[0, 1, 1, 0], [2, 2, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2]], dtype=np.uint8)
>>> tok = create_tokenizer("lac", num_classes=3, shape=(4, 4), offsets={"start": 1000, "lac": 100})
>>> tok.encode(m).tolist()
[1002, 102, 1005, 106, 1007, 104, 1011, 102, 1015, 106]
>>> bool((tok.decode(tok.encode(m)) == m).all())
True
"""

from __future__ import annotations

import functools
from typing import ClassVar, Literal

import numpy as np

from rleseg.tokenizers import runs as _runs
from rleseg.tokenizers.base import (
    EOS,
    PAD,
    PROMPTS,
    DecodeResult,
    Grammar,
    Tokenizer,
    TokenizerError,
    TokenRange,
    VocabLayout,
    as_token_array,
)
from rleseg.tokenizers.grammar import GrammarParser, Parsed, build_grammar, cycle_grammar
from rleseg.tokenizers.registry import register_tokenizer
from rleseg.tokenizers.runs import (
    MaskGeometry,
    Order,
    Runs,
    SubsampleMethod,
    all_true,
    binary_runs,
    check_labels,
    find_runs,
    label_dtype,
    largest,
    paint_runs,
    paint_sorted_runs,
    run_edges,
    smallest,
    split_runs,
    upsample,
)

Truncation = Literal["tail", "longest"]
_INT64 = np.dtype(np.int64)
Field = tuple[str, int, int]  # (name, count, value_min) for VocabLayout.build


class RunTokenizer(Tokenizer):
    """Shared machinery of the run-length schemes.

    Args:
        num_classes: N, classes including background 0.
        shape: label mask shape (H, W) (video: (T, H, W)) before subsampling.
        subsample: factor s; must divide H and W.
        subsample_method: ``"nearest"`` or ``"any"`` (SPEC §2.1).
        max_run: M; runs longer than M are split. Default: one line of the token mask (W in row order).
        order: ``"row"`` or ``"col"`` flattening.
        max_seq_len: length of the model sequence (prompt + content + EOS + PAD); None = no padding.
        truncation: ``"tail"`` (cut the end at a record boundary) or ``"longest"`` (keep the longest runs,
            re-sorted by start) when the content does not fit.
        offsets: explicit offsets per field (``{"start": 1000, ...}``); None = compact layout.
    """

    ndim: ClassVar[int] = 2
    #: one-token records that are not runs (skip, end-of-row)
    markers: ClassVar[tuple[str, ...]] = ()
    #: strict decoding requires runs sorted by start and disjoint
    sorted_runs: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int = 3,
        shape: tuple[int, ...] = (80, 80),
        subsample: int = 1,
        subsample_method: SubsampleMethod = "nearest",
        max_run: int | None = None,
        order: Order = "row",
        max_seq_len: int | None = None,
        truncation: Truncation = "tail",
        offsets: dict[str, int] | None = None,
    ) -> None:
        if not isinstance(num_classes, int | np.integer) or num_classes < 2:
            raise TokenizerError(
                f"num_classes must be an integer >= 2 (background included); got {num_classes!r}"
            )
        self.num_classes = int(num_classes)
        self.geometry = MaskGeometry(tuple(shape), int(subsample), subsample_method, order)
        if len(self.geometry.shape) != self.ndim:
            raise TokenizerError(f"{self.name} takes a {self.ndim}-D shape; got {tuple(shape)}")
        self.shape, self.token_shape = self.geometry.shape, self.geometry.token_shape
        self.subsample_factor, self.subsample_method, self.order = int(subsample), subsample_method, order
        self.max_run = self.geometry.line if max_run is None else int(max_run)
        if self.max_run < 1:
            raise TokenizerError(f"max_run must be >= 1; got {max_run}")
        if max_seq_len is not None and max_seq_len < 2:
            raise TokenizerError(
                f"max_seq_len must leave room for the prompt and EOS (>= 2); got {max_seq_len}"
            )
        if truncation not in ("tail", "longest"):
            raise TokenizerError(f"truncation must be 'tail' or 'longest'; got {truncation!r}")
        self.max_seq_len, self.truncation = max_seq_len, truncation
        self.offsets = dict(offsets) if offsets else None
        self.prompt = PROMPTS[self.task]
        self.vocab = VocabLayout.build(self._fields(), self.offsets)
        self.grammar = self._grammar()
        self.parser = GrammarParser(self.grammar, self.markers)

    # ------------------------------------------------------------------ per-scheme hooks
    @property
    def flat_size(self) -> int:
        """Pixels of the flattened array the runs index."""
        return self.geometry.size

    @property
    def max_label(self) -> int:
        """The largest value a decoded token mask can hold (its dtype follows from it)."""
        return self.num_classes - 1

    @property
    def paint_max(self) -> int:
        """The largest value painted into the flat array (TAC labels exceed ``max_label``)."""
        return self.max_label

    def _fields(self) -> list[Field]:
        raise NotImplementedError

    def _grammar(self) -> Grammar:
        raise NotImplementedError

    def _runs_to_tokens(self, runs: Runs) -> np.ndarray:
        raise NotImplementedError

    def _runs_from_parsed(self, parsed: Parsed) -> tuple[Runs, np.ndarray, int]:
        """``(runs, in_range, clipped)`` from grammatical tokens: one run per record, ``in_range[i]`` False
        for a run with a field value outside the mask, ``clipped`` runs shortened by the scheme itself."""
        raise NotImplementedError

    def _find_runs(self, token_mask: np.ndarray) -> Runs:
        return find_runs(self._flatten(token_mask), self.max_run)

    def _flatten(self, token_mask: np.ndarray) -> np.ndarray:
        return self.geometry.flatten(token_mask)

    def _unflatten(self, flat: np.ndarray) -> np.ndarray:
        return self.geometry.unflatten(flat)

    # ------------------------------------------------------------------ masks
    def check(self, mask: object) -> np.ndarray:
        """Validate a full-resolution label mask (raises :class:`TokenizerError`)."""
        return check_labels(mask, self.shape, self.num_classes)

    def subsample(self, mask: np.ndarray) -> np.ndarray:
        return self.geometry.subsample(self.check(mask))

    def upsample(self, token_mask: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize of a token-resolution mask back to the label shape."""
        return upsample(token_mask, self.shape)

    def runs(self, mask: np.ndarray) -> Runs:
        """The runs (after splitting) that ``encode`` turns into tokens."""
        return self._find_runs(self.subsample(mask))

    def num_runs(self, mask: np.ndarray) -> int:
        return len(self.runs(mask))

    # ------------------------------------------------------------------ encoding
    def encode(self, mask: np.ndarray) -> np.ndarray:
        return self._runs_to_tokens(self.runs(mask))

    def encode_sequence(self, mask: np.ndarray) -> tuple[np.ndarray, bool, int]:
        runs = self.runs(mask)
        content = self._runs_to_tokens(runs)
        truncated = False
        if self.max_seq_len is not None and content.size > self.max_seq_len - 2:
            truncated = True
            cap = self.max_seq_len - 2
            if self.truncation == "longest":
                content = self._keep_longest(runs, cap)
            if content.size > cap:  # cut the tail at the last record boundary that fits
                ends = self.parser.record_ends(content)
                fits = ends[ends <= cap]
                content = content[: int(fits[-1]) if fits.size else 0]
        return self._assemble(content), truncated, len(runs)

    def _keep_longest(self, runs: Runs, cap: int) -> np.ndarray:
        """Tokens of the most runs, longest first, that fit in ``cap`` tokens (re-sorted by start)."""
        by_length = np.argsort(-runs.lengths, kind="stable")

        def tokens_of(r: int) -> np.ndarray:
            return self._runs_to_tokens(runs.take(np.sort(by_length[:r])))

        hi = min(len(runs), cap // self.tokens_per_run)
        if tokens_of(hi).size <= cap:
            return tokens_of(hi)
        lo, hi = 0, hi - 1  # variable-length schemes (skip / end-of-row tokens): binary search the count
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if tokens_of(mid).size <= cap:
                lo = mid
            else:
                hi = mid - 1
        return tokens_of(lo)

    def _assemble(self, content: np.ndarray) -> np.ndarray:
        length = content.size + 2
        seq = np.full(self.max_seq_len or length, PAD, dtype=np.int64)
        seq[0] = self.prompt
        seq[1 : 1 + content.size] = content
        seq[1 + content.size] = EOS
        return seq

    # ------------------------------------------------------------------ decoding
    def decode_report(self, tokens: np.ndarray, *, strict: bool = False) -> DecodeResult:
        parsed = self.parser.parse(tokens, strict=strict)
        runs, in_range, clipped = self._runs_from_parsed(parsed)
        bad = int(in_range.size - np.count_nonzero(in_range))
        if bad:
            if strict:
                i = int(np.flatnonzero(~in_range)[0])
                raise TokenizerError(
                    f"run {i} lies outside the {self.token_shape} mask "
                    f"(start {int(runs.starts[i])}, length {int(runs.lengths[i])})"
                )
            runs = runs.take(in_range)
        past = runs.starts + runs.lengths > self.flat_size
        clipped += int(np.count_nonzero(past))
        if strict:
            self._check_strict(runs, past, clipped)
        flat = paint_runs(self.flat_size, runs.starts, runs.lengths, runs.values, label_dtype(self.paint_max))
        return DecodeResult(
            mask=self._unflatten(flat),
            runs_total=parsed.records_total,
            runs_dropped=parsed.runs_dropped + bad,
            tokens_dropped=parsed.tokens_dropped + bad * self.tokens_per_run,
            ended_with_eos=parsed.ended_with_eos,
            extras={"runs_clipped": clipped, "tokens_after_end": parsed.tokens_after_end},
        )

    def _check_strict(self, runs: Runs, past: np.ndarray, clipped: int) -> None:
        if past.any():
            i = int(np.flatnonzero(past)[0])
            raise TokenizerError(
                f"run {i} (start {int(runs.starts[i])}, length {int(runs.lengths[i])}) runs past the end "
                f"of the {self.flat_size}-pixel mask"
            )
        if clipped:
            raise TokenizerError(f"{clipped} run(s) cross a line end")
        if self.sorted_runs and len(runs) > 1:
            overlap = runs.starts[1:] < runs.starts[:-1] + runs.lengths[:-1]
            if overlap.any():
                i = int(np.flatnonzero(overlap)[0]) + 1
                raise TokenizerError(
                    f"run {i} (start {int(runs.starts[i])}) overlaps or precedes the run before it "
                    f"(start {int(runs.starts[i - 1])}, length {int(runs.lengths[i - 1])})"
                )


class FlatRunTokenizer(RunTokenizer):
    """A fixed number of tokens per run: a start part (flat start, or row and col) then a payload.

    ``payload`` is ``"binary"`` (length), ``"mc"`` (length, class) or ``"lac"`` (one token
    ``M·(class−1) + length``). 2-D starts (``two_d``) replace the flat start by row and col tokens, from
    two ranges of H and W or, with ``shared_coords``, one range of max(H, W) (then on a non-square mask a
    coordinate token can name a row or column outside it: such a run is dropped on decoding).
    """

    payload: ClassVar[Literal["binary", "mc", "lac"]] = "mc"
    two_d: ClassVar[bool] = False
    shared_coords: bool = False

    @property
    def num_values(self) -> int:
        """Foreground labels of the token mask (N − 1; TAC: N^T − 1)."""
        return self.num_classes - 1

    @functools.cached_property
    def _start_names(self) -> tuple[str, ...]:
        if not self.two_d:
            return ("start",)
        return ("coord", "coord") if self.shared_coords else ("row", "col")

    @functools.cached_property
    def run_fields(self) -> tuple[str, ...]:
        payload = {"binary": ("length",), "mc": ("length", "class"), "lac": ("lac",)}[self.payload]
        return self._start_names + payload

    @functools.cached_property
    def tokens_per_run(self) -> int:  # type: ignore[override]
        return len(self.run_fields)

    @functools.cached_property
    def _run_ranges(self) -> list[TokenRange]:
        return [self.vocab[name] for name in self.run_fields]

    def _fields(self) -> list[Field]:
        m = self.max_run
        fields: list[Field] = {
            "binary": [("length", m, 1)],
            "mc": [("class", self.num_values, 1), ("length", m, 1)],
            "lac": [("lac", m * self.num_values, 1)],
        }[self.payload]
        h, w = self.token_shape[-2:]
        if not self.two_d:
            return fields + [("start", self.flat_size, 0)]
        if self.shared_coords:
            return fields + [("coord", max(h, w), 0)]
        return fields + [("row", h, 0), ("col", w, 0)]

    def _grammar(self) -> Grammar:
        if not self.two_d:
            order = {"monotonic": ("start",)}
        elif self.shared_coords:
            order = {}
        else:
            order = {"nondecreasing": ("row",) if self.order == "row" else ("col",)}
        return cycle_grammar(self.vocab, self.prompt, self.run_fields, **order)

    def _runs_to_tokens(self, runs: Runs) -> np.ndarray:
        cols: list[np.ndarray] = [runs.starts] if not self.two_d else list(self.geometry.to_rc(runs.starts))
        if self.payload == "lac":
            cols.append(self.max_run * (runs.values - 1) + runs.lengths)
        else:
            cols.append(runs.lengths)
            if self.payload == "mc":
                cols.append(runs.values)
        out = np.empty((len(runs), len(cols)), dtype=np.int64)
        for j, (token_range, values) in enumerate(zip(self._run_ranges, cols, strict=True)):
            token_range.to_tokens(values, out=out[:, j])
        return out.ravel()

    def _runs_from_parsed(self, parsed: Parsed) -> tuple[Runs, np.ndarray, int]:
        block = parsed.tokens.reshape(-1, self.tokens_per_run)
        cols = [token_range.to_values(block[:, j]) for j, token_range in enumerate(self._run_ranges)]
        in_range = np.ones(block.shape[0], dtype=bool)
        if self.two_d:
            row, col = cols[0], cols[1]
            h, w = self.token_shape[-2:]
            in_range = (row < h) & (col < w)
            starts = self.geometry.from_rc(row, col)
        else:
            starts = cols[0]
        last = cols[len(self._start_names) :]
        if self.payload == "binary":
            lengths, values = last[0], np.ones_like(last[0])
        elif self.payload == "mc":
            lengths, values = last
        else:
            lengths = (last[0] - 1) % self.max_run + 1
            values = (last[0] - 1) // self.max_run + 1
        return Runs(starts, lengths, values), in_range, 0

    # ------------------------------------------------------------------ fast paths (1-D starts)
    # A ground-truth mask in, its tokens out, and strict decoding of content tokens back, are the hot
    # paths of data loading and of the metric ceiling. For the plain 1-D-start schemes (binary, mc, lac;
    # ``_FAST`` below) they skip the grammar parser: a few whole-array numpy operations each. Any input
    # they do not fully vouch for goes the general way, which also writes the error message.

    def encode(self, mask: np.ndarray) -> np.ndarray:
        tokens = self._kernel_encode(mask)
        if tokens is not None:
            return tokens
        flat = self._fast_flat(mask)
        if flat is None:
            return super().encode(mask)
        return self._encode_flat(flat)

    def encode_sequence(self, mask: np.ndarray) -> tuple[np.ndarray, bool, int]:
        tokens = self._kernel_encode(mask)
        if tokens is None or (self.max_seq_len is not None and tokens.size > self.max_seq_len - 2):
            return super().encode_sequence(mask)  # truncation needs the runs
        return self._assemble(tokens), False, tokens.size // self.tokens_per_run

    _KIND: ClassVar[dict[str, int]] = {"binary": 0, "mc": 1, "lac": 2}

    def _kernel_encode(self, mask: object) -> np.ndarray | None:
        """Tokens from the compiled kernel (one pass over the token mask, read through a strided view);
        None without the kernels, for the subclasses outside ``_FAST`` and for any mask it does not vouch
        for (the numpy paths then encode it or say what is wrong)."""
        kernels = _runs.kernels
        if (
            kernels is None
            or type(self) not in _FAST
            or type(mask) is not np.ndarray
            or mask.shape != self.shape
        ):
            return None
        if self.geometry.factor > 1:  # the kernel reads only the token mask: check every label here
            kind = mask.dtype.kind
            if kind not in "biu" or (
                kind != "b" and (largest(mask) >= self.num_classes or (kind == "i" and smallest(mask) < 0))
            ):
                return None
        view = self.geometry.subsample(mask)
        if self.order == "col":
            view = view.T
        buf = kernels.encode(
            view, self._KIND[self.payload], self.num_classes, self.max_run, *self._token_offsets
        )
        return None if buf is None else np.frombuffer(buf, dtype=_INT64)

    @functools.cached_property
    def _token_offsets(self) -> tuple[int, int, int]:
        """``token - value`` of each field of a run (0 for a field the scheme lacks)."""
        fields = self._kernel_fields  # (first token, count, first value) per field
        return tuple(fields[i] - fields[i + 2] for i in (0, 3, 6))  # type: ignore[return-value]

    def _kernel_decode(self, tokens: object) -> np.ndarray | None:
        """Strict decoding by the compiled kernel into a uint8 mask; None where it does not apply or the
        tokens are not sorted, disjoint, in-range runs."""
        kernels = _runs.kernels
        if (
            kernels is None
            or type(tokens) is not np.ndarray
            or tokens.dtype != _INT64
            or tokens.ndim != 1  # the kernel would read any C-contiguous buffer as one flat sequence
            or self.paint_max > 255
        ):
            return None
        out = np.empty(self.token_shape, dtype=np.uint8)
        height = self.token_shape[-2] if self.order == "col" else 0
        ok = kernels.decode(tokens, out, self._KIND[self.payload], self.max_run, height, *self._kernel_fields)
        return out if ok else None

    @functools.cached_property
    def _kernel_fields(self) -> tuple[int, ...]:
        """(first token, number of values, first value) of each field of a run, padded to three fields."""
        fields = [(r.lo, r.count, r.value_min) for r in self._run_ranges]
        fields += [(0, 0, 0)] * (3 - len(fields))
        return tuple(int(v) for field in fields for v in field)

    def _encode_flat(self, flat: np.ndarray) -> np.ndarray:
        return self._runs_to_tokens(self._runs_of_flat(flat))

    def _runs_of_flat(self, flat: np.ndarray) -> Runs:
        return find_runs(flat, self.max_run)

    def runs(self, mask: np.ndarray) -> Runs:
        flat = self._fast_flat(mask)
        return super().runs(mask) if flat is None else self._runs_of_flat(flat)

    def _fast_flat(self, mask: object) -> np.ndarray | None:
        """The flattened token mask of an integer or bool mask of the right shape whose labels are all
        valid; None for anything else (the general path validates it and says what is wrong) and for the
        subclasses outside ``_FAST``."""
        if type(self) not in _FAST or type(mask) is not np.ndarray or mask.shape != self.shape:
            return None
        kind = mask.dtype.kind
        if kind == "b":  # nothing to check
            hi, mask = 1, mask.view(np.uint8)
        elif kind in "iu":
            hi = largest(mask)
            if hi >= self.num_classes or (kind == "i" and smallest(mask) < 0):
                return None
        else:
            return None
        token_mask = self.geometry.subsample(mask)
        if self.payload == "binary" and hi > 1:
            token_mask = (token_mask != 0).view(np.uint8)
        return self._flatten(token_mask)

    def decode(self, tokens: np.ndarray, *, strict: bool = True) -> np.ndarray:
        if strict and type(self) in _FAST:
            tokens = as_token_array(tokens, strict=True)  # the fast paths take the checked 1-D int64 array
            mask = self._kernel_decode(tokens)
            if mask is None:
                mask = self._decode_strict_fast(tokens)
            if mask is not None:
                return mask
        return super().decode(tokens, strict=strict)

    @functools.cached_property
    def _field_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per field of a run: the first token of its range, the value that token stands for, and the
        number of values."""
        ranges = self._run_ranges
        return (
            np.array([r.lo for r in ranges], dtype=np.int64),
            np.array([r.value_min for r in ranges], dtype=np.int64),
            np.array([r.count for r in ranges], dtype=np.uint64),
        )

    def _decode_strict_fast(self, tokens: object) -> np.ndarray | None:
        """Strict decoding of content tokens (no prompt, EOS or padding) that form sorted, disjoint runs
        inside the mask; None when that is not so (the general path then decodes or raises)."""
        k = self.tokens_per_run
        if type(tokens) is not np.ndarray or tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            return None
        if tokens.size % k:
            return None
        if tokens.size == 0:
            return self._unflatten(np.zeros(self.flat_size, dtype=label_dtype(self.paint_max)))
        lo, value_min, count = self._field_bounds
        index = tokens.reshape(-1, k) - lo  # position inside each field's range
        # negatives wrap to huge unsigned numbers: one test for both bounds
        if not all_true(index.view(np.uint64) < count):
            return None
        return self._paint_fast(index + value_min)  # field values (start >= 0, length >= 1, class >= 1)

    def _paint_fast(self, vals: np.ndarray) -> np.ndarray | None:
        starts = vals[:, 0]
        if self.payload == "lac":
            values, lengths = np.divmod(vals[:, 1] - 1, self.max_run)
            values += 1
            lengths += 1
        else:
            lengths, values = vals[:, 1], (vals[:, 2] if self.payload == "mc" else 1)
        flat = paint_sorted_runs(self.flat_size, starts, lengths, values, label_dtype(self.paint_max))
        return None if flat is None else self._unflatten(flat)


@register_tokenizer("binary")
class BinaryRLETokenizer(FlatRunTokenizer):
    """Binary RLE (SPEC §3, k = 2): ``start, length``. All foreground classes count as one; the token
    mask (``subsample``) and the decoded mask are 0/1."""

    payload = "binary"

    def __init__(self, num_classes: int = 2, shape: tuple[int, ...] = (80, 80), **kw) -> None:
        super().__init__(num_classes=num_classes, shape=shape, **kw)

    @property
    def max_label(self) -> int:
        return 1

    def subsample(self, mask: np.ndarray) -> np.ndarray:
        token_mask = super().subsample(mask)
        return (token_mask != 0).view(np.uint8)

    def _runs_of_flat(self, flat: np.ndarray) -> Runs:
        starts, lengths = binary_runs(flat)
        return split_runs(Runs(starts, lengths, np.ones_like(starts)), self.max_run)

    # Binary masks are the case where pycocotools is the yardstick: two C calls per mask. The paths below
    # use interleaved (start, length, start, length, ...) arrays and per-position patterns throughout, so
    # a mask takes about ten numpy operations each way. On small masks (80²) the fixed cost of each numpy
    # call (1-3 µs) is most of the time: hence argmin/argmax (``smallest``, ``largest``, ``all_true``) in
    # place of ufunc reductions, and no padded or intermediate copies.

    def _encode_flat(self, flat: np.ndarray) -> np.ndarray:
        out = run_edges(flat)  # start, end, start, end, ...
        out[1::2] -= out[0::2]  # start, length, ...
        if out.size and largest(out[1::2]) > self.max_run:
            return self._runs_to_tokens(self._runs_of_flat(flat))
        out += self._patterns(out.size)[0][: out.size]
        return out

    def _decode_strict_fast(self, tokens: object) -> np.ndarray | None:
        if type(tokens) is not np.ndarray or tokens.dtype != _INT64 or tokens.ndim != 1:
            return super()._decode_strict_fast(tokens)
        n = tokens.size
        if n % 2 or n == 0:
            return super()._decode_strict_fast(tokens)
        offset, lo, count = self._patterns(n)
        # every token in its field's range (negatives wrap to huge unsigned numbers): nothing below overflows
        if not all_true((tokens - lo[:n]).view(np.uint64) < count[:n]):
            return None
        bounds = np.empty(n + 2, dtype=np.int64)  # 0, start, end, start, end, ..., size
        bounds[0], bounds[-1] = 0, self.flat_size
        vals = np.subtract(tokens, offset[:n], out=bounds[1:-1])  # start, length, start, length, ...
        vals[1::2] += vals[0::2]  # start, end, ...
        seg = bounds[1:] - bounds[:-1]  # gap, length, gap, length, ..., gap
        try:  # repeat rejects a negative gap (runs unsorted, overlapping or past the end), and a fill
            flat = self._zero_one[: n + 1].repeat(seg)  # too short for more runs than the mask has pixels
        except ValueError:
            return None  # the general path says what is wrong
        return self._unflatten(flat)

    def _patterns(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-position constants of sequences of up to ``n`` tokens (slice them to the length): the token
        of value 0 (``token = value + offset``), the first token of each field's range and the range
        sizes. Grown on demand."""
        cache = self._pattern_cache
        if cache is None or cache[0].size < n:
            pairs = max(n // 2, 2 * (cache[0].size // 2 if cache is not None else 64))
            start, length = self._run_ranges
            cache = (
                np.tile(np.array([start.lo - start.value_min, length.lo - length.value_min]), pairs),
                np.tile(np.array([start.lo, length.lo], dtype=np.int64), pairs),
                np.tile(np.array([start.count, length.count], dtype=np.uint64), pairs),
            )
            self._pattern_cache = cache
        return cache

    _pattern_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @functools.cached_property
    def _zero_one(self) -> np.ndarray:
        """``[0, 1, 0, 1, ..., 0]`` long enough for the most runs a mask can have (views of it are the
        fill of every binary decode)."""
        out = np.zeros(2 * self.flat_size + 1, dtype=np.uint8)
        out[1::2] = 1
        return out


@register_tokenizer("mc")
class MultiClassRLETokenizer(FlatRunTokenizer):
    """Multi-class RLE (SPEC §3, k = 3): ``start, length, class``."""

    payload = "mc"


@register_tokenizer("lac")
class LengthsAsClassTokenizer(FlatRunTokenizer):
    """Lengths-as-class (SPEC §3, k = 2): ``start, lac`` with ``lac = M·(class−1) + length``."""

    payload = "lac"


#: the exact classes whose encode/strict decode take the fast paths of FlatRunTokenizer (subclasses such
#: as the 2-D-start, video and TAC schemes change the geometry or the fields, and keep the general path)
_FAST = frozenset({BinaryRLETokenizer, MultiClassRLETokenizer, LengthsAsClassTokenizer})


class _TwoDStartMixin:
    two_d = True

    def __init__(self, *args, shared_coords: bool = False, **kw) -> None:
        self.shared_coords = bool(shared_coords)
        super().__init__(*args, **kw)  # type: ignore[call-arg]


@register_tokenizer("mc2d")
class MultiClass2DTokenizer(_TwoDStartMixin, MultiClassRLETokenizer):
    """mc with 2-D starts (k = 4): ``row, col, length, class``; ``shared_coords=True`` puts row and col
    in one coordinate range."""


@register_tokenizer("lac2d")
class LengthsAsClass2DTokenizer(_TwoDStartMixin, LengthsAsClassTokenizer):
    """LAC with 2-D starts (k = 3): ``row, col, lac``."""


@register_tokenizer("binary2d")
class Binary2DTokenizer(_TwoDStartMixin, BinaryRLETokenizer):
    """Binary RLE with 2-D starts (k = 3): ``row, col, length``."""


@register_tokenizer("dense")
class DenseTokenizer(RunTokenizer):
    """The per-pixel baseline: one class token (background included) per token-mask pixel, in flattening
    order; the content length is fixed at H·W (``grammar.max_len``). A short sequence leaves the rest
    background. Each pixel counts as one "run"; ``truncation="longest"`` therefore equals ``"tail"``."""

    tokens_per_run = 1

    def _fields(self) -> list[Field]:
        return [("class", self.num_classes, 0)]

    def _grammar(self) -> Grammar:
        return cycle_grammar(self.vocab, self.prompt, ["class"], max_len=self.flat_size)

    def _find_runs(self, token_mask: np.ndarray) -> Runs:
        flat = self._flatten(token_mask)
        return Runs(
            np.arange(flat.size, dtype=np.int64), np.ones(flat.size, dtype=np.int64), flat.astype(np.int64)
        )

    def _runs_to_tokens(self, runs: Runs) -> np.ndarray:
        return self.vocab["class"].to_tokens(runs.values)

    def _runs_from_parsed(self, parsed: Parsed) -> tuple[Runs, np.ndarray, int]:
        n = parsed.tokens.size
        values = self.vocab["class"].to_values(parsed.tokens)
        ones = np.ones(n, dtype=np.int64)
        return Runs(np.arange(n, dtype=np.int64), ones, values), ones.astype(bool), 0


class _PayloadMixin:
    """Payload of the start-free schemes: ``length`` (binary), ``length, class`` or ``lac``."""

    num_classes: int
    max_run: int
    vocab: VocabLayout

    @property
    def payload_fields(self) -> tuple[str, ...]:
        if self.lac:  # type: ignore[attr-defined]
            return ("lac",)
        return ("length",) if self.num_classes == 2 else ("length", "class")

    def _payload_vocab(self) -> list[Field]:
        m, c = self.max_run, self.num_classes - 1
        if self.lac:  # type: ignore[attr-defined]
            return [("lac", m * c, 1)]
        return [("length", m, 1)] if c == 1 else [("class", c, 1), ("length", m, 1)]

    def _payload_edges(self, first: int, home: int) -> dict[int, list[tuple[str, int]]]:
        """States ``first`` (and ``first + 1``) reading the payload and returning to ``home``."""
        names = self.payload_fields
        if len(names) == 1:
            return {first: [(names[0], home)]}
        return {first: [(names[0], first + 1)], first + 1: [(names[1], home)]}

    def _payload_tokens(self, runs: Runs) -> list[np.ndarray]:
        if self.lac:  # type: ignore[attr-defined]
            return [self.vocab["lac"].to_tokens(self.max_run * (runs.values - 1) + runs.lengths)]
        out = [self.vocab["length"].to_tokens(runs.lengths)]
        if self.num_classes > 2:
            out.append(self.vocab["class"].to_tokens(runs.values))
        return out

    def _payload_values(self, parsed: Parsed, parser: GrammarParser) -> tuple[np.ndarray, np.ndarray]:
        """``(lengths, classes)`` of the runs of grammatical tokens, in order."""
        index = {name: i for i, name in enumerate(parser.field_names)}
        if self.lac:  # type: ignore[attr-defined]
            lac = self.vocab["lac"].to_values(parsed.tokens[parsed.fields == index["lac"]])
            return (lac - 1) % self.max_run + 1, (lac - 1) // self.max_run + 1
        lengths = self.vocab["length"].to_values(parsed.tokens[parsed.fields == index["length"]])
        if self.num_classes == 2:
            return lengths, np.ones_like(lengths)
        return lengths, self.vocab["class"].to_values(parsed.tokens[parsed.fields == index["class"]])


@register_tokenizer("gap")
class GapTokenizer(_PayloadMixin, RunTokenizer):
    """Start-free gap encoding (SPEC §9): the vocabulary does not grow with H·W.

    Grammar (``G`` = ``gap_range``, default M)::

        sequence := run*
        run      := SKIP* gap payload
        payload  := length [class]        (class only when N > 2)
                  | lac                   (lac=True: M·(class−1) + length)

    A run starts ``gap`` pixels after the end of the previous run (the first after pixel 0), plus ``G``
    for every SKIP before it: a gap ``g`` is written as ``g // G`` SKIP tokens and the gap token ``g % G``.
    Adjacent runs (pieces of a split run, or touching classes) have gap 0. Decoding accumulates the
    positions, so a start can never go back; a run that lands past the end of the mask is clipped away
    (counted in ``extras["runs_clipped"]``), not dropped, because every grammatical sequence is valid.
    """

    markers = ("skip",)

    def __init__(self, *args, gap_range: int | None = None, lac: bool = False, **kw) -> None:
        self.lac = bool(lac)
        self._gap_range = gap_range
        super().__init__(*args, **kw)

    @property
    def gap_range(self) -> int:
        return self.max_run if self._gap_range is None else int(self._gap_range)

    @property
    def tokens_per_run(self) -> int:  # type: ignore[override]
        return 1 + len(self.payload_fields)

    def _fields(self) -> list[Field]:
        if self.gap_range < 1:
            raise TokenizerError(f"gap_range must be >= 1; got {self.gap_range}")
        return self._payload_vocab() + [("gap", self.gap_range, 0), ("skip", 1, 0)]

    def _grammar(self) -> Grammar:
        edges = {0: [("skip", 0), ("gap", 1)], **self._payload_edges(1, 0)}
        return build_grammar(self.vocab, self.prompt, edges)

    def _runs_to_tokens(self, runs: Runs) -> np.ndarray:
        prev_end = np.zeros(len(runs), dtype=np.int64)
        prev_end[1:] = runs.starts[:-1] + runs.lengths[:-1]
        gaps = runs.starts - prev_end
        skips = gaps // self.gap_range
        k = self.tokens_per_run
        count = skips + k
        first = np.cumsum(count) - count + skips
        out = np.full(int(count.sum()), self.vocab["skip"].lo, dtype=np.int64)
        out[first] = self.vocab["gap"].to_tokens(gaps % self.gap_range)
        for j, tokens in enumerate(self._payload_tokens(runs), start=1):
            out[first + j] = tokens
        return out

    def _runs_from_parsed(self, parsed: Parsed) -> tuple[Runs, np.ndarray, int]:
        index = {name: i for i, name in enumerate(self.parser.field_names)}
        skips_so_far = np.cumsum(parsed.fields == index["skip"])
        at_gap = np.flatnonzero(parsed.fields == index["gap"])
        skips = np.diff(skips_so_far[at_gap], prepend=0)
        gaps = skips * self.gap_range + self.vocab["gap"].to_values(parsed.tokens[at_gap])
        lengths, values = self._payload_values(parsed, self.parser)
        starts = np.cumsum(gaps + lengths) - lengths
        return Runs(starts, lengths, values), np.ones(starts.size, dtype=bool), 0


@register_tokenizer("rowwise")
class RowWiseTokenizer(_PayloadMixin, RunTokenizer):
    """Row-wise RLE (SPEC §9): runs never cross a row end, and every row ends with one EOR token.

    Grammar (``col`` is the start within the row; column order: lines are columns)::

        sequence := row*
        row      := run* EOR
        run      := col payload          (payload as in ``gap``; cols increase within a row)

    The row of a run is the number of EOR tokens before it. A decoded run longer than the rest of its row
    is clipped at the row end, and runs after the last row are clipped away (``extras["runs_clipped"]``).
    """

    markers = ("eor",)

    def __init__(self, *args, lac: bool = False, **kw) -> None:
        self.lac = bool(lac)
        super().__init__(*args, **kw)
        if self.max_run > self.geometry.line:
            raise TokenizerError(
                f"rowwise max_run {self.max_run} exceeds the row length {self.geometry.line}"
            )

    @property
    def tokens_per_run(self) -> int:  # type: ignore[override]
        return 1 + len(self.payload_fields)

    def _fields(self) -> list[Field]:
        return self._payload_vocab() + [("col", self.geometry.line, 0), ("eor", 1, 0)]

    def _grammar(self) -> Grammar:
        edges = {0: [("col", 1), ("eor", 0)], **self._payload_edges(1, 0)}
        return build_grammar(self.vocab, self.prompt, edges, monotonic=("col",), reset_on=("eor",))

    def _find_runs(self, token_mask: np.ndarray) -> Runs:
        return find_runs(self._flatten(token_mask), self.max_run, line=self.geometry.line)

    def _runs_to_tokens(self, runs: Runs) -> np.ndarray:
        line, k = self.geometry.line, self.tokens_per_run
        lines = self.flat_size // line
        row = runs.starts // line
        out = np.empty(len(runs) * k + lines, dtype=np.int64)
        first = np.arange(len(runs)) * k + row
        out[first] = self.vocab["col"].to_tokens(runs.starts % line)
        for j, tokens in enumerate(self._payload_tokens(runs), start=1):
            out[first + j] = tokens
        runs_upto = np.searchsorted(row, np.arange(lines), side="right")
        out[runs_upto * k + np.arange(lines)] = self.vocab["eor"].lo
        return out

    def _runs_from_parsed(self, parsed: Parsed) -> tuple[Runs, np.ndarray, int]:
        index = {name: i for i, name in enumerate(self.parser.field_names)}
        rows_so_far = np.cumsum(parsed.fields == index["eor"])
        at_col = np.flatnonzero(parsed.fields == index["col"])
        col = self.vocab["col"].to_values(parsed.tokens[at_col])
        lengths, values = self._payload_values(parsed, self.parser)
        line = self.geometry.line
        over = col + lengths > line
        lengths = np.where(over, line - col, lengths)
        starts = rows_so_far[at_col] * line + col
        return Runs(starts, lengths, values), np.ones(starts.size, dtype=bool), int(np.count_nonzero(over))
