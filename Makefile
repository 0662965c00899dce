# The two commands a newcomer needs: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test install lint demo-reset clean bench browser i18n

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

run: $(STAMP)  ## serve the demo at http://127.0.0.1:8000 (SQLite under ./data)
	$(BIN)/teichaku migrate
	$(BIN)/teichaku demo --if-empty
	@echo "Serving at http://127.0.0.1:8000  (API docs: http://127.0.0.1:8000/docs)"
	$(BIN)/teichaku serve

# The tests' own tools from npm (Prism, the mock of Twilio's API), at the versions pinned in tests/package-lock.json.
NODE_STAMP := tests/node_modules/.installed

$(NODE_STAMP): tests/package.json tests/package-lock.json
	cd tests && npm ci --no-audit --no-fund --ignore-scripts
	@touch $@

# The page tests drive Debian's headless Chromium (tests/web): installed here when it is missing.
browser:
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium chromium-driver)

# One pytest worker per core (pytest-xdist; each worker its own PostgreSQL database). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= auto
test: $(STAMP) $(NODE_STAMP) browser  ## the whole suite, on SQLite and (when it answers) PostgreSQL
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

demo-reset:  ## delete the demo database (asks first)
	@read -p "Delete ./data/teichaku.db and all its data? [y/N] " a && [ "$$a" = y ] && rm -f data/teichaku.db* || echo "kept"

clean:
	rm -rf $(VENV) .pytest_cache tests/artifacts

# Benchmarks (bench/README in bench/run.py): BENCH_SIZE=S (default), M or L (2,000,000 placements;
# PostgreSQL, queue and retention: BENCH_ARGS='--only queue,retention'); BENCH_DB=sqlite,postgres.
# Writes bench/results/<timestamp>.json and bench/results/summary.md. Needs PostgreSQL on 127.0.0.1
# (or BENCH_PG_URL) for the PostgreSQL half.
BENCH_DB ?= sqlite,postgres
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.run --db $(BENCH_DB) $(BENCH_ARGS)

# The pages' translations (service/web/locale, Babel): extract every _() / N_() / NP_() of service/ (python
# and templates, babel.cfg) into messages.pot, merge it into the ja and en catalogs, compile them. Then fill
# every empty or fuzzy ja msgstr (en may stay empty: the msgid is English); tests/web/test_i18n.py checks.
LOCALE := service/web/locale
i18n: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k N_ -k NP_:1c,2 --no-wrap --sort-by-file \
		-o $(LOCALE)/messages.pot .
	$(BIN)/pybabel update -i $(LOCALE)/messages.pot -d $(LOCALE) --no-wrap --ignore-pot-creation-date
	$(BIN)/pybabel compile -d $(LOCALE) --statistics
