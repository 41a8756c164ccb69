# The two fresh-machine commands (README): `make demo` and `make test`.
# CPU machines get the local CPU wheel of torch through constraints/cpu.txt; GPU clusters install
# with `pip install -e .[sglang]` and their own CUDA torch instead.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export DS_ACCELERATOR ?= cpu
export PYTHONWARNINGS ?= ignore::FutureWarning

.PHONY: install sglang chromium demo test test-fast ops clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, from the CPU constraint, so no dependency can pull a CUDA build.
	$(BIN)/pip install --quiet -c constraints/cpu.txt torch
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet -c constraints/cpu.txt -e '.[test,mpich]'
	touch $(STAMP)

install: $(STAMP)

# Real SGLang on CPU, in a venv of its own, for the tests that talk to SGLang itself (tools/sglang_venv.sh).
SGLANG_VENV ?= .venv-sglang
SGLANG_STAMP := $(SGLANG_VENV)/.installed
$(SGLANG_STAMP): constraints/sglang-cpu.txt tools/sglang_venv.sh $(wildcard tools/sglang_cpu/*.py tools/sglang_cpu/*/*.py)
	tools/sglang_venv.sh $(SGLANG_VENV)
	touch $(SGLANG_STAMP)

sglang: $(SGLANG_STAMP)

# DeepSpeed JIT-builds its CPU communication op on first use (~40 s); build it once, cached in .venv/torch_extensions
# by the venv's ninja (one build per checkout: apr_ds.learner.engine.use_venv_for_jit_builds).
# A lock left behind by a killed process is removed first (apr_ds.learner.engine.remove_stale_build_lock).
ops: install
	$(BIN)/python -c "from apr_ds.learner.engine import build_comm_op; build_comm_op()" >/dev/null

# Headless Chromium for the trace viewer's browser tests (tests/browser.py): Debian's package, no browser download;
# a font so that screenshots show text.
chromium:
	tools/apt_install.sh chromium fonts-liberation

demo: install ops
	$(BIN)/apr-ds demo

# The SGLang and browser tests are part of the suite: with APR_SGLANG_PYTHON and APR_REQUIRE_CHROMIUM set they fail,
# not skip, if SGLang or Chromium is missing.
test: install ops sglang chromium
	APR_SGLANG_PYTHON=$(abspath $(SGLANG_VENV))/bin/python APR_REQUIRE_CHROMIUM=1 $(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(SGLANG_VENV) runs .pytest_cache .hypothesis
