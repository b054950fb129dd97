# Two commands on a fresh machine with only Python >= 3.11:
#   make demo   - set up .venv and run the whole pipeline on the embedded default
#   make test   - set up .venv (with test tools) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.riskwire-installed

.PHONY: demo test test-fast lint bench clean services

# Debian packages some integration tests run (a real Alertmanager; Chromium for the live page);
# installed when missing and this is a Debian machine we may install on, else those tests skip
services:
	@missing=""; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "installing$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
				|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
				|| echo "could not install$$missing: the tests that need them will skip"; \
		else \
			echo "missing$$missing (apt-get install -y$$missing): the tests that need them will skip"; \
		fi; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: on the project machines a CPU build of 2.13.0 lies on local disk
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/riskwire demo

test: $(STAMP) services
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench.pipeline
	$(BIN)/riskwire bench infer
	$(BIN)/riskwire bench replay
	$(BIN)/riskwire bench delivery
	$(BIN)/riskwire bench ingest

clean:
	rm -rf $(VENV) riskwire-data .pytest_cache
