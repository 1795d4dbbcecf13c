# mugaika — the two commands are `make run` and `make test`; both go through `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Debian packages the gateway needs at run time (libmagic, LibreOffice without GUI, Japanese
# fonts, the sandbox, poppler for tests, Unicode's carrier-emoji table) and the tools the
# tests drive (swaks).
DEB_PACKAGES := libmagic1 bubblewrap libseccomp2 swaks libarchive13 \
	libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui python3-uno \
	fonts-ipaexfont fonts-noto-cjk poppler-utils p7zip-full lhasa unicode-data

.PHONY: setup run test lint typecheck pytest bench clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages; run as root:"; \
	    echo "  sudo apt-get install -y --no-install-recommends $$missing"; exit 1; \
	  fi; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: setup
	$(VENV)/bin/mugaika serve

lint: setup
	$(VENV)/bin/ruff check gateway converters tests bench
	$(VENV)/bin/mypy

# The PostgreSQL store tests run whenever a server answers on 127.0.0.1:5432 (and then must pass).
test: lint
	@if [ -z "$$MUGAIKA_TEST_DATABASE_URL" ] && pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
	  export MUGAIKA_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test; fi; \
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
