# mugaika — the two commands are `make run` and `make test`; both go through `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Debian packages the gateway needs at run time (libmagic, LibreOffice without GUI, Japanese
# fonts, the sandbox, poppler for tests, Unicode's carrier-emoji table, tesseract OCR with the
# Japanese horizontal and vertical models: docs/ocr.md) and the tools the
# tests drive (swaks; postfix: private Postfix peers in front and behind, its sendmail and
# smtp-source, tests/test_postfix_peers.py and `make bench`). The install preseeds postfix's
# debconf question with "No configuration": no main.cf is written, so no system Postfix
# starts on port 25 and the install asks nothing (the tests run private instances).
DEB_PACKAGES := libmagic1 bubblewrap libseccomp2 swaks libarchive13 postfix \
	libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui python3-uno \
	fonts-ipaexfont fonts-noto-cjk poppler-utils p7zip-full lhasa unicode-data chromium \
	tesseract-ocr tesseract-ocr-jpn tesseract-ocr-jpn-vert

.PHONY: setup run test lint typecheck pytest bench clean fuzz

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml Makefile
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $$missing"; \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
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
	$(VENV)/bin/ruff check gateway converters tests bench fuzz
	$(VENV)/bin/mypy

# The PostgreSQL store tests run whenever a server answers on 127.0.0.1:5432 (and then must pass).
test: lint
	@if [ -z "$$MUGAIKA_TEST_DATABASE_URL" ] && pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
	  export MUGAIKA_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test; fi; \
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) -m bench

# Coverage-guided fuzzing with atheris (fuzz/README.md): FUZZ_SECONDS per target, seeded
# from `mugaika samples` and hand-made cases; corpora and crashes stay in fuzz/work/
# (git-ignored), so a second run goes on where the first stopped. Stops at a crash.
FUZZ_SECONDS ?= 600
FUZZ_WORK := fuzz/work
fuzz: setup
	@for t in smtp pipeline; do \
	  mkdir -p $(FUZZ_WORK)/corpus-$$t $(FUZZ_WORK)/crashes || exit 1; \
	  test -d $(FUZZ_WORK)/seeds-$$t || $(PY) -m fuzz.run seed $$t $(FUZZ_WORK)/seeds-$$t || exit 1; \
	  $(PY) -m fuzz.run $$t $(FUZZ_WORK)/corpus-$$t $(FUZZ_WORK)/seeds-$$t \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=30 -rss_limit_mb=4096 \
	    -artifact_prefix=$(FUZZ_WORK)/crashes/$$t- -print_final_stats=1 || exit 1; \
	done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
