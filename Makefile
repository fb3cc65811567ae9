# Two entry points for a fresh machine (Python 3.10+ with venv): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := build/demo

.PHONY: setup chromium postgres demo test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[convert,dev]'
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

# A real PostgreSQL server (initdb, pg_ctl) for the shared-database tests (tests/postgres_server.py).
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update && apt-get install -y --no-install-recommends postgresql; \
		else \
			echo "error: PostgreSQL is missing; the shared-database tests need initdb and pg_ctl." \
				"As root on Debian/Ubuntu: apt-get install postgresql (or put its bin/ on PATH)" >&2; \
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
	$(BIN)/pneumo convert models/pneumonia_cnn_v2.keras -o $(DEMO)/repo
	$(BIN)/pneumo validate $(DEMO)/repo/pneumonia/1/model.onnx \
		--against models/pneumonia_cnn_v2.keras --report $(DEMO)/validate.xml
	@echo
	@echo "demo outputs in $(DEMO)/:"
	@echo "  results.csv       scores of the sample X-rays"
	@echo "  report.html       the batch report (open it in a browser)"
	@echo "  heatmaps/         where the model looked, one PNG per PNEUMONIA sample"
	@echo "  plots/            ROC, precision-recall, confusion, calibration, histogram (on 6"
	@echo "                    sample X-rays: a look at the plots, not a measure of the model)"
	@echo "  repo/             the reference model converted with every variant"
	@echo "  validate.xml      its validation report (JUnit)"

# The rules (lint, types, layers), then unit tests, parity tests and the clean-install check,
# slow ones included. The report test renders HTML in headless Chromium: only tests need it.
test: setup chromium postgres lint
	$(BIN)/python -m pytest

# The loop while changing code (a few minutes): the rules, then every test not marked slow
# (unit tests, the data plane and real servers on loopback; no TensorFlow, no fresh installs).
test-fast: setup lint
	$(BIN)/python -m pytest tests -m "not slow" -q

# ruff (bugbear, pyupgrade, simplify, ruff's rules), mypy, and the import layers (import-linter).
lint: setup
	$(BIN)/ruff check pneumo_onnx engine convert models tests parity_tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf build .pytest_cache
