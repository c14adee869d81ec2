# mkviz: `make demo` runs the main job, `make test` runs the tests; both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test lab bench-params clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: install
	$(BIN)/mkviz demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lab: install
	$(BIN)/jupyter lab notebooks/

bench-params: install
	$(BIN)/python -m mkviz.bench params

clean:
	rm -rf $(VENV) outputs .pytest_cache
