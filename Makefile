# The README's two commands are `make run` and `make test`; both (re)build .venv idempotently.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch/torchvision are pinned here (not in pyproject) so a CPU machine takes the builds that lie on its disk,
# while GPU hosts keep whatever torch>=2.11 they ship.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: run test lint format setup clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev,postgres]' $(TORCH_PIN)
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/internvl-search demo $(if $(wildcard ../shared/images),--photos ../shared/images)

# PostgreSQL tests read DATABASE_URL and skip cleanly when nothing answers there.
test: export DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-venv:
	rm -rf $(VENV)
