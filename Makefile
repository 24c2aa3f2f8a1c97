# Two entry points, both from a fresh clone with Python 3.11:
#   make demo   set up, then build and serve the bundled example model
#   make test   set up, then run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test demo example bench clean

venv: $(STAMP)

# torch is installed first and alone: pinned, it takes the CPU wheel instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml predictors/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r predictors/requirements.txt -e '.[test]'
	touch $@

test: venv
	$(BIN)/python -m pytest

demo: venv
	$(BIN)/lmtp-cog demo

# examples/tiny/model, the bundled example's tiny checkpoint (made offline; not in git).
example: venv
	$(BIN)/lmtp-cog demo --checkpoint-only

bench: venv
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) work
