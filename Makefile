# Every target creates .venv (Python >= 3.11) and installs the package if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_CONFIG  ?= configs/sct_digits.py:scratch
DEMO_WORKDIR ?= runs/demo
PYTEST_ARGS  ?= -n 2

.PHONY: install demo test bench clean

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

# Per-step cost of each method relative to its teacher (same network and batch).
bench: $(STAMP)
	$(BIN)/python benchmarks/step_cost.py --out=benchmarks/step_cost.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
