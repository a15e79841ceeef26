# chatusage: `make run` serves the app, `make test` runs every test. Nothing else needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PG_URL ?= postgres://postgres@127.0.0.1:5432/test
HOST ?= 127.0.0.1
PORT ?= 8000
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_WORKERS ?= 2

.PHONY: install run test test-sqlite test-postgres lint browser bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Serve on SQLite with the offline demo model and demo users (see README). ASGI, as in
# production, so answers stream; --reload restarts on code changes.
run: install
	DEBUG=true $(BIN)/python manage.py migrate --noinput
	DEBUG=true $(BIN)/python manage.py seed_demo
	DEBUG=true $(BIN)/uvicorn chatusage.asgi:application --host $(HOST) --port $(PORT) --reload

# Debian's Chromium and ChromeDriver for the browser tests (Playwright drives it).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "Installing Debian's chromium for the browser tests"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Everything, browser and real-server tests included (those use PostgreSQL themselves).
test-sqlite: install browser
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

# The budget guarantees need real row locks: run everything again on PostgreSQL
# when it answers on 127.0.0.1:5432.
test-postgres: install
	@if $(BIN)/python -c "import psycopg; psycopg.connect('$(PG_URL)', connect_timeout=3).close()" 2>/dev/null; then \
		DATABASE_URL=$(PG_URL) $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not e2e"; \
	else \
		echo "PostgreSQL is not answering at $(PG_URL): skipped the PostgreSQL run."; \
	fi

test: lint test-sqlite test-postgres

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
