# The README's commands. Every target sets up what it needs on a fresh machine.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
# Two workers (the machine's two cores), a test file per worker so that module-scoped
# brokers and databases are set up once; the slowest tests are listed at the end.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15

.PHONY: install system-deps idp clients test test-postgres lint format demo bench completions clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

# OpenSSH server and client, tmux, node/npm: installed with apt when missing and running as root.
system-deps:
	bash scripts/install-system-deps.sh

# The third-party OIDC provider the tests log in against (npm package oidc-provider).
idp: tests/idp/node_modules/.installed

tests/idp/node_modules/.installed: tests/idp/package.json tests/idp/package-lock.json
	cd tests/idp && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The database drivers the native-client tests use from Node.js (pg, mysql2).
clients: tests/node/node_modules/.installed

tests/node/node_modules/.installed: tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# These modules run a second time with every broker on a fresh PostgreSQL database of the
# machine's ([store] url): the store-neutral flows (approvals, sessions, replay, incident
# response, logins, budgets, faults) on the multi-node store too.
POSTGRES_STORE_TESTS ?= tests/test_approvals_sql.py tests/test_approve_queue.py \
	tests/test_sessions_cli.py tests/test_replay_cli.py tests/test_incident_response.py \
	tests/test_sql_shell_approvals.py tests/test_login_dev.py tests/test_budgets.py \
	tests/test_agent_login.py tests/test_session_faults.py

test: install system-deps idp clients
	@start=$$(date +%s); $(PY) -m pytest $(PYTEST_ARGS) \
	&& HOOP_TEST_STORE=postgres $(PY) -m pytest -n 2 --dist loadfile $(POSTGRES_STORE_TESTS); \
	status=$$?; echo "make test: $$(( $$(date +%s) - start )) s"; exit $$status

test-postgres: install system-deps idp clients
	HOOP_TEST_STORE=postgres $(PY) -m pytest -n 2 --dist loadfile $(POSTGRES_STORE_TESTS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: install
	bash scripts/demo.sh

# Every benchmark in turn; each prints its figures (bench/README.md has a recent run).
BENCHES ?= cli login terminal sql masking approvals replay session_search audit_sinks line_editor
bench: install system-deps idp
	for b in $(BENCHES); do $(PY) -m bench.$$b || exit 1; done

completions: install
	$(PY) scripts/gen_completions.py

clean:
	rm -rf $(VENV) .demo tests/idp/node_modules
