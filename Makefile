# SmoothGen: one entry point. `make all` installs, runs the study (CPU preset) and builds the book;
# `make test` installs and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PRESET ?= cpu
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: all install system-deps data study book test clean-book

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

# The datasets: found in $$SMOOTHGEN_DATA or data/ (checksums verified), else fetched from the
# official sources into that folder.
data: install
	$(BIN)/python -c "import smoothgen as s; [s.load_cifar10(x, download=True) for x in ('train', 'test')]; \
	[s.load_ptb(x, download=True) for x in ('train', 'valid', 'test')]"

study: install data
	$(BIN)/smoothgen study --preset $(PRESET)

book: install
	rm -rf book/_build
	$(BIN)/jupyter-book build book/ -W -n --keep-going
	@echo "Book: $(CURDIR)/book/_build/html/index.html"

test: install system-deps
	$(BIN)/python -m pytest

clean-book:
	rm -rf book/_build
