# Two commands a new user needs: `make serve` and `make test`.
# Each creates .venv with the python3 on PATH when missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: serve test lint format model install clean bench-learning bench-learning-ideal browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,loadtest,train,bulk]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/rtim serve $(ARGS)

test: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Debian's chromium, for the dashboard's browser test (tests/integration/test_dashboard_browser.py).
# Installed with apt-get when missing and we are root; otherwise that test skips, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		>/dev/null; } || echo "chromium could not be installed: the dashboard browser test will skip"

# make bench [PROFILES=N] [QUICK=1] [ARGS="--compare-ingress ..."]; see loadtest/README.md
bench: $(STAMP)
	$(PY) -m loadtest.bench $(if $(filter 1 yes true,$(QUICK)),--quick) \
		$(if $(PROFILES),--profiles $(PROFILES)) $(ARGS)

# Adaptive models against an oracle in a simulated world, over the real API (see loadtest/learning.py).
bench-learning: $(STAMP)
	$(PY) -m loadtest.learning $(ARGS)

# Idealised learners (told the world's structure) on the same world: what the target asks.
bench-learning-ideal: $(STAMP)
	$(PY) -m loadtest.learning_ideal $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Rebuild the bundled demo propensity model (deterministic; about a minute).
model: $(STAMP)
	$(PY) -m models.learning.train --simulate 10000 --seed 7 --out models/demo/registry --version v1

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
