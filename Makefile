# Two entry points for a fresh machine (Python 3.10+ with venv): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := build/demo

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[convert,dev]'
	touch $(STAMP)

# Build the reference PneumoniaCNN, convert it with every variant, validate the result.
demo: setup
	$(BIN)/python models/pneumonia_cnn.py --out $(DEMO)/pneumonia_cnn.keras
	rm -rf $(DEMO)/repo
	$(BIN)/pneumo convert $(DEMO)/pneumonia_cnn.keras -o $(DEMO)/repo
	$(BIN)/pneumo validate $(DEMO)/repo/pneumonia/1/model.onnx \
		--against $(DEMO)/pneumonia_cnn.keras --report $(DEMO)/validate.xml

# Unit tests, parity tests and the clean-install check, slow ones included.
test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check engine convert models tests parity_tests benchmarks

clean:
	rm -rf build .pytest_cache
