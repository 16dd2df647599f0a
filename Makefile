# Every target creates .venv (Python >= 3.11) and installs the package if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_CONFIG  ?= configs/sct_digits.py:scratch
DEMO_WORKDIR ?= runs/demo
PYTEST_ARGS  ?= -n 2
BENCH_ARGS   ?=
MEMORY_ARGS  ?=
LATENT_BENCH_ARGS ?=
ACCELERATOR_ARGS ?=
INPUT_BENCH_ARGS ?=
REPRODUCE_ARGS ?=

.PHONY: install demo test bench bench-accelerator bench-input bench-latent bench-memory reproduce clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "fewstep_jax needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Train SCT on digits from scratch (the embedded counterpart of the headline configs/sct_cifar.py),
# then write sample grids and metrics to $(DEMO_WORKDIR).
demo: $(STAMP)
	$(BIN)/python -m fewstep_jax.main --config=$(DEMO_CONFIG) --workdir=$(DEMO_WORKDIR)
	@echo "samples: $(DEMO_WORKDIR)/samples  metrics: $(DEMO_WORKDIR)/metrics.jsonl  summary: $(DEMO_WORKDIR)/summary.json"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

# Step cost, compile time, memory and sampling throughput of every method on one network and
# batch (digits UNet on CPU by default); writes benchmarks/results/bench_<machine>-<network>.{json,md}.
# More: make bench BENCH_ARGS='--rounds=20 --steps=4 --batch=128', or --network=ddpmpp / dit_b2 on a GPU.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# One command on one GPU (about 8 minutes on an H100 / H200): step time, images/s, compile time,
# memory and MFU of flow, ECT, SCT, sCT, MeanFlow and shortcut on DDPM++ (fp32, bf16) and DiT-B/2
# (bf16), sampling at 1 and 2 NFE, and the issue's targets; writes
# benchmarks/results/accelerator_<device>.{json,md}. With the PyTorch peers:
# make bench-accelerator ACCELERATOR_ARGS='--peers=PEERS_DIR --peers_python=PYTHON_WITH_TORCH'.
# On a CPU: ACCELERATOR_ARGS=--tiny (tiny shapes: checks that every stage runs).
bench-accelerator: $(STAMP)
	$(BIN)/python benchmarks/accelerator.py $(ACCELERATOR_ARGS)

# Images/s of the CIFAR-10, ImageNet-64 and latent readers per CPU core on generated data in the
# real formats, against the rate a GPU consumes; writes benchmarks/results/input_bench_<machine>.{json,md}.
# A few minutes on 2 cores; with a GPU report: INPUT_BENCH_ARGS='--accelerator_json=benchmarks/results/X.json'.
bench-input: $(STAMP)
	$(BIN)/python benchmarks/input_bench.py $(INPUT_BENCH_ARGS)

# Throughput of the latent path: VAE encode / decode, DINOv2 and Inception features at full size
# (random weights), with compile time, XLA's memory plan and the cost of FID-50k of a latent model;
# writes benchmarks/results/latent_bench_<machine>.{json,md}. On a GPU:
# make bench-latent LATENT_BENCH_ARGS='--batches=32,64,128 --precisions=fp32_highest,fp32,bf16'
bench-latent: $(STAMP)
	$(BIN)/python benchmarks/latent_bench.py $(LATENT_BENCH_ARGS)

# XLA's memory plan of the jvp training step (DiT-XL/2 MeanFlow, EDM2-L sCT) per rematerialization
# policy (model.remat), and the measured loss + gradient step; writes benchmarks/results/memory_<machine>.{json,md}.
# About 25 minutes on 2 CPU cores; compile-only (6 minutes): make bench-memory MEMORY_ARGS='--time_batch=0'.
bench-memory: $(STAMP)
	$(BIN)/python benchmarks/memory.py $(MEMORY_ARGS)

# Every method on toy2d and digits with the same network and budget, evaluated at 1-8 NFE (and the
# baselines to 64): docs/REPRODUCTION.md and its pictures. About 85 min on 2 CPU cores; runs go to
# runs/reproduction and are reused, so an interrupted run picks up where it stopped.
# More: make reproduce REPRODUCE_ARGS='--datasets=toy2d' (minutes), or '--report_only'.
reproduce: $(STAMP)
	$(BIN)/python benchmarks/reproduce.py $(REPRODUCE_ARGS)

clean:
	rm -rf $(VENV) .venv-newest *.egg-info .pytest_cache
