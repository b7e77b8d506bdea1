# SmoothGen: one entry point. `make all` installs, runs the study (CPU preset) and builds the book;
# `make test` installs and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PRESET ?= cpu
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: all install system-deps study book test clean-book

all: study book

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH)" -e ".[test,book]"
	touch $@

install: $(VENV)/.installed

system-deps:
	bash scripts/system_deps.sh

study: install
	$(BIN)/smoothgen study --preset $(PRESET)

book: install
	rm -rf book/_build
	$(BIN)/jupyter-book build book/ -W -n --keep-going
	@echo "Book: $(CURDIR)/book/_build/html/index.html"

test: install system-deps
	$(BIN)/python -m pytest

clean-book:
	rm -rf book/_build
