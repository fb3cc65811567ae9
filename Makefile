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

# The main job on the shipped default model and sample X-rays, then the conversion stage on
# the reference Keras model (convert with every variant, validate against Keras).
demo: setup
	$(BIN)/pneumo info
	$(BIN)/pneumo predict engine/samples/NORMAL/*.jpeg engine/samples/PNEUMONIA/*.jpeg
	mkdir -p $(DEMO)
	$(BIN)/pneumo batch engine/samples --recursive -o $(DEMO)/results.csv --overwrite
	$(BIN)/pneumo evaluate engine/samples
	rm -rf $(DEMO)/repo
	$(BIN)/pneumo convert models/pneumonia_cnn.keras -o $(DEMO)/repo
	$(BIN)/pneumo validate $(DEMO)/repo/pneumonia/1/model.onnx \
		--against models/pneumonia_cnn.keras --report $(DEMO)/validate.xml

# Unit tests, parity tests and the clean-install check, slow ones included.
test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check engine convert models tests parity_tests benchmarks

clean:
	rm -rf build .pytest_cache
