"""Encode + decode speed of rleseg's tokenizers against pycocotools (the way a user would do multi-class
with it: one binary RLE per foreground class, then decode each and merge the classes).

    python benchmarks/bench_tokenizers.py [--repeat 15] [--masks 8] [--num-classes 3]

Masks are seeded synthetic blob masks (``rleseg.tokenizers.stats.synthetic_masks``) at sides 80, 320 and
640, plus a noisy case (5% salt and pepper). No subsampling, M = W. Times are the best of ``--repeat``
rounds over ``--masks`` masks, per mask ("rleseg": strict decoding as for ground truth, through the
compiled kernels where they are built; "numpy": the same without them; "lenient": the model-output path).
Ratio = pycocotools time / rleseg time (> 1: rleseg is faster).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np

from rleseg import create_tokenizer
from rleseg.tokenizers import runs as runs_module
from rleseg.tokenizers.stats import synthetic_masks


def coco_multiclass(mask: np.ndarray, num_classes: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    rles = [mask_utils.encode(np.asfortranarray((mask == c).astype(np.uint8))) for c in range(1, num_classes)]
    out = np.zeros(mask.shape, dtype=np.uint8)
    for c, rle in enumerate(rles, start=1):
        out[mask_utils.decode(rle).astype(bool)] = c
    return out


def coco_binary(mask: np.ndarray) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode(mask_utils.encode(np.asfortranarray(mask)))


def round_trip_without_kernels(tok) -> Callable[[np.ndarray], object]:
    """Strict round trip through the numpy paths (the kernels switched off for the call)."""

    def run(mask: np.ndarray) -> object:
        kernels, runs_module.kernels = runs_module.kernels, None
        try:
            return tok.decode(tok.encode(mask))
        finally:
            runs_module.kernels = kernels

    return run


def best_times(fns: dict[str, Callable[[np.ndarray], object]], masks: list[np.ndarray], repeat: int) -> dict:
    """Best over ``repeat`` rounds of the mean time per mask, in milliseconds. The functions take turns in
    every round, so a busy machine slows them alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for key, fn in fns.items():
            start = time.perf_counter()
            for m in masks:
                fn(m)
            best[key] = min(best[key], 1000 * (time.perf_counter() - start) / len(masks))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--masks", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=3, help="N, background included (SPEC §1)")
    args = parser.parse_args()
    n = args.num_classes
    built = "built" if runs_module.kernels is not None else "NOT built (numpy paths only)"
    print(f"numpy {np.__version__}, python {platform.python_version()}, {platform.machine()}; N = {n}")
    print(f"compiled kernels: {built}")
    header = f"{'case':<26}{'tokenizer':>10}{'runs':>8}{'rleseg ms':>11}{'numpy ms':>10}{'lenient ms':>12}"
    header += f"{'coco ms':>10}"
    header += f"{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for side in (80, 320, 640):
        cases = [("blobs", 0.0), ("noisy 5%", 0.05)] if side == 640 else [("blobs", 0.0)]
        for label, noise in cases:
            masks = list(synthetic_masks(args.masks, (side, side), n, seed=side, noise=noise))
            binaries = [(m > 0).astype(np.uint8) for m in masks]
            rows = [
                (f"{side}² {n}-class {label}", "mc", masks, lambda m: coco_multiclass(m, n)),
                (f"{side}² {n}-class {label}", "lac", masks, lambda m: coco_multiclass(m, n)),
                (f"{side}² binary {label}", "binary", binaries, coco_binary),
            ]
            for case, name, data, coco in rows:
                tok = create_tokenizer(name, num_classes=n if name != "binary" else 2, shape=(side, side))
                for m in data:  # the oracle: identical masks back
                    assert np.array_equal(tok.decode(tok.encode(m)), coco(m))
                fns = {
                    "ours": lambda m, t=tok: t.decode(t.encode(m)),
                    "numpy": round_trip_without_kernels(tok),
                    "lenient": lambda m, t=tok: t.decode_report(t.encode(m)).mask,
                    "coco": coco,
                }
                times = best_times(fns, data, args.repeat)
                ours, lenient, theirs = times["ours"], times["lenient"], times["coco"]
                runs = np.mean([tok.num_runs(m) for m in data])
                print(
                    f"{case:<26}{name:>10}{runs:>8.0f}{ours:>11.3f}{times['numpy']:>10.3f}{lenient:>12.3f}"
                    f"{theirs:>10.3f}"
                    f"{theirs / ours:>7.1f}×"
                )


if __name__ == "__main__":
    main()
