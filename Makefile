# privbot — the two commands that matter on a fresh machine:
#   make run    install privbot into .venv and run the service
#   make test   install everything the tests need and run them
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests use: a real IMAP server, a real browser, compose validation.
DEBS := dovecot-imapd dovecot-core chromium docker-compose

.PHONY: run test install test-deps bench clean lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/privbot init
	$(BIN)/privbot run

test-deps: install
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: test-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: test-deps
	$(BIN)/python bench/run_all.py

lint: install
	$(BIN)/python -m compileall -q src tests

clean:
	rm -rf $(VENV) var .pytest_cache
