# The two commands a newcomer needs:  `make demo`  and  `make test`.  Both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT    := $(shell grep -v '^\s*\#' ci/apt-packages.txt | awk '{print $$1}' | grep -v '^$$')

.PHONY: demo test lint bench samples apt clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,engine]'
	touch $@

# Debian packages some tests need (D-Bus daemon, Alertmanager, promtool...). Installed when we are root
# and apt-get exists; otherwise the tests that need them print why they are skipped.
apt:
	@missing=""; for p in $(APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "not root: skipping Debian packages:$$missing (their tests will say they are skipped)"; fi; \
	fi

demo: $(VENV)/.installed
	$(PY) tools/demo.py

test: $(VENV)/.installed apt
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check watcher tests tools bench
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) bench/bench_scan.py

samples: $(VENV)/.installed
	$(PY) tools/make_engine_samples.py
	$(PY) tools/update_expected.py

clean:
	rm -rf $(VENV) dist build .pytest_cache .mypy_cache .ruff_cache
