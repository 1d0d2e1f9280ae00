"""The peak-memory estimate (fake tensors) against a real CPU measurement, for several model sizes.

Sweeps reject a configuration on the estimate alone, so it must track what training really allocates;
``benchmarks/bench_memory.py`` prints the same comparison at the quickstart's full size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from rleseg.memory import MemoryConfigError, estimate_config_memory, instantiate_data, measure_config_memory

SIZES = {
    "d16": {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "num_heads": 2, "mlp_dim": 32},
    # with the training-only auxiliary dense head: the estimate follows the loss training optimises
    "d64": {
        "d_model": 64,
        "encoder_layers": 1,
        "decoder_layers": 2,
        "num_heads": 4,
        "mlp_dim": 128,
        "aux_dense_weight": 1.0,
    },
    "d128": {"d_model": 128, "encoder_layers": 2, "decoder_layers": 2, "num_heads": 4, "mlp_dim": 512},
}


def config(data_dir: Path, **model: Any) -> dict[str, Any]:
    return {
        "model": {
            "class_path": "rleseg.module.RLESegModule",
            "init_args": {"backbone": "resnet10t", "feature_stride": 8, **model},
        },
        "data": {
            "class_path": "rleseg.data.ImageSegDataModule",
            "init_args": {
                "source": "composites",
                "source_args": {"canvas": 32, "num_train": 4, "num_val": 2, "data_dir": str(data_dir)},
                "tokenizer": "lac",
                "tokenizer_args": {"subsample": 2},
                "max_seq_len": 96,
                "batch_size": 4,
            },
        },
    }


@pytest.fixture(scope="module")
def peaks(data_fashion_dir: Path) -> dict[str, tuple[int, int, int]]:
    """(estimated bytes, measured bytes, parameters) per model size."""
    torch.manual_seed(0)
    out = {}
    for name, size in SIZES.items():
        cfg = config(data_fashion_dir, **size)
        dm = instantiate_data(cfg)
        est = estimate_config_memory(cfg, datamodule=dm)
        real = measure_config_memory(cfg, device="cpu", datamodule=dm)
        assert (est.method, real.method) == ("fake", "cpu-profiler")
        assert est.num_parameters == real.num_parameters
        out[name] = (est.peak_bytes, real.peak_bytes, est.num_parameters)
    return out


@pytest.mark.parametrize("name", list(SIZES))
def test_estimate_is_within_15_percent_of_the_measured_cpu_peak(peaks, name):
    estimate, measured, _ = peaks[name]
    assert measured > 0
    assert abs(estimate - measured) / measured < 0.15, (estimate / 2**20, measured / 2**20)


def test_estimate_grows_with_the_model_and_covers_weights_gradients_and_adam(peaks):
    ordered = [peaks[name] for name in SIZES]
    assert [p for p, _, _ in ordered] == sorted(p for p, _, _ in ordered)
    for estimate, _, params in ordered:
        assert estimate > 4 * 4 * params  # fp32 weights + gradients + two AdamW moments, plus activations


def test_estimate_needs_a_model_section():
    with pytest.raises(MemoryConfigError, match="needs a `model:` section"):
        estimate_config_memory({"data": {"class_path": "x.Y"}})
