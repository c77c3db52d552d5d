# Set-up and checks for kosmos25. `make install`, then `make test`.
PYTHON ?= python3
VENV ?= .venv
# CPU build by default (on these machines it is on local disk); GPU users pass their CUDA build,
# e.g. make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_VERSION ?= 2.13.0
TORCH ?= torch==$(TORCH_VERSION)
BIN := $(VENV)/bin
# The newest releases of every dependency (torch stays at TORCH_VERSION: PyPI's newer builds are CUDA ones).
LATEST_VENV ?= .venv-latest
TINY_MODEL ?= build/tiny-kosmos25

.PHONY: install test test-latest tiny-model poppler clean bench bench-ragged bench-kernels bench-train

install: poppler
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt $(TORCH)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,ray]"
	@echo "installed: $(BIN)/kosmos25 (activate with: . $(BIN)/activate)"

# PDFs need poppler's pdftoppm; install it through apt when it is missing and apt is there.
poppler:
	@if command -v pdftoppm >/dev/null 2>&1; then \
		echo "pdftoppm found: $$(command -v pdftoppm)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q poppler-utils; \
	else \
		echo "WARNING: pdftoppm (poppler) not found and apt-get is not available: install poppler" \
		     "(macOS: brew install poppler) to read PDFs; images work without it." >&2; \
	fi

# One test worker per core (pytest-xdist), then the Ray tests in one process: they share one
# Ray instance and find Ray's worker processes machine-wide.
TEST_WORKERS ?= auto
test:
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not ray" --durations=8
	$(BIN)/python -m pytest -q -m ray

# The suite against the newest versions the registry serves, in a separate virtual env,
# so the next upstream release is caught here rather than by a user.
test-latest: poppler
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	echo "torch==$(TORCH_VERSION)" > $(LATEST_VENV)/torch-pin.txt
	$(LATEST_VENV)/bin/python -m pip install --quiet -c $(LATEST_VENV)/torch-pin.txt $(TORCH)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager \
		-c $(LATEST_VENV)/torch-pin.txt -e ".[dev,ray]"
	@$(LATEST_VENV)/bin/python -c "import torch, transformers; print('testing with torch', torch.__version__, 'transformers', transformers.__version__)"
	$(LATEST_VENV)/bin/python -m pytest -q

# A tiny trained checkpoint for trying the commands without the real model (about 15 s on CPU).
tiny-model:
	$(BIN)/python tests/tiny_checkpoint.py $(TINY_MODEL)

clean:
	rm -rf build .pytest_cache .cache

# Throughput: model card loop vs kosmos25, full-size random model (about 10 min on 2 CPU cores).
BENCH_ARGS ?=
bench:
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# Pages of very different lengths: model card loop vs static batches vs continuous batching, static and
# continuous at 8 (the same batch size), and continuous at 12 slots, the CPU's default (about 55 min on
# 2 CPU cores; README "Speed" has the figures).
bench-ragged:
	$(BIN)/python benchmarks/bench.py --ragged --pages 12 --batch-size 8 --extra-slots 12 $(BENCH_ARGS)

# This machine's matrix-product peak and memory bandwidth, then where a page's time goes against
# them: vision encoder, prefill, one decoding step (about 4 min on 2 CPU cores).
bench-kernels:
	$(BIN)/python benchmarks/matmul.py
	$(BIN)/python benchmarks/profile_model.py --slots 4,8

# Training: one LoRA step of the full-size architecture, bf16 on CPU (about 5 min on 2 cores, 9 GiB).
BENCH_TRAIN_ARGS ?=
bench-train:
	$(BIN)/python benchmarks/bench_train.py $(BENCH_TRAIN_ARGS)
