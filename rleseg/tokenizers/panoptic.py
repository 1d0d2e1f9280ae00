"""The panoptic / instance scheme (SPEC §5).

Masks are panoptic-id maps, ``id = class * 1000 + instance`` (class 0 = background, whatever its
instance). "Things" are the classes with instances; ``stuff_classes`` are amorphous regions whose
instance number is ignored.

Grammar (documented choice for stuff; ``M`` = max run, ``S`` = number of stuff classes)::

    sequence := thing_group* stuff_run*
    thing_group := (start length)+ class          one instance: its binary RLE, then its class token
    stuff_run := start lac                        lac = M·stuff_index + length (LAC over stuff classes)

Thing groups come first, ordered by panoptic id (class, then instance); stuff runs follow, sorted by
start. Starts increase within a group and within the stuff part (``monotonic=("start",)`` restarting at
each class token). ``length`` and ``lac`` are separate ranges, so the token after a start says whether
it opens an instance pair or a stuff run, and a class token always closes a group.

Decoding gives each group the next instance number of its class (the k-th group of class c becomes
``c*1000 + k``), so the round trip holds on the *canonical* map that :meth:`PanopticTokenizer.subsample`
returns: instances renumbered 1, 2, ... per class in id order, stuff at instance 0, and instances that
vanish with subsampling dropped (their count is ``last_instances_vanished``). A group cut short (a pair
broken by a wrong token, or a class token without pairs) is dropped on its own and never glued onto the
next group. ``decode_report(..., token_probs=p)`` scores each instance with the probability of its class
token.

>>> import numpy as np
>>> from rleseg.tokenizers import create_tokenizer
>>> offsets = {"start": 1000, "length": 200, "class": 100, "lac": 300}
>>> tok = create_tokenizer("panoptic", num_classes=3, shape=(2, 4), stuff_classes=(2,), offsets=offsets)
>>> pan = np.array([[1001, 1001, 0, 2000], [1002, 0, 2000, 2000]])
>>> tok.encode(pan).tolist()  # [start, length]* class per instance, then stuff (start, lac)
[1001, 202, 101, 1005, 201, 101, 1004, 301, 1007, 302]
>>> tok.decode(tok.encode(pan)).tolist()
[[1001, 1001, 0, 2000], [1002, 0, 2000, 2000]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rleseg.tokenizers.base import DecodeResult, Grammar, TokenizerError
from rleseg.tokenizers.grammar import Parsed, build_grammar
from rleseg.tokenizers.image import Field, RunTokenizer
from rleseg.tokenizers.registry import register_tokenizer
from rleseg.tokenizers.runs import Runs, check_labels, label_dtype, paint_runs

IDS_PER_CLASS = 1000


def split_panoptic(panoptic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(semantic, instance)`` maps of a panoptic-id map."""
    return panoptic // IDS_PER_CLASS, panoptic % IDS_PER_CLASS


