# The two commands a fresh machine needs (see README.md):
#   make run    - a worker against $KAFKA_BOOTSTRAP_SERVERS, or a local broker it starts itself
#   make test   - lint, then the whole suite against a real Kafka broker
# Everything is installed by these targets: a venv in .venv, Kafka jars via Maven, and wrk
# (Debian's package, for the latency bench and its test) by scripts/install-tools.sh.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: run test lint schemas bench install clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

run: $(STAMP)
	bash scripts/run.sh

test: $(STAMP)
	bash scripts/install-tools.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python deploy/local-kafka/kafka.py jars >/dev/null
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	bash scripts/bench.sh

schemas: $(STAMP)
	$(VENV)/bin/receipt-streams schemas --out schemas

clean:
	rm -rf $(VENV) .local .pytest_cache .ruff_cache .hypothesis
