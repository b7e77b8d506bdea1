# SmoothGen: one entry point. `make all` installs, runs the study (CPU preset) and builds the book;
# `make test` installs and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PRESET ?= cpu
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: all install system-deps study book test clean-book

# The study reruns only the notebooks whose inputs changed, fetching the data they read when it is
# absent (`smoothgen study --help`). Exit status 3 means that data is missing and could not be
# fetched: `make study` fails, `make all` says so and builds the book from the committed results.
STUDY = $(BIN)/smoothgen study --preset $(PRESET) --download

all: install
	@$(STUDY); status=$$?; \
	if [ $$status -eq 3 ]; then \
	  echo "make all: the study did not run (data missing, see above); building the book from the committed results"; \
	elif [ $$status -ne 0 ]; then exit $$status; fi
	@$(MAKE) --no-print-directory book

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
	$(STUDY)

book: install
	rm -rf book/_build
	$(BIN)/jupyter-book build book/ -W -n --keep-going
	@echo "Book: $(CURDIR)/book/_build/html/index.html"

test: install system-deps
	$(BIN)/python -m pytest

clean-book:
	rm -rf book/_build
