"""Peak training memory: the sweep's estimate (fake tensors, no allocation) against a real CPU measurement.

For three model sizes of the quickstart experiment (64x64 composites, LAC at s = 4), prints the estimate
of :func:`rleseg.memory.estimate_config_memory`, the peak measured by
:func:`rleseg.memory.measure_config_memory` (two real AdamW steps, CPU allocator events from the
profiler), their relative error, and how long each took. Sweeps reject a trial on the estimate alone, so
the error is the margin a budget should leave. Run it on a GPU to measure with
``torch.cuda.max_memory_allocated`` instead (``--device cuda``).

    python benchmarks/bench_memory.py [--device cpu|cuda] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from rleseg.commands.experiments import compose_experiment  # noqa: E402
from rleseg.memory import estimate_config_memory, instantiate_data, measure_config_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: Model sizes (overrides of the quickstart's model section): ~0.4 M, ~1.5 M and ~7 M parameters.
SIZES: dict[str, dict[str, Any]] = {
    "small": {"d_model": 64, "encoder_layers": 1, "decoder_layers": 1, "num_heads": 2, "mlp_dim": 128},
    "quickstart": {},
    "large": {"d_model": 256, "encoder_layers": 4, "decoder_layers": 4, "num_heads": 8, "mlp_dim": 1024},
}


def config_for(size: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """The quickstart config with a model size and batch size (small data: only shapes matter here)."""
    config = compose_experiment(ROOT / "experiments" / "quickstart.yaml")  # with its shared pieces
    config["model"]["init_args"].update(size)
    config["data"]["init_args"].update(batch_size=batch_size)
    config["data"]["init_args"]["source_args"].update(num_train=8, num_val=4)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"# {platform.node()} torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}")
    print(f"# quickstart config, batch {args.batch_size}: estimate (fake tensors) vs measured, 2 AdamW steps")
    head = ("size", "params", "estimate", "measured", "error", "est s", "meas s")
    print(f"{head[0]:12s} " + " ".join(f"{h:>10s}" for h in head[1:]))
    for name, size in SIZES.items():
        config = config_for(size, args.batch_size)
        dm = instantiate_data(config)
        est = estimate_config_memory(config, datamodule=dm)
        real = measure_config_memory(config, device=args.device, datamodule=dm)
        error = (est.peak_bytes - real.peak_bytes) / real.peak_bytes
        print(
            f"{name:12s} {est.num_parameters / 1e6:9.2f}M {est.peak_mib:9.2f}M {real.peak_mib:9.2f}M "
            f"{error:+10.2%} {est.seconds:10.2f} {real.seconds:10.2f}"
        )


if __name__ == "__main__":
    main()
