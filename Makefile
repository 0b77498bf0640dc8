# intent-embed: every set-up step a fresh machine needs lives here.
#   make run    create .venv, install, start the local stack, print a working example
#   make test   create .venv if needed, install dev dependencies and the browser the dashboard
#               test drives (Debian's chromium), run the whole suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch comes first and pinned: left to resolve `torch` on its own, pip would fetch a
# CUDA build of several GB. On GPU images override TORCH_SPEC (or preinstall torch).
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# The dashboard's browser test drives Debian's Chromium through its ChromeDriver (the
# chromium-driver package pulls chromium in); installed once when missing, as root (CI) or
# through sudo. Nothing ever downloads a browser of its own.
CHROMEDRIVER := /usr/bin/chromedriver
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test bench protos lint train-intent intent-leaveout eval-intent clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

$(CHROMEDRIVER):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium chromium-driver

install: $(STAMP) $(CHROMEDRIVER)

run: $(STAMP)
	$(PY) -m devstack

test: $(STAMP) $(CHROMEDRIVER)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench

protos: $(STAMP)
	$(PY) -m intent_embed.codegen

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy intent_embed encoder embed_service metering gateway intent_model devstack bench tests

# The intent model. `make train-intent` rebuilds the shipped adapter (embed_service/models/
# intent-embed: weights, metrics.json, eval.json, model card) from the packaged base and
# ../shared/data with fixed seeds; `make intent-leaveout` trains the same recipe without each
# group of intents and adds those checks to the card; `make eval-intent` measures any model
# directory (INTENT_MODEL=DIR) beside the base.
SHIPPED_MODEL := embed_service/models/intent-embed
INTENT_MODEL ?= $(SHIPPED_MODEL)
train-intent: $(STAMP)
	$(PY) -m intent_model.train --out $(SHIPPED_MODEL) --threads 1

intent-leaveout: $(STAMP)
	$(PY) -m intent_model.leaveout $(SHIPPED_MODEL)

eval-intent: $(STAMP)
	$(PY) -m intent_model.eval $(INTENT_MODEL)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
