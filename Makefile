# The README's two commands are `make run` and `make test`; both (re)build .venv idempotently.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch/torchvision are pinned here (not in pyproject) so a CPU machine takes the builds that lie on its disk,
# while GPU hosts keep whatever torch>=2.11 they ship.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: run test lint format setup browser clean-venv fuzz load

setup: $(STAMP) browser

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev,postgres]' $(TORCH_PIN)
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/internvl-search demo $(if $(wildcard ../shared/images),--photos ../shared/images)

# Debian's Chromium for the browser test (tests/e2e/test_web.py drives it with the dev extra's playwright package).
# Idempotent and best effort: apt-get runs only when it is missing and we are root; elsewhere that test skips and
# says why. `make run` does not need it.
CHROMIUM := /usr/bin/chromium
CHROMIUM_LOG := $${TMPDIR:-/tmp}/internvl-search-chromium-install.log
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser test (log: $(CHROMIUM_LOG))"; \
		if { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
			>$(CHROMIUM_LOG) 2>&1 && [ -x $(CHROMIUM) ]; then echo "installed $(CHROMIUM)"; \
		else tail -n 5 $(CHROMIUM_LOG); echo "warning: apt-get could not install chromium; the browser test will skip"; fi; \
	else echo "note: $(CHROMIUM) is missing and apt-get cannot run here (not root, or no apt); the browser test will skip"; fi

# PostgreSQL tests read DATABASE_URL and skip cleanly when nothing answers there.
test: export DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
test: $(STAMP) browser
	$(PY) -m pytest

# Re-train the shipped shapes-world models from scratch (CPU by default, the GPU when present), evaluate them on
# held-out scenes and rewrite their model card. Seeded: the same seed gives the same weights and metrics on CPU.
# The chat trains on one torch thread, as the shipped chat model was.
SHAPES := internvl_models/shapes_world/weights
SEED ?= 0
train-shapes: $(STAMP)
	$(PY) -m internvl_models.shapes_world.train_internvl --seed $(SEED) --out $(SHAPES)/internvl-shapes
	$(PY) -m internvl_models.shapes_world.evaluate $(SHAPES)/internvl-shapes --out $(SHAPES)/internvl-shapes/evaluation.json > /dev/null
	$(PY) -m internvl_models.shapes_world.train_chat --seed $(SEED) --threads 1 --vision $(SHAPES)/internvl-shapes --out $(SHAPES)/internvl-chat-shapes
	$(PY) -m internvl_models.shapes_world.evaluate_chat $(SHAPES)/internvl-chat-shapes --out $(SHAPES)/internvl-chat-shapes/evaluation.json > /dev/null
	$(PY) -m internvl_models.shapes_world.model_card $(SHAPES)

# Longer fuzzing than the suite's bounded run: the filter property test and schemathesis against the OpenAPI schema,
# FUZZ_EXAMPLES generated cases each (PostgreSQL too when DATABASE_URL answers). `make load`: bench/load.py, 5 minutes
# of mixed search/index/classify at a fixed rate against a real server on loopback.
FUZZ_EXAMPLES ?= 1000
fuzz: export DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/indexer/test_filter_property.py tests/app/test_fuzz_api.py

load: $(STAMP)
	$(PY) -m bench.load

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-venv:
	rm -rf $(VENV)
