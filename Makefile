# rleseg — the targets the README uses. Everything runs inside .venv (created on first use).
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export MPLBACKEND := Agg

.PHONY: install system-deps quickstart test test-slow lint format bench clean

# TORCH_INDEX=https://download.pytorch.org/whl/cpu installs PyTorch's CPU-only build first (README: Installing by hand).
# Debian data packages (Fashion-MNIST, MRI atlas); needs root, skipped with a note otherwise.
system-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		dpkg -s dataset-fashion-mnist mricron-data >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist mricron-data; }; \
	else \
		echo "note: not root or no apt-get; install the data with: sudo apt-get install -y dataset-fashion-mnist mricron-data"; \
	fi

$(BIN)/rleseg: pyproject.toml setup.py rleseg/tokenizers/_kernels.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install -q torch torchvision --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev,postgres]'
	touch $(BIN)/rleseg

install: system-deps $(BIN)/rleseg

# The main job: train the quickstart experiment (Fashion-MNIST composites, LAC tokens) on the CPU.
quickstart: install
	$(BIN)/rleseg data prepare composites
	$(BIN)/rleseg fit --config experiments/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check rleseg tests benchmarks
	$(BIN)/ruff format --check rleseg tests benchmarks

format: install
	$(BIN)/ruff format rleseg tests benchmarks
	$(BIN)/ruff check --fix rleseg tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_tokenizers.py
	$(BIN)/python benchmarks/bench_generation.py
	$(BIN)/python benchmarks/bench_memory.py

clean:
	rm -rf runs lightning_logs .pytest_cache .ruff_cache
