# Two front doors: `make guards` (the main job) and `make test` (lint, typecheck, tests).
# Both build .venv from this machine's lock when it is missing or the lock changed, then run nox inside it.
# nox is only the task runner here: it uses .venv and never builds virtualenvs of its own.

PYTHON ?= python3
VENV := .venv
# The lock this machine installs: requirements-gpu.lock where an NVIDIA driver is found (/proc/driver/nvidia/version
# or nvidia-smi on PATH), requirements.lock elsewhere (CI included); ORACLE_ACCELERATOR=cpu|cuda overrides.
# policies/lockfile.py decides, the same code the venv policy asks, run isolated (nothing of .venv imported).
MACHINE := $(shell ORACLE_ACCELERATOR=$(ORACLE_ACCELERATOR) $(PYTHON) -I -S policies/lockfile.py machine)
ifeq ($(words $(MACHINE)),2)
ACCELERATOR := $(word 1,$(MACHINE))
LOCK := $(word 2,$(MACHINE))
else
$(error cannot tell which lock this machine installs (policies/lockfile.py machine said "$(MACHINE)"))
endif
CPU_LOCK := requirements.lock
GPU_LOCK := requirements-gpu.lock
# `<sha256>  <lock>` (sha256sum's own line) of the lock .venv was built from; a stamp written before the GPU lock
# existed holds the digest alone. Only a hint for make: what .venv holds is checked file for file by the venv policy.
STAMP := $(VENV)/.requirements.lock.sha256
# The registry the GPU lock resolves from.
GPU_INDEX := https://pypi.org/simple
# The training image `make image` builds from the GPU lock: policies.toml's cluster.image_repository, tagged
# lock-<sha256[:16]> of requirements-gpu.lock by infra.spec.image_for, the name the Kubernetes and Argo specs run.
IMAGE = $(shell $(VENV)/bin/python -c 'from pathlib import Path; from infra.spec import image_for; \
	from policies.settings import load_settings; print(image_for(Path("."), load_settings(Path("."))))')
CONTAINER ?= $(firstword $(shell command -v podman buildah docker 2>/dev/null))
# Where the lock's local torch CPU wheel lies on these machines (only `make lock` needs it).
TORCH_WHEELS ?= /opt/wheels
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

.PHONY: venv guards test lint typecheck docs bench lock image image-name clean

venv:
	@want=$$(sha256sum $(LOCK) | cut -d' ' -f1); \
	have=$$(cut -d' ' -f1 $(STAMP) 2>/dev/null); \
	if [ "$$want" != "$$have" ]; then \
		echo "Building $(VENV) from $(LOCK) ($$want, $(ACCELERATOR))"; \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) && \
		if [ "$(LOCK)" = $(GPU_LOCK) ]; then \
			$(VENV)/bin/python -m pip install --quiet --require-hashes -r requirements-gpu.lock; \
		else \
			$(VENV)/bin/python -m pip install --quiet --require-hashes -r requirements.lock; \
		fi && \
		$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e . && \
		echo "$$want  $(LOCK)" > $(STAMP) || { rm -f $(STAMP); exit 1; }; \
	fi

guards: venv
	$(VENV)/bin/nox -s guards

test: venv
	$(VENV)/bin/nox -s lint typecheck docs tests

lint: venv
	$(VENV)/bin/nox -s lint

typecheck: venv
	$(VENV)/bin/nox -s typecheck

docs: venv
	$(VENV)/bin/nox -s docs

bench: venv
	$(VENV)/bin/nox -s bench

# Regenerate the locks from their declared input, pyproject.toml. requirements.lock: the dependencies, the `runtime`
# extra and the `dev` extra (stamped with the extras policies.toml's venv.lock_extras names, which the venv policy
# checks). requirements-gpu.lock: the same requirements for CUDA machines, resolved from PyPI alone (its torch is the
# CUDA build, with the nvidia-* libraries it depends on), every other pin held to requirements.lock's by constraints;
# uv reads the index's metadata and hashes, it downloads no wheel. flash-attn is in neither: PyPI has no wheel of it
# (a source build needs nvcc), so attention uses torch's own flash SDPA kernel. requirements-gates.lock: the
# dependencies alone (the policy gates: what the pre-commit hook installs), for every platform, since other
# repositories' developers run the hook.
lock: venv
	$(VENV)/bin/uv pip compile pyproject.toml --extra runtime --extra dev --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) --no-emit-find-links -o $(CPU_LOCK)
	mkdir -p .oracle && $(VENV)/bin/python -I -S policies/lockfile.py pins $(CPU_LOCK) --except torch \
		> .oracle/cpu-lock-pins.txt
	env -u UV_INDEX -u UV_INDEX_URL -u UV_EXTRA_INDEX_URL -u UV_DEFAULT_INDEX -u UV_FIND_LINKS \
		$(VENV)/bin/uv pip compile pyproject.toml --extra runtime --extra dev --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-config --default-index $(GPU_INDEX) \
		--constraint .oracle/cpu-lock-pins.txt -o $(GPU_LOCK)
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --universal --python-version 3.11 \
		--no-emit-find-links -o requirements-gates.lock
	$(VENV)/bin/python -c 'from policies.lockfile import stamp_lock; from policies.settings import load_settings; \
		from pathlib import Path; pyproject = Path("pyproject.toml"); \
		extras = load_settings(Path(".")).venv.lock_extras; \
		stamp_lock(Path("$(CPU_LOCK)"), pyproject, extras); stamp_lock(Path("$(GPU_LOCK)"), pyproject, extras); \
		stamp_lock(Path("requirements-gates.lock"), pyproject, [])'

# The training image, built from requirements-gpu.lock by the Containerfile and named as the specs name it.
image-name:
	@echo "$(IMAGE)"

image:
	@test -n "$(CONTAINER)" || { echo "no container builder (podman, buildah or docker) on PATH"; exit 1; }
	$(CONTAINER) build -f Containerfile -t "$(IMAGE)" .

clean:
	rm -rf $(VENV) .nox .mypy_cache .pytest_cache .ruff_cache
