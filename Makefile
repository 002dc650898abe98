# The README's two commands: `make demo` (train + evaluate SigLIP tiny on the CPU) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/siglip_tiny
CONFIG ?= configs/siglip.py:tiny

.PHONY: demo test test-all lint

$(VENV)/.installed: setup.cfg pyproject.toml launch/setup_env.sh
	bash launch/setup_env.sh $(VENV)
	touch $@

demo: $(VENV)/.installed
	$(PY) -m vlm_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -m "not slow"

test-all: lint
	$(PY) -m pytest -q
