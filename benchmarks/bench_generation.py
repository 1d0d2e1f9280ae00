"""Speed of KV-cached generation against the uncached reference path (SPEC §7), greedy, on this machine.

    python benchmarks/bench_generation.py [--lengths 256 1024] [--batch 2] [--d-model 256] [--layers 6]

A Pix2Seq of the reference's decoder shape (d 256, 8 heads, MLP 1024, 6 layers; ``--d-model``/``--layers``
to change) on a 128×128 input (64 visual tokens at stride 16) generates exactly L tokens (EOS is masked
off, so both paths run every step). The cached path projects cross-attention keys/values once per image
and writes each step's self-attention key/value into a preallocated buffer (its few-row products by
``rleseg.models.layers.step_linear``, weight-major on the CPU); the uncached path re-runs the
decoder over the whole prefix at every step. Both produce the same tokens (checked here, and token for
token in ``tests/test_generation.py``). Times are the best of ``--repeat`` runs (the uncached path: one
run per length unless ``--repeat-uncached`` says otherwise); ratio = uncached / cached (> 1: the cache wins).
Targets from the issue: ≥ 5× at 256 tokens, ≥ 15× at 1024.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from rleseg.models import Pix2Seq
from rleseg.tokenizers import EOS

T = TypeVar("T")


def best_seconds(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    """The best wall time of ``repeat`` calls, and the last call's result."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=8000, help="the reference's typical vocabulary size")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--repeat-uncached", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = Pix2Seq(
        args.vocab,
        max(args.lengths),
        backbone="resnet18",
        feature_stride=16,
        d_model=args.d_model,
        encoder_layers=2,
        decoder_layers=args.layers,
        num_heads=8,
        mlp_dim=4 * args.d_model,
        dropout=0.0,
    ).to(device)
    with torch.no_grad():
        model.decoder.out_bias[EOS] = -1e4  # never stop early: every step of both paths is timed
    images = torch.randn(args.batch, 3, 128, 128, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(
        f"# {platform.node()} | {platform.processor() or platform.machine()} | torch {torch.__version__} | "
        f"{device} | threads {torch.get_num_threads()} | batch {args.batch} | decoder d {args.d_model} x "
        f"{args.layers} layers | vocab {args.vocab}"
    )
    print(
        f"{'tokens':>7} {'cached s':>10} {'ms/token':>9} {'uncached s':>11} {'ms/token':>9} {'speed-up':>9}"
    )
    for length in args.lengths:

        def run(use_cache: bool, length: int = length) -> torch.Tensor:
            out = model.generate(images, 2, length, use_cache=use_cache).tokens
            sync()
            return out

        run(True)  # warm-up: allocations, kernels
        t_cached, cached_tokens = best_seconds(lambda length=length: run(True, length), args.repeat)
        t_uncached, uncached_tokens = best_seconds(
            lambda length=length: run(False, length), args.repeat_uncached
        )
        same = torch.equal(cached_tokens, uncached_tokens)
        steps = length - 1
        print(
            f"{length:>7} {t_cached:>10.3f} {1000 * t_cached / steps:>9.2f} {t_uncached:>11.3f} "
            f"{1000 * t_uncached / steps:>9.2f} {t_uncached / t_cached:>8.1f}x"
            + ("" if same else "   (tokens differ!)")
        )


if __name__ == "__main__":
    main()
