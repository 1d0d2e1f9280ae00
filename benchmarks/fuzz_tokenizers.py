"""Fuzz every registered tokenizer's decoders with random token input of random types (SPEC §6).

    python benchmarks/fuzz_tokenizers.py [--per-tokenizer 10000] [--seed 0] [--only lac,mc]

Each sequence is one of the input kinds in ``KINDS``: int64/int32/uint8/uint64 arrays, float arrays
(integral, fractional, NaN/inf), object arrays and lists holding Python ints beyond int64, tuples, bool,
string, 2-D, 0-d, empty and ragged input, and encoded ground truth as int64, float and list. Token ids
are random lengths of a mix of uniform ids over the vocabulary and a little beyond it, ids drawn from the
field ranges (so many sequences get deep into the grammar), special tokens, and huge ids (+-2**40, the
int64 limits). Every sequence goes through

* lenient decoding (``decode_report``), which must never raise and must return a mask of the token shape
  with a consistent drop account;
* strict decoding, both ``decode`` (the fast paths of binary/mc/lac) and ``decode_report(strict=True)``
  (the parser), which must either decode or raise ``TokenizerError``, must agree with each other, must
  reject the input kinds that are never token ids (bool, object, strings, not 1-D, non-integral or
  non-finite floats, values beyond int64) and must accept encoded ground truth in every numeric form.

Anything else is a failure: it is counted per tokenizer and the first few are printed. Numpy
RuntimeWarnings (a NaN cast to int, an overflow) are raised as errors and count as failures too. The
exit status is 1 when there was any failure. ``tests/test_tokenizers_errors.py`` runs a small version.
"""

from __future__ import annotations

import argparse
import time
import traceback
import warnings
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from rleseg import create_tokenizer, list_tokenizers
from rleseg.tokenizers import EOS, PAD, Tokenizer, TokenizerError
from rleseg.tokenizers.registry import tokenizer_class

I64_MIN, I64_MAX = -(2**63), 2**63 - 1

#: input kinds and what strict decoding must do with them: "reject", "accept" or "any" (values decide)
KINDS: dict[str, str] = {
    "int64": "any",
    "int32": "any",
    "uint8": "any",
    "uint64": "any",  # "reject" when a value is beyond int64 (decided per sequence)
    "float_integral": "any",
    "float32": "any",
    "float_fraction": "reject",
    "float_nonfinite": "reject",
    "object_ints": "reject",
    "object_mixed": "reject",
    "list": "any",
    "list_huge": "reject",
    "tuple": "any",
    "bool": "reject",
    "two_d": "reject",
    "zero_d": "reject",
    "empty": "any",  # "reject" for a bool or object empty array (decided per sequence)
    "string": "reject",
    "ragged": "reject",
    "truth_int64": "accept",
    "truth_float": "accept",
    "truth_list": "accept",
    "truth_two_d": "reject",  # ground truth as a row or a (runs, k) table: not flattened
}


def fuzz_tokenizer(name: str) -> Tokenizer:
    """The registered tokenizer ``name`` at a small size (3 classes, 4x4, T = 2), where random runs often
    land inside the mask."""
    shape = (2, 4, 4) if tokenizer_class(name).ndim == 3 else (4, 4)
    return create_tokenizer(name, num_classes=3, shape=shape)


def random_ids(tok: Tokenizer, rng: np.random.Generator, length: int) -> np.ndarray:
    """int64 ids: uniform over [-3, vocab + 3), from the field ranges, specials, and huge values."""
    ranges = tok.vocab.ranges
    which = rng.integers(len(ranges), size=length)
    lo = np.array([r.lo for r in ranges])[which]
    size = np.array([max(r.count, 1) for r in ranges])[which]
    in_field = lo + (rng.random(length) * size).astype(np.int64)
    uniform = rng.integers(-3, tok.vocab_size + 3, size=length)
    special = rng.choice(np.array([PAD, EOS, tok.prompt, tok.prompt + 1]), size=length)
    huge = rng.choice(np.array([2**40, -(2**40), I64_MAX, I64_MIN, 2**31, -1]), size=length)
    pick = rng.choice(
        4, size=length, p=[0.5, 0.3, 0.1, 0.1] if rng.random() < 0.5 else [0.2, 0.75, 0.05, 0.0]
    )
    ids = np.choose(pick, [in_field, uniform, special, huge])
    if length and rng.random() < 0.5:
        ids[0] = tok.prompt
    return ids.astype(np.int64)


