# Set-up and the two everyday commands. `make test` and `make quickstart` create .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only machines (no nvidia-smi): pin torch/torchvision to the local CPU pair, see constraints-cpu.txt.
CONSTRAINT := $(if $(shell command -v nvidia-smi 2>/dev/null),,PIP_CONSTRAINT=$(CURDIR)/constraints-cpu.txt)
QUICKSTART_OUT ?= runs/quickstart

.PHONY: test quickstart install clean-venv

$(VENV)/.installed: pyproject.toml constraints-cpu.txt scripts/torchvision_cpu_shim.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(CONSTRAINT) $(PY) -m pip install --quiet --upgrade pip
	$(CONSTRAINT) $(PY) -m pip install --quiet "torch==2.13.0" "torchvision==0.28.0"
	$(CONSTRAINT) $(PY) -m pip install --quiet -e ".[dev,eval]"
	$(PY) scripts/torchvision_cpu_shim.py
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider tests

quickstart: $(VENV)/.installed
	$(PY) -m multimeditron quickstart --out $(QUICKSTART_OUT)

clean-venv:
	rm -rf $(VENV)
