# intent-embed: every set-up step a fresh machine needs lives here.
#   make run    create .venv, install, start the local stack, print a working example
#   make test   create .venv if needed, install dev dependencies, run the whole suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch comes first and pinned: left to resolve `torch` on its own, pip would fetch a
# CUDA build of several GB. On GPU images override TORCH_SPEC (or preinstall torch).
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install run test bench protos lint train-intent eval-intent clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m devstack

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench

protos: $(STAMP)
	$(PY) -m intent_embed.codegen

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy embed_service metering gateway intent_model devstack bench

# The intent model: fine-tune on CLINC150 train (the recipe is chosen on val), then evaluate
# on CLINC150 test and append the numbers to the model card. `make eval-intent
# INTENT_MODEL=DIR` evaluates any model directory the embed service accepts.
INTENT_MODEL ?= models/intent-minilm
train-intent: $(STAMP)
	$(PY) -m intent_model.train --out $(INTENT_MODEL) --eval-splits ""
	$(PY) -m intent_model.eval $(INTENT_MODEL) --card --json $(INTENT_MODEL)/eval_test.json

eval-intent: $(STAMP)
	$(PY) -m intent_model.eval $(INTENT_MODEL) --json $(INTENT_MODEL)/eval_test.json

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
