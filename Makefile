# The README names two commands: `make demo` and `make test`. Both create/refresh .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; override (e.g. TORCH_SPEC="torch --index-url ...") on other machines.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,onnx,openvino,hf,serve,pdf
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: venv demo test lint format bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# The embedded default, offline on the CPU. Its 14 minutes count from make's own start, so creating
# .venv on a fresh clone (~3 min on the slowest machine measured) comes out of them and the whole
# run stays within 15; DEMO_ARGS="--minutes 5 --out other" to change.
DEMO_START := $(shell date +%s)
DEMO_ARGS ?= --minutes 14 --started $(DEMO_START)
demo: venv
	$(BIN)/trocr-tune demo $(DEMO_ARGS)

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy src

format: venv
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
