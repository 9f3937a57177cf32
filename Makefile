# The two commands a newcomer needs: `make run` (the sandbox) and `make test`. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint typecheck check bench browser demo-assets

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --quiet --upgrade 'pip>=23'
	$(VENV)/bin/pip install --quiet --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages the browser and deployment tests use (needs root, as CI and dev machines have): Chromium (the demo
# console's test and the official SDKs' test), nginx and openssl (TLS in front of the gateway in
# tests/browser/test_sdk_browser.py and tests/faults/test_deployment.py) and, where the machine has none, Node.js and npm
# (the SDKs pinned in tests/sdk/). One apt-get update, only when something is missing.
browser:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "not installed:$$missing (apt-get install$$missing): the browser tests that need them will be skipped"; fi; \
	fi

# The demo console's livekit-client (pinned in handlers/static/vendor/package.json; its UMD build copied next to the
# manifest, gitignored). Without npm the console runs without the avatar's video and says so.
DEMO_LIVEKIT := handlers/static/vendor/livekit-client.umd.js
$(DEMO_LIVEKIT): handlers/static/vendor/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  mkdir -p build/demo-vendor && cp handlers/static/vendor/package*.json build/demo-vendor/ && \
	  npm ci --silent --no-audit --no-fund --prefix build/demo-vendor && \
	  cp build/demo-vendor/node_modules/livekit-client/dist/livekit-client.umd.js $@; \
	else echo "npm not installed: the demo console shows no avatar video (apt-get install npm, then make $@)"; fi

demo-assets: $(DEMO_LIVEKIT)

run: $(STAMP) $(DEMO_LIVEKIT)
	$(VENV)/bin/python server.py --sandbox

test: $(STAMP) browser $(DEMO_LIVEKIT)
	$(VENV)/bin/pytest

# The quick loop: the unit tests and the gateway over real sockets (no browsers, no killed processes).
test-fast: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit tests/gateway

# ruff, and the layering written down in pyproject.toml (import-linter contracts).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# mypy: strict for domain/, services/, clients/ and conf/, gradual elsewhere (pyproject.toml).
typecheck: $(STAMP)
	$(VENV)/bin/mypy

# What CI runs (.ci/run).
check: lint typecheck test

# bench/run.py (bench/README.md). Its anchor relays need nginx and Node.js/npm: Debian's, installed here when missing
# (root only; one apt-get update); the Node relay's packages are pinned in bench/anchors and `npm ci`'d by the bench.
bench: $(STAMP)
	@missing=""; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "not installed:$$missing (apt-get install$$missing): the bench skips the anchors that need them"; fi; \
	fi
	$(VENV)/bin/python bench/run.py --rooms
