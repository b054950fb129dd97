# Two commands on a fresh machine with only Python >= 3.11:
#   make demo   - set up .venv and run the whole pipeline on the embedded default
#   make test   - set up .venv (with test tools) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.riskwire-installed

.PHONY: demo test test-fast lint bench clean services models heads ensembles

# Debian packages some integration tests run (a real Alertmanager; a real Prometheus for the
# stream-health dashboard; Chromium for the live page); installed when missing and this is a Debian
# machine we may install on, else those tests skip
services:
	@missing=""; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
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
# fine-tuned members learn on the train splits, fusions on the val splits plus the 203 risk-news
# sentences written for this project (models/data/train.jsonl: FPB and the tweets have few trial
# failures, recalls or lawsuits), figures on the test splits (`riskwire models eval --split test`).
# `make heads` refits the shipped heads (MiniLM embeddings into one hidden layer of HEAD_HIDDEN
# units; HEAD_HIDDEN=0 for linear ones) and ensembles (a few minutes): `news` (fusion fitted on
# Financial PhraseBank), `social` (on the tweets), `mixed` (on both); `default.yaml` routes to them.
# `make models` also fine-tunes three MiniLM members (23 minutes on a 2-core Xeon with AMX) into
# riskwire-data/models and fits the same three ensembles with them there, where the worker and the
# demo find them before the shipped ones.
DATA ?= ../shared/data
FPB := $(DATA)/fpb_dev.jsonl
TWEETS := $(DATA)/tfns_train.jsonl
RISK := models/data/train.jsonl
SPLITS := riskwire-data/splits
TRAINED := riskwire-data/models
# PRUNE=1: leave out members the fusions can do without (`models fuse --prune`; README, Models)
FUSE = $(BIN)/riskwire models fuse --fusion stacking --split all $(if $(PRUNE),--prune)
$(SPLITS)/fpb_dev.val.jsonl $(SPLITS)/tfns_train.val.jsonl: $(STAMP)
	$(BIN)/riskwire models split --data $(FPB) --data $(TWEETS) --out $(SPLITS)

HEAD_HIDDEN ?= 128
heads: $(STAMP) $(SPLITS)/fpb_dev.val.jsonl
	$(BIN)/riskwire models train --kind head --data $(FPB) --name minilm-fpb \
		--hidden $(HEAD_HIDDEN) --out models/artifacts/heads/minilm-fpb.json
	$(BIN)/riskwire models train --kind head --data $(TWEETS) --name minilm-tweets \
		--hidden $(HEAD_HIDDEN) --out models/artifacts/heads/minilm-tweets.json
	$(MAKE) ENSEMBLES=models/artifacts/ensembles RECIPE=models/recipes/shipped.json ensembles

models: heads
	$(BIN)/riskwire models train --kind finetune --data $(FPB) --data $(TWEETS) --name minilm-ft \
		--out $(TRAINED)/minilm-ft --epochs 6 --patience 4 --max-length 96
	$(BIN)/riskwire models train --kind finetune --data $(FPB) --name minilm-ft-fpb \
		--out $(TRAINED)/minilm-ft-fpb --epochs 6 --patience 4 --max-length 96
	$(BIN)/riskwire models train --kind finetune --data $(TWEETS) --name minilm-ft-tweets \
		--out $(TRAINED)/minilm-ft-tweets --epochs 6 --patience 4 --max-length 64
	$(MAKE) ENSEMBLES=$(TRAINED)/ensembles RECIPE=models/recipes/finetuned.json NEWS_FUSION=soft \
		ensembles

NEWS_FUSION ?= stacking
ensembles:
	$(FUSE) --members $(RECIPE) --data $(SPLITS)/fpb_dev.val.jsonl --data $(RISK) --name news \
		--fusion $(NEWS_FUSION) --out $(ENSEMBLES)/news.json
	$(FUSE) --members $(RECIPE) --data $(SPLITS)/tfns_train.val.jsonl --data $(RISK) \
		--name social --out $(ENSEMBLES)/social.json
	$(FUSE) --members $(RECIPE) --data $(SPLITS)/fpb_dev.val.jsonl \
		--data $(SPLITS)/tfns_train.val.jsonl --data $(RISK) --name mixed --out $(ENSEMBLES)/mixed.json

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
	$(BIN)/riskwire bench engine
	$(BIN)/riskwire bench delivery
	$(BIN)/riskwire bench ingest
	$(BIN)/riskwire bench prune

clean:
	rm -rf $(VENV) riskwire-data .pytest_cache
