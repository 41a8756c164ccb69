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

.PHONY: install demo test test-fast ops clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, from the CPU constraint, so no dependency can pull a CUDA build.
	$(BIN)/pip install --quiet -c constraints/cpu.txt torch
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet -c constraints/cpu.txt -e '.[test,mpich]'
	touch $(STAMP)

install: $(STAMP)

# DeepSpeed JIT-builds its CPU communication op on first use (~40 s); build it once, cached in ~/.cache/torch_extensions.
# A process killed while it held the build's lock leaves the lock behind, and every later launch then waits on it
# forever without a word; a build takes under a minute, so a lock older than 10 minutes is such a leftover.
TORCH_EXTENSIONS ?= $(or $(TORCH_EXTENSIONS_DIR),$(HOME)/.cache/torch_extensions)
ops: install
	@find $(TORCH_EXTENSIONS) -path '*deepspeed_shm_comm/lock' -mmin +10 -printf 'removing a stale build lock left by a killed process: %p\n' -delete 2>/dev/null || true
	$(BIN)/python -c "from deepspeed.accelerator import get_accelerator as g; g().create_op_builder('ShareMemCommBuilder').load()" >/dev/null

demo: install ops
	$(BIN)/apr-ds demo

test: install ops
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
