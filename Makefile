# Set-up and the two everyday commands. `make test` and `make quickstart` create .venv from the lock when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
# The whole CPU test environment, every package pinned (pip-compile output); `make lock` writes it.
LOCK := requirements-cpu.lock
# Extras compiled into the lock; scripts/check_lock.py reads the same pair.
LOCK_EXTRAS := --extra dev --extra eval
PIP_TOOLS := pip-tools==7.6.2
QUICKSTART_OUT ?= runs/quickstart

.PHONY: test quickstart install lock test-latest clean-venv

# pip takes the CPU torch of the lock from the machine's wheel folder (pip's find-links); nothing is resolved here.
# The project goes in last, without dependencies and with the locked setuptools (no build isolation), so nothing
# outside the lock is installed.
$(VENV)/.installed: pyproject.toml $(LOCK) scripts/torchvision_cpu_shim.py scripts/check_lock.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --require-virtualenv -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) scripts/check_lock.py --installed
	$(PY) scripts/torchvision_cpu_shim.py
	touch $@

install: $(VENV)/.installed

# Lint first (pyproject.toml: ruff's rules, and the import-linter contract that keeps the package's layers one-way).
test: $(VENV)/.installed
	$(PY) scripts/check_lock.py --installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider tests

quickstart: $(VENV)/.installed
	$(PY) -m multimeditron quickstart --out $(QUICKSTART_OUT)

# Rewrite the lock from pyproject.toml: existing pins are kept where they still satisfy it; UPGRADE=1 takes the newest
# releases. constraints-cpu.txt holds torch/torchvision to the CPU pair (the newest torch is a CUDA build).
lock:
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet "$(PIP_TOOLS)"
	CUSTOM_COMPILE_COMMAND="make lock" .venv-lock/bin/pip-compile --quiet --allow-unsafe --strip-extras --build-deps-for editable $(LOCK_EXTRAS) \
	  --constraint constraints-cpu.txt --no-emit-find-links --no-emit-index-url $(if $(UPGRADE),--upgrade) \
	  --output-file $(LOCK) pyproject.toml
	.venv-lock/bin/python scripts/check_lock.py
	rm -rf .venv-lock

# Not part of `make test`: a throwaway environment from the newest releases that pyproject.toml allows (torch held to
# the CPU pair), the suite run there, and how it differs from the lock, to find the next upstream break on purpose.
test-latest:
	rm -rf .venv-latest && python3 -m venv .venv-latest
	PIP_CONSTRAINT=$(CURDIR)/constraints-cpu.txt .venv-latest/bin/python -m pip install --quiet --upgrade \
	  --upgrade-strategy eager -e ".[dev,eval]"
	.venv-latest/bin/python scripts/torchvision_cpu_shim.py
	@echo "--- newest releases vs $(LOCK):"
	.venv-latest/bin/python scripts/check_lock.py --report-installed
	.venv-latest/bin/python -m pytest -q -p no:cacheprovider tests

clean-venv:
	rm -rf $(VENV)
