# dvp-gateway. `make test` works from a clean clone: it creates the venv and installs what the
# tests need, and is a no-op install the second time (stamps track pyproject/package-lock).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY_STAMP  := $(VENV)/.installed
NPM_STAMP := solidity/node_modules/.installed
ANVIL_STAMP := tools/anvil/node_modules/.installed
XDIST  ?= 2

.PHONY: install test test-postgres contracts contracts-check bench lint run demo swap devnet clean

install: $(PY_STAMP) $(NPM_STAMP) $(ANVIL_STAMP)

$(PY_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Pinned solc and OpenZeppelin Contracts from solidity/package-lock.json.
$(NPM_STAMP): solidity/package.json solidity/package-lock.json
	cd solidity && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Pinned anvil (the real node of the anvil tests and `make devnet`) from tools/anvil/package-lock.json.
# The binary ships in the platform package; the wrapper's postinstall (a download) is not needed.
$(ANVIL_STAMP): tools/anvil/package.json tools/anvil/package-lock.json
	cd tools/anvil && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	tools/anvil/node_modules/.bin/anvil --version | grep -q 'Version: 1.7.1'
	touch $@

test: $(PY_STAMP) $(ANVIL_STAMP)
	$(BIN)/python -m pytest -n $(XDIST) -p no:cacheprovider --durations=15

# The same suite on PostgreSQL: a throwaway cluster on loopback (scripts/pg-cluster), one new
# database per test. Needs PostgreSQL's server binaries (Debian: apt-get install postgresql).
test-postgres: $(PY_STAMP) $(ANVIL_STAMP)
	scripts/pg-cluster run -- $(BIN)/python -m pytest -n $(XDIST) -p no:cacheprovider --durations=15

# Recompile solidity/ into the committed artifacts.
contracts: $(NPM_STAMP)
	node solidity/compile.mjs

# Fail if compiling from scratch with the pinned compiler changes any committed artifact.
contracts-check: $(NPM_STAMP)
	node solidity/compile.mjs >/dev/null
	git diff --exit-code --stat -- gateway/contracts/artifacts tests/contracts/artifacts

# With PostgreSQL's server binaries at hand, the anvil part runs on PostgreSQL too.
bench: $(PY_STAMP) $(ANVIL_STAMP)
	if scripts/pg-cluster available 2>/dev/null; then scripts/pg-cluster run -- $(BIN)/python bench/run.py; else $(BIN)/python bench/run.py; fi

lint: $(PY_STAMP)
	$(BIN)/ruff check gateway tests bench

devnet: $(PY_STAMP) $(ANVIL_STAMP)
	$(BIN)/dvp-gateway devnet

run: $(PY_STAMP)
	$(BIN)/dvp-gateway run

# Drives the gateway `make run` started (http://127.0.0.1:8000, keys from .dvp/demo.json);
# if none is running it says so (`dvp-gateway demo --own-gateway` starts one of its own).
demo: $(PY_STAMP)
	$(BIN)/dvp-gateway demo

swap: $(PY_STAMP)
	$(BIN)/dvp-gateway swap

clean:
	rm -rf $(VENV) solidity/node_modules tools/anvil/node_modules .pytest_cache
