# Two commands on a fresh machine with only Python >= 3.11:
#   make demo   - set up .venv and run the whole pipeline on the embedded default
#   make test   - set up .venv (with test tools) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.riskwire-installed

.PHONY: demo test test-fast lint bench clean services models heads

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

# The models: labelled sets by path (never copied here), 70/15/15 hash splits of each; heads and
# fine-tuned members learn on the train splits, fusions on the val splits, figures on the test splits.
# `make heads` refits the shipped heads and ensembles (a few minutes): `news` (fusion fitted on
# Financial PhraseBank), `social` (on the tweets), `mixed` (on both); `default.yaml` routes to them.
# `make models` also fine-tunes three MiniLM members (about 40 minutes on 2 cores) into
# riskwire-data/models and fits the same three ensembles with them there, where the worker and the
# demo find them before the shipped ones.
DATA ?= ../shared/data
FPB := $(DATA)/fpb_dev.jsonl
TWEETS := $(DATA)/tfns_train.jsonl
TRAINED := riskwire-data/models
FUSE = $(BIN)/riskwire models fuse --fusion stacking
heads: $(STAMP)
	$(BIN)/riskwire models train --kind head --data $(FPB) --name minilm-fpb \
		--out models/artifacts/heads/minilm-fpb.json
	$(BIN)/riskwire models train --kind head --data $(TWEETS) --name minilm-tweets \
		--out models/artifacts/heads/minilm-tweets.json
	$(FUSE) --members models/recipes/shipped.json --data $(FPB) --name news \
		--out models/artifacts/ensembles/news.json
	$(FUSE) --members models/recipes/shipped.json --data $(TWEETS) --name social \
		--out models/artifacts/ensembles/social.json
	$(FUSE) --members models/recipes/shipped.json --data $(FPB) --data $(TWEETS) --name mixed \
		--out models/artifacts/ensembles/mixed.json

models: heads
	$(BIN)/riskwire models train --kind finetune --data $(FPB) --data $(TWEETS) --name minilm-ft \
		--out $(TRAINED)/minilm-ft --epochs 3 --max-length 96
	$(BIN)/riskwire models train --kind finetune --data $(FPB) --name minilm-ft-fpb \
		--out $(TRAINED)/minilm-ft-fpb --epochs 4 --max-length 96
	$(BIN)/riskwire models train --kind finetune --data $(TWEETS) --name minilm-ft-tweets \
		--out $(TRAINED)/minilm-ft-tweets --epochs 3 --max-length 64
	$(FUSE) --members models/recipes/finetuned.json --data $(FPB) --name news --fusion soft \
		--out $(TRAINED)/ensembles/news.json
	$(FUSE) --members models/recipes/finetuned.json --data $(TWEETS) --name social \
		--out $(TRAINED)/ensembles/social.json
	$(FUSE) --members models/recipes/finetuned.json --data $(FPB) --data $(TWEETS) --name mixed \
		--out $(TRAINED)/ensembles/mixed.json

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
