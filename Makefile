# The two commands a newcomer needs: `make run` (the sandbox) and `make test`. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: run test bench browser

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade 'pip>=23'
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Headless Chromium for the demo console's browser test (Debian packages; needs root, as CI and dev machines have).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed (apt-get install chromium): the browser test will be skipped"; fi; }

run: $(STAMP)
	$(VENV)/bin/ilianaai-avatar --sandbox

test: $(STAMP) browser
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py
