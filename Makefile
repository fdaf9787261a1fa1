# The two commands a newcomer needs: `make run` and `make test` (see README.md).
# Everything they need is installed here, idempotently: a second run skips what is already there.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBS := dovecot-imapd dovecot-lmtpd dovecot-sieve postfix redis-server lua-socket lua5.4
# The browser the web client's tests drive (headless), a font for the emoji it shows, and systemd-analyze
# (from systemd; nothing is started) that checks the shipped units; libnss-mdns (its mdns4_minimal on the
# hosts line) gives the hook's name-lookup test a C-library resolver that can be made to hang.
TEST_DEBS := chromium fonts-noto-color-emoji systemd libnss-mdns
STAMP := $(VENV)/.installed

.PHONY: run test test-unit reliability bench check lint typecheck setup debs test-debs venv ferretdb web dist screenshots lighthouse clean

run: setup
	$(PY) -m bridge stack

test: setup test-debs
	$(VENV)/bin/ruff check bridge tests hooks bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q tests

# The pure tests alone (under a minute here): lint, then every test not marked e2e (tests/conftest.py marks
# each one that needs the stack, and fails one that starts a server unmarked). Needs only the virtualenv.
test-unit: venv
	$(VENV)/bin/ruff check bridge tests hooks bench
	$(PY) -m pytest -q -m "not e2e" tests

# The reliability and security suite at full load (its fast subset runs in `make test`); writes docs/reliability.md.
reliability: setup test-debs
	$(PY) -m pytest -q -m reliability --reliability-full --reliability-report docs/reliability.md tests

# Benchmarks on the real stack (7 to 13 minutes here, and about 10 more for the web stage); writes docs/benchmarks.md and its plots.
bench: setup test-debs $(VENV)/.bench-installed
	$(VENV)/bin/mypy --strict bench
	$(PY) -m bench

$(VENV)/.bench-installed: setup.cfg $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

check: lint typecheck

lint: venv
	$(VENV)/bin/ruff check bridge tests hooks bench

typecheck: venv
	$(VENV)/bin/mypy

setup: debs venv ferretdb web

# Debian packages: install only when one is missing (apt starts no service here; the stack starts its own).
test-debs:
	@$(MAKE) --no-print-directory debs DEBS="$(TEST_DEBS)"

debs:
	@missing=""; for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections; \
	  echo 'postfix postfix/mailname string localhost' | debconf-set-selections; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The web client (web/): dependencies from package-lock.json, built into web/dist for the bridge to serve.
web: web/dist/index.html

web/node_modules/.package-lock.json: web/package-lock.json
	cd web && npm ci --no-audit --no-fund

web/dist/index.html: web/node_modules/.package-lock.json web/index.html web/vite.config.js $(wildcard web/src/*) $(wildcard web/public/*)
	cd web && npm run build

# The wheel, in dist/: the package with the hooks, the Dovecot and Postfix snippets, the systemd units and
# the built web client inside it (setup.py copies them; bridge/resources.py finds them once installed).
dist: venv web
	rm -rf dist
	$(PY) -m pip wheel --no-deps -w dist .
	@# The embedded store's program, for `mail-bridge install --store --ferretdb-bin dist/ferretdb`
	@# on a server without Go (the same build `make setup` makes, with its patch).
	bash scripts/install-ferretdb.sh
	cp "$$($(PY) -c 'from bridge.settings import StackSettings; print(StackSettings.from_env().ferretdb_bin)')" dist/ferretdb

# The README's screenshots: the web client on the stack, captured by its accessibility test.
screenshots: setup test-debs
	MAIL_BRIDGE_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q tests/test_web_a11y.py -k "main_screens or dark_theme"

# Lighthouse's scores on the signed-in inbox (tests/test_web_lighthouse.py), written to docs/lighthouse.md.
lighthouse: setup test-debs
	$(PY) -m pytest -q tests/test_web_lighthouse.py --lighthouse-report docs/lighthouse.md

# MongoDB-compatible store: only needed when MONGODB_URL is not set.
ferretdb:
	@if [ -z "$$MONGODB_URL" ]; then bash scripts/install-ferretdb.sh; fi

clean:
	if [ -L var ]; then rm -rf "$$(readlink var)"; fi
	rm -rf var web/dist dist build