def ground_truth(tok: Tokenizer, rng: np.random.Generator) -> np.ndarray:
    """The content or model sequence of a random mask."""
    shape = tok.shape
    cls = rng.integers(0, tok.num_classes, size=shape) * (rng.random(shape) < rng.uniform(0, 1))
    if tok.name == "panoptic":
        cls = cls * 1000 + rng.integers(0, 3, size=shape) * (cls > 0)
    if rng.random() < 0.5:
        return tok.encode(cls)
    return tok.encode_sequence(cls)[0]


def random_input(tok: Tokenizer, rng: np.random.Generator, kind: str) -> tuple[object, str]:
    """A random input of ``kind`` and what strict decoding must do with it."""
    expect = KINDS[kind]
    length = int(rng.geometric(0.06)) - 1 if rng.random() < 0.9 else int(rng.integers(0, 400))
    ids = random_ids(tok, rng, length)
    if kind == "int64":
        return ids, expect
    if kind == "int32":
        return ids.astype(np.int32), expect
    if kind == "uint8":
        return ids.astype(np.uint8), expect
    if kind == "uint64":
        out = ids.view(np.uint64)
        return out, "reject" if (ids < 0).any() else expect
    if kind == "float_integral":
        return ids.astype(np.float64), expect
    if kind == "float32":
        return ids.astype(np.float32), expect
    if kind == "float_fraction":
        out = ids.astype(np.float64)
        if not out.size:
            out = np.array([rng.uniform(-5, 2000)])
        at = rng.integers(out.size, size=int(rng.integers(1, 4)))
        out[at] += rng.choice(np.array([0.5, 0.9, 0.1, -0.25]), size=at.size)
        return out, expect
    if kind == "float_nonfinite":
        out = ids.astype(np.float64)
        if not out.size:
            out = np.zeros(1)
        at = rng.integers(out.size, size=int(rng.integers(1, 4)))
        out[at] = rng.choice(np.array([np.nan, np.inf, -np.inf]), size=at.size)
        return out, expect
    if kind in ("object_ints", "object_mixed", "list_huge"):
        values: list = ids.tolist() or [int(tok.prompt)]
        at = rng.integers(len(values), size=int(rng.integers(1, 4)))
        for i in at.tolist():
            if kind == "object_mixed":
                values[i] = [2.5, float("nan"), Fraction(7, 2), np.int8(3), 1e300, True, "x", None][
                    int(rng.integers(8))
                ]
            else:
                values[i] = [2**63, 2**64 + 3, -(2**63) - 1, 2**70, -(2**90)][int(rng.integers(5))]
        if kind == "list_huge":
            return values, expect
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out, expect
    if kind == "list":
        return ids.tolist(), expect
    if kind == "tuple":
        return tuple(ids.tolist()), expect
    if kind == "bool":
        return (ids % 2).astype(bool), expect
    if kind == "two_d":
        rows = int(rng.integers(1, 4))
        return np.resize(
            ids if ids.size else np.array([tok.prompt]), (rows, max(ids.size // rows, 1))
        ), expect
    if kind == "zero_d":
        value = int(ids[0]) if ids.size else EOS
        return (np.array(value) if rng.random() < 0.5 else np.int64(value)), expect
    if kind == "empty":
        dtype = rng.choice(np.array(["int64", "int32", "float64", "uint8", "bool", "object"]))
        if rng.random() < 0.3:
            return [], expect
        return np.zeros(0, dtype=str(dtype)), "reject" if dtype in ("bool", "object") else expect
    if kind == "string":
        return (np.array([str(v) for v in ids.tolist()] or ["a"]) if rng.random() < 0.5 else "1 2 3"), expect
    if kind == "ragged":
        cut = int(rng.integers(0, ids.size + 1))
        return [ids[:cut].tolist(), ids[cut:].tolist() + [int(tok.prompt)]], expect
    truth = ground_truth(tok, rng)
    if kind == "truth_int64":
        return truth, expect
    if kind == "truth_float":
        return truth.astype(np.float64 if rng.random() < 0.5 else np.float32), expect
    if kind == "truth_list":
        return truth.tolist(), expect
    if kind == "truth_two_d":
        k = tok.tokens_per_run
        table = truth.size % k == 0 and truth.size and rng.random() < 0.5
        return (truth.reshape(-1, k) if table else truth[None, :]), expect
    raise ValueError(f"unknown kind {kind!r}")


@dataclass
class Stats:
    name: str
    sequences: int = 0
    lenient_crashes: int = 0
    strict_crashes: int = 0  # strict raised something other than TokenizerError
    strict_rejects: int = 0
    strict_decoded: int = 0
    wrong_outcome: int = 0  # rejected what must decode, accepted what must be rejected, or paths disagree
    lenient_tokens_dropped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    rejects_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.lenient_crashes + self.strict_crashes + self.wrong_outcome

    def note(self, message: str) -> None:
        if len(self.failures) < 5:
            self.failures.append(message)


def _show(obj: object) -> str:
    text = repr(obj)
    return text if len(text) < 200 else text[:200] + "..."


def check_one(tok: Tokenizer, obj: object, kind: str, expect: str, stats: Stats) -> None:
    stats.sequences += 1
    try:
        report = tok.decode_report(obj)
        assert report.mask.shape == tok.token_shape, f"mask shape {report.mask.shape}"
        assert 0 <= report.runs_dropped <= report.runs_total, (report.runs_dropped, report.runs_total)
        assert report.tokens_dropped >= 0 and 0.0 <= report.validity <= 1.0
        stats.lenient_tokens_dropped += report.tokens_dropped
    except Exception as e:
        stats.lenient_crashes += 1
        stats.note(f"lenient {kind} {_show(obj)}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")
    outcomes = []
    for path in ("decode", "decode_report"):
        try:
            mask = tok.decode(obj) if path == "decode" else tok.decode_report(obj, strict=True).mask
            outcomes.append(mask)
        except TokenizerError as e:
            outcomes.append(e)
        except Exception as e:
            stats.strict_crashes += 1
            stats.note(f"strict {path} {kind} {_show(obj)}: {type(e).__name__}: {e}")
            return
    fast, general = outcomes
    if isinstance(fast, TokenizerError) != isinstance(general, TokenizerError) or (
        not isinstance(fast, TokenizerError)
        and (fast.shape != general.shape or fast.dtype != general.dtype or not (fast == general).all())
    ):
        stats.wrong_outcome += 1
        stats.note(
            f"decode and decode_report(strict=True) disagree on {kind} {_show(obj)}: {fast!r} / {general!r}"
        )
        return
    if isinstance(general, TokenizerError):
        stats.strict_rejects += 1
        stats.rejects_by_kind[kind] = stats.rejects_by_kind.get(kind, 0) + 1
        if expect == "accept":
            stats.wrong_outcome += 1
            stats.note(f"strict rejected ground truth ({kind}) {_show(obj)}: {general}")
    else:
        stats.strict_decoded += 1
        if expect == "reject":
            stats.wrong_outcome += 1
            stats.note(f"strict accepted {kind} {_show(obj)}")
        elif kind in ("truth_float", "truth_list"):
            again = tok.decode(np.asarray(obj).astype(np.int64))
            if not (again == general).all():
                stats.wrong_outcome += 1
                stats.note(f"{kind} decodes differently from its int64 form: {_show(obj)}")


def fuzz(name: str, count: int, seed: int = 0) -> Stats:
    """``count`` random inputs (cycling through ``KINDS``) through the decoders of tokenizer ``name``."""
    tok = fuzz_tokenizer(name)
    rng = np.random.default_rng([seed, *name.encode()])
    kinds = list(KINDS)
    stats = Stats(name)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for i in range(count):
            kind = kinds[int(rng.integers(len(kinds)))] if i >= len(kinds) else kinds[i]
            obj, expect = random_input(tok, rng, kind)
            check_one(tok, obj, kind, expect, stats)
    stats.seconds = time.perf_counter() - t0
    return stats


def row(s: Stats) -> str:
    return (
        f"{s.name:<10} {s.sequences:>9} {s.lenient_crashes:>15} {s.strict_crashes:>14} "
        f"{s.wrong_outcome:>5} {s.strict_rejects:>14} {s.strict_decoded:>14} "
        f"{s.lenient_tokens_dropped:>15} {s.seconds:>7.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-tokenizer", type=int, default=10_000, help="sequences per tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only", default="", help="comma-separated tokenizer names (default: all registered)"
    )
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list_tokenizers()
    header = (
        f"{'tokenizer':<10} {'sequences':>9} {'lenient crashes':>15} {'strict crashes':>14} "
        f"{'wrong':>5} {'strict rejects':>14} {'strict decoded':>14} {'lenient dropped':>15} {'seconds':>7}"
    )
    print(header)
    total = Stats("total")
    failures = []
    for name in names:
        s = fuzz(name, args.per_tokenizer, args.seed)
        print(row(s), flush=True)
        for key in ("sequences", "lenient_crashes", "strict_crashes", "wrong_outcome", "strict_rejects"):
            setattr(total, key, getattr(total, key) + getattr(s, key))
        total.strict_decoded += s.strict_decoded
        total.lenient_tokens_dropped += s.lenient_tokens_dropped
        total.seconds += s.seconds
        failures += [f"[{name}] {f}" for f in s.failures]
    print(row(total))
    for f in failures[:20]:
        print("\nFAILURE", f)
    return 1 if total.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
