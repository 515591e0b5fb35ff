# Quickstart: `make run` (the default job on the embedded digits dataset) and `make test`.
# Both create .venv if missing and install torch==2.13.0 (unless a torch is already importable
# there, e.g. your own CUDA build) and featdiff itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.featdiff-installed

.PHONY: run test setup benchmark-ldmlr-frozen benchmark-e2e benchmark-privacy benchmark-federated clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --disable-pip-version-check -q torch==2.13.0
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(PY) -m featdiff run configs/digits_ldmlr.yaml

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=15

benchmark-ldmlr-frozen: $(STAMP)
	$(PY) benchmarks/ldmlr_frozen.py

benchmark-e2e: $(STAMP)
	$(PY) benchmarks/e2e.py --phase main
	$(PY) benchmarks/e2e.py --phase ablations
	$(PY) benchmarks/e2e.py --phase best --best ldmlr_refit ldmlr_stale e2e_A
	$(PY) benchmarks/e2e.py --clouds

benchmark-privacy: $(STAMP)
	$(PY) benchmarks/privacy_step_cost.py
	$(PY) benchmarks/privacy.py

benchmark-federated: $(STAMP)
	$(PY) benchmarks/federated.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
