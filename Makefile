# SmoothGen: one entry point. `make all` installs, runs the study (CPU preset) and builds the book;
# `make test` installs and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PRESET ?= cpu
TORCH  ?= torch==2.13.0
# Where torch comes from: PyTorch's CPU wheels where no NVIDIA GPU answers (PyPI's Linux wheel pulls
# several GB of CUDA libraries), PyPI's CUDA wheels where one does. Override, e.g.
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu128   (another CUDA build)
#   make install TORCH_INDEX=                                         (plain PyPI)
TORCH_INDEX ?= $(if $(shell nvidia-smi -L 2>/dev/null),,https://download.pytorch.org/whl/cpu)
BIN    := $(VENV)/bin

.PHONY: all install system-deps data study book test clean-book

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
	$(BIN)/pip install --retries 1 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/pip install "$(TORCH)" -e ".[test,book]"
	touch $@

install: $(VENV)/.installed

system-deps:
	bash scripts/system_deps.sh

# The datasets the tests read (every split), fetched into the data root when absent (`smoothgen data -h`).
# Offline and without them, the tests that read them are skipped, each with one line (a failure under CI).
data: install
	@$(BIN)/smoothgen data --download; status=$$?; \
	if [ $$status -eq 3 ]; then \
	  echo "make: the datasets could not be fetched (see above); the tests that read them will be skipped"; \
	elif [ $$status -ne 0 ]; then exit $$status; fi

study: install
	$(STUDY)

book: install
	rm -rf book/_build
	$(BIN)/jupyter-book build book/ -W -n --keep-going
	@echo "Book: $(CURDIR)/book/_build/html/index.html"

test: install system-deps data
	$(BIN)/python -m pytest

clean-book:
	rm -rf book/_build
