# Newcomer entry points: `make serve` starts the service standalone, `make test` runs the
# whole suite. `make setup` is idempotent and cheap when nothing is missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export SSL_CERT_FILE ?= /etc/ssl/certs/ca-certificates.crt
export UV_PYTHON_DOWNLOADS := never
# Debian's interpreter: readable by every user (the daemon may run unprivileged), and the
# same one the container image uses.
export UV_PYTHON := /usr/bin/python3
PYTEST_ARGS ?=

.PHONY: setup serve test test-nopool lint typecheck bench clean image image-test

setup: $(VENV)/.synced
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq bubblewrap)); \
	  else echo "bubblewrap is missing: run  sudo apt-get install -y bubblewrap"; exit 1; fi; }
	@test -x /usr/bin/python3 -a -x /usr/bin/node || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq python3 nodejs >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq python3 nodejs)); \
	  else echo "python3/node missing: run  sudo apt-get install -y python3 nodejs"; exit 1; fi; }

$(VENV)/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || test -x "$(UV)" || python3 -m pip install -q --user uv || python3 -m pip install -q uv
	"$$(command -v uv || echo $(UV))" sync --frozen -q
	@touch $@

serve: setup
	mkdir -p var/workspace var/results
	@if [ "$$(id -u)" = 0 ]; then chown 65534:65534 var/workspace; fi
	WORKSPACE_PATH=$(CURDIR)/var/workspace RESULTS_DIR=$(CURDIR)/var/results \
	  $(VENV)/bin/sandbox-executor serve

# Passes: everything cold (no warm pool anywhere); the engine, API and security suites
# again with every execution in a pre-started sandbox; the security suite with the daemon
# itself unprivileged; then the security suite at the weaker isolation levels
# (docs/SECURITY.md): bwrap-compat, and landlock with the daemon unprivileged (what the
# control plane's Docker containers get), without the modules that test the daemon's own
# parsing, the same at every level.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
LEVEL_PASS := tests/security --ignore=tests/security/test_inputs.py --ignore=tests/security/test_result_channel.py
test: setup
	SANDBOX_TEST_WARM_POOL=0 $(PYTEST) $(PYTEST_ARGS)
	SANDBOX_TEST_WARM_POOL=1 $(PYTEST) tests/integration/test_engine_*.py tests/integration/test_api.py tests/integration/test_live_output.py tests/security
	SECURITY_DAEMON_USER=nobody $(PYTEST) tests/security
	SANDBOX_TEST_ISOLATION=bwrap-compat $(PYTEST) $(LEVEL_PASS)
	SANDBOX_TEST_ISOLATION=landlock SECURITY_DAEMON_USER=nobody $(PYTEST) $(LEVEL_PASS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts/image_test
	$(VENV)/bin/mypy
	MYPYPATH=scripts:. $(VENV)/bin/mypy scripts/image_test

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

-include mk/image.mk
