# Two front doors: `make guards` (the main job) and `make test` (lint, typecheck, tests).
# Both build .venv from requirements.lock when it is missing or the lock changed, then run nox inside it.
# nox is only the task runner here: it uses .venv and never builds virtualenvs of its own.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.requirements.lock.sha256
# Where the lock's local torch CPU wheel lies on these machines (only `make lock` needs it).
TORCH_WHEELS ?= /opt/wheels
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

.PHONY: venv guards test lint typecheck bench lock clean

venv:
	@want=$$(sha256sum requirements.lock | cut -d' ' -f1); \
	have=$$(cat $(STAMP) 2>/dev/null); \
	if [ "$$want" != "$$have" ]; then \
		echo "Building $(VENV) from requirements.lock ($$want)"; \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) && \
		$(VENV)/bin/python -m pip install --quiet --require-hashes -r requirements.lock && \
		$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e . && \
		echo "$$want" > $(STAMP) || { rm -f $(STAMP); exit 1; }; \
	fi

guards: venv
	$(VENV)/bin/nox -s guards

test: venv
	$(VENV)/bin/nox -s lint typecheck tests

lint: venv
	$(VENV)/bin/nox -s lint

typecheck: venv
	$(VENV)/bin/nox -s typecheck

bench: venv
	$(VENV)/bin/nox -s bench

# Regenerate the locks from their declared input, pyproject.toml. requirements.lock: the dependencies, the `runtime`
# extra and the `dev` extra (stamped with the extras policies.toml's venv.lock_extras names, which the venv policy
# checks). requirements-gates.lock: the dependencies alone (the policy gates: what the pre-commit hook installs),
# for every platform, since other repositories' developers run the hook.
lock: venv
	$(VENV)/bin/uv pip compile pyproject.toml --extra runtime --extra dev --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) --no-emit-find-links -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --universal --python-version 3.11 \
		--no-emit-find-links -o requirements-gates.lock
	$(VENV)/bin/python -c 'from policies.lockfile import stamp_lock; from policies.settings import load_settings; \
		from pathlib import Path; pyproject = Path("pyproject.toml"); \
		stamp_lock(Path("requirements.lock"), pyproject, load_settings(Path(".")).venv.lock_extras); \
		stamp_lock(Path("requirements-gates.lock"), pyproject, [])'

clean:
	rm -rf $(VENV) .nox .mypy_cache .pytest_cache .ruff_cache
