# Two entry points for a fresh machine (Python 3.10+ with venv): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := build/demo

.PHONY: setup chromium demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[convert,dev]'
	$(MAKE) chromium
	touch $(STAMP)

# Headless Chromium renders the HTML batch report in tests/test_pictures_report.py.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver; \
		else \
			echo "error: chromium is missing; the report test needs it. As root on Debian/Ubuntu:" \
				"apt-get install chromium chromium-driver (or install Chromium and put it on PATH)" >&2; \
			exit 1; \
		fi; \
	}

# The main job on the shipped default model and sample X-rays, then the conversion stage on
# the reference Keras model (convert with every variant, validate against Keras).
demo: setup
	$(BIN)/pneumo info
	$(BIN)/pneumo predict engine/samples/NORMAL/*.jpeg engine/samples/PNEUMONIA/*.jpeg
	mkdir -p $(DEMO)
	$(BIN)/pneumo batch engine/samples --recursive -o $(DEMO)/results.csv --overwrite \
		--report $(DEMO)/report.html
	$(BIN)/pneumo predict engine/samples/PNEUMONIA/*.jpeg --heatmap $(DEMO)/heatmaps
	$(BIN)/pneumo evaluate engine/samples --plots $(DEMO)/plots
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