@register_tokenizer("panoptic")
class PanopticTokenizer(RunTokenizer):
    """Instance-wise RLE with stuff as LAC runs (see the module docstring for the grammar).

    Args:
        stuff_classes: classes encoded as stuff runs; every other foreground class is a thing class.
        **kw: as :class:`~rleseg.tokenizers.image.RunTokenizer`.
    """

    task = "panoptic"
    sorted_runs = False
    tokens_per_run = 2

    def __init__(
        self,
        num_classes: int = 3,
        shape: tuple[int, ...] = (80, 80),
        stuff_classes: Sequence[int] = (),
        **kw,
    ) -> None:
        self.stuff_classes = tuple(sorted({int(c) for c in stuff_classes}))
        bad = [c for c in self.stuff_classes if not 1 <= c < num_classes]
        if bad:
            raise TokenizerError(f"stuff classes {bad} are not foreground classes 1..{num_classes - 1}")
        self.thing_classes = tuple(c for c in range(1, num_classes) if c not in self.stuff_classes)
        if not self.thing_classes:
            raise TokenizerError("the panoptic tokenizer needs at least one thing class (not all stuff)")
        # class id -> index among things / among stuff (-1 elsewhere)
        self._thing_index = np.full(num_classes, -1, dtype=np.int64)
        self._thing_index[list(self.thing_classes)] = np.arange(len(self.thing_classes))
        self._stuff_index = np.full(num_classes, -1, dtype=np.int64)
        self._stuff_index[list(self.stuff_classes)] = np.arange(len(self.stuff_classes))
        self.last_instances_vanished = 0
        super().__init__(num_classes=num_classes, shape=shape, **kw)

    @property
    def max_label(self) -> int:
        return (self.num_classes - 1) * IDS_PER_CLASS + IDS_PER_CLASS - 1

    def _fields(self) -> list[Field]:
        fields: list[Field] = [("class", len(self.thing_classes), 1), ("length", self.max_run, 1)]
        if self.stuff_classes:
            fields.append(("lac", self.max_run * len(self.stuff_classes), 1))
        return fields + [("start", self.flat_size, 0)]

    def _grammar(self) -> Grammar:
        edges: dict[int, list[tuple[str, int]]] = {
            0: [("start", 1)],  # between groups (accepting)
            1: [("length", 2)],  # after a start that may open a group or a stuff run
            2: [("start", 3), ("class", 0)],  # inside a group, after a pair (a class token closes it)
            3: [("length", 2)],  # after a start inside a group
        }
        accepting = [0]
        if self.stuff_classes:
            edges[1].append(("lac", 4))
            edges[4] = [("start", 5)]  # the stuff part (accepting): stuff runs only
            edges[5] = [("lac", 4)]
            accepting.append(4)
        return build_grammar(
            self.vocab, self.prompt, edges, accepting, monotonic=("start",), reset_on=("class",)
        )

    # ------------------------------------------------------------------ masks
    def check(self, mask: object) -> np.ndarray:
        return check_labels(
            mask, self.shape, self.num_classes, what="panoptic map", ids_per_class=IDS_PER_CLASS
        )

    def subsample(self, mask: np.ndarray) -> np.ndarray:
        """The canonical token-resolution panoptic map (see the module docstring); sets
        ``last_instances_vanished``."""
        full = self.check(mask)
        token_mask = self.geometry.subsample(full)
        canonical, things = self._canonical(token_mask)
        self.last_instances_vanished = self._canonical(full)[1] - things if self.subsample_factor > 1 else 0
        return canonical

    def _canonical(self, pan: np.ndarray) -> tuple[np.ndarray, int]:
        """Canonical renumbering of a panoptic map and its number of thing instances."""
        present = np.bincount(pan.ravel().astype(np.int64))
        ids = np.flatnonzero(present)
        cls = ids // IDS_PER_CLASS
        rank = np.arange(ids.size) - np.searchsorted(cls, cls, side="left") + 1
        thing = self._thing_index[cls] >= 0
        if (rank[thing] >= IDS_PER_CLASS).any():
            c = int(cls[thing][rank[thing] >= IDS_PER_CLASS][0])
            raise TokenizerError(f"class {c} has more than {IDS_PER_CLASS - 1} instances")
        new = np.where(thing, cls * IDS_PER_CLASS + rank, cls * IDS_PER_CLASS)
        lut = np.zeros(present.size, dtype=label_dtype(self.max_label))
        lut[ids] = new
        return lut[pan], int(np.count_nonzero(thing))

    # ------------------------------------------------------------------ tokens
    def _runs_to_tokens(self, runs: Runs) -> np.ndarray:
        cls = runs.values // IDS_PER_CLASS
        thing = self._thing_index[cls] >= 0
        things = runs.take(np.flatnonzero(thing))
        things = things.take(np.argsort(things.values, kind="stable"))  # group by id, starts ascending
        stuff = runs.take(np.flatnonzero(~thing))
        r = len(things)
        last = np.ones(r, dtype=bool)
        last[:-1] = things.values[1:] != things.values[:-1]
        group = np.cumsum(last) - last  # groups closed before each pair
        out = np.empty(2 * r + int(np.count_nonzero(last)) + 2 * len(stuff), dtype=np.int64)
        pos = 2 * np.arange(r) + group
        out[pos] = self.vocab["start"].to_tokens(things.starts)
        out[pos + 1] = self.vocab["length"].to_tokens(things.lengths)
        thing_index = self._thing_index[things.values[last] // IDS_PER_CLASS]
        out[pos[last] + 2] = self.vocab["class"].to_tokens(thing_index + 1)
        tail = out[out.size - 2 * len(stuff) :].reshape(-1, 2)
        tail[:, 0] = self.vocab["start"].to_tokens(stuff.starts)
        if len(stuff):
            stuff_index = self._stuff_index[stuff.values // IDS_PER_CLASS]
            tail[:, 1] = self.vocab["lac"].to_tokens(self.max_run * stuff_index + stuff.lengths)
        return out

    def _groups(self, parsed: Parsed) -> tuple[Runs, np.ndarray, np.ndarray, np.ndarray]:
        """``(runs, group of each run (-1: stuff), panoptic id per group, class-token index per group)``."""
        index = {name: i for i, name in enumerate(self.parser.field_names)}
        f, tokens = parsed.fields, parsed.tokens
        at_start = np.flatnonzero(f == index["start"])
        second = f[at_start + 1]
        pair = second == index["length"]
        at_class = np.flatnonzero(f == index["class"])
        cls = np.asarray(self.thing_classes, dtype=np.int64)[
            self.vocab["class"].to_values(tokens[at_class]) - 1
        ]
        order = np.argsort(cls, kind="stable")
        inst = np.empty(cls.size, dtype=np.int64)
        inst[order] = np.arange(cls.size) - np.searchsorted(cls[order], cls[order], side="left") + 1
        inst[inst >= IDS_PER_CLASS] = 0  # out of instance numbers: marked with 0, dropped by the caller
        group_ids = cls * IDS_PER_CLASS + inst
        group = np.where(pair, np.cumsum(f == index["class"])[at_start], -1)
        second_tokens = tokens[at_start + 1]
        lengths = np.empty(at_start.size, dtype=np.int64)
        values = np.empty(at_start.size, dtype=np.int64)
        lengths[pair] = self.vocab["length"].to_values(second_tokens[pair])
        values[pair] = group_ids[group[pair]]
        if not pair.all():
            lac = self.vocab["lac"].to_values(second_tokens[~pair])
            lengths[~pair] = (lac - 1) % self.max_run + 1
            values[~pair] = np.asarray(self.stuff_classes)[(lac - 1) // self.max_run] * IDS_PER_CLASS
        starts = self.vocab["start"].to_values(tokens[at_start])
        return Runs(starts, lengths, values), group, group_ids, at_class

    def decode_report(
        self, tokens: np.ndarray, *, strict: bool = False, token_probs: np.ndarray | None = None
    ) -> DecodeResult:
        """Decode to the panoptic-id map; ``extras`` lists the instances (``instance_ids``,
        ``instance_classes``, ``instance_scores``: the class token's probability, NaN without
        ``token_probs``) and ``runs_clipped``."""
        parsed = self.parser.parse(tokens, strict=strict)
        runs, group, group_ids, at_class = self._groups(parsed)
        # instance numbers run out at 999 per class: such groups are dropped
        full = group_ids % IDS_PER_CLASS == 0
        bad_groups = int(np.count_nonzero(full)) if group_ids.size else 0
        tokens_dropped = parsed.tokens_dropped
        if bad_groups:
            if strict:
                raise TokenizerError(f"more than {IDS_PER_CLASS - 1} instances of one class")
            bad_run = (group >= 0) & full[np.maximum(group, 0)]
            tokens_dropped += 2 * int(np.count_nonzero(bad_run)) + bad_groups
            runs = runs.take(np.flatnonzero(~bad_run))
            keep = ~full
            group_ids, at_class = group_ids[keep], at_class[keep]
        past = runs.starts + runs.lengths > self.flat_size
        if strict:
            self._check_strict(runs, past, 0)
        flat = paint_runs(self.flat_size, runs.starts, runs.lengths, runs.values, label_dtype(self.max_label))
        scores = np.full(group_ids.size, np.nan)
        if token_probs is not None:
            probs = np.asarray(token_probs, dtype=np.float64).ravel()
            where = parsed.positions[at_class]
            inside = where < probs.size
            scores[inside] = probs[where[inside]]
        return DecodeResult(
            mask=self._unflatten(flat),
            runs_total=parsed.records_total,
            runs_dropped=parsed.runs_dropped + bad_groups,
            tokens_dropped=tokens_dropped,
            ended_with_eos=parsed.ended_with_eos,
            extras={
                "instance_ids": group_ids,
                "instance_classes": group_ids // IDS_PER_CLASS,
                "instance_scores": scores,
                "runs_clipped": int(np.count_nonzero(past)),
                "tokens_after_end": parsed.tokens_after_end,
            },
        )
