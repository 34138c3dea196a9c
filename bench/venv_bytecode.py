"""Benchmark: what it costs a gated command (publish, submit) to run only bytecode it can vouch for.

Python runs a module's `__pycache__` file instead of its source whenever the header matches, and RECORD lists those
caches without a hash (policies/bytecode.py). Two ways to make sure a forged cache does not run, timed in one run on
the project's own venv:
- scan (the previous gate): every cache of the venv compiled again from its source and compared
  (`policies.venv_integrity._check_bytecode`, worker processes as in the gate);
- no-read (what the gated commands do now): the command's imports compiled from source, measured as a fresh
  interpreter importing what `oracle hub publish` imports with `PYTHONPYCACHEPREFIX` under /dev/null, against the
  same interpreter reading the caches (the baseline).
Also timed: the RECORD hash check of every installed file (`_check_records`), which every gate with the venv policy
runs. Ratios are against the baseline import of the same run.

Usage: python bench/venv_bytecode.py [--repeats N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from policies import venv_integrity  # noqa: E402
from policies.bytecode import NO_BYTECODE_PREFIX  # noqa: E402

# What `oracle hub publish` imports by the time its gate has run (the heaviest gated command's dependencies).
IMPORTS = (
    "import torch, transformers, huggingface_hub, safetensors, pydantic, oracle_cli.app, guards.runner, hub.publish"
)


def _import_seconds(read_bytecode: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONPYCACHEPREFIX", None)
    if not read_bytecode:
        env.update(PYTHONPYCACHEPREFIX=NO_BYTECODE_PREFIX, PYTHONDONTWRITEBYTECODE="1")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], env=env, check=True, cwd=ROOT)
    return time.perf_counter() - start


def _timed(work: object) -> float:
    start = time.perf_counter()
    work()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prefix = Path(sys.prefix).resolve()
    site = venv_integrity.site_packages(prefix)[0]
    distributions, _ = venv_integrity.read_distributions(site, ROOT)
    caches = sum(1 for cache in site.rglob("__pycache__") for _ in cache.glob(f"*.{sys.implementation.cache_tag}*.pyc"))
    _import_seconds(True)  # warm the page cache for both ways alike
    baseline, no_read, scan, records = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so that drift in the machine's load hits all alike
        baseline.append(_import_seconds(True))
        no_read.append(_import_seconds(False))
        records.append(_timed(lambda: venv_integrity._check_records(site, prefix, distributions)))
    for _ in range(max(1, args.repeats // 2)):
        scan.append(_timed(lambda: venv_integrity._check_bytecode(site, prefix)))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "caches_in_venv": caches,
        "files_hashed": sum(len(dist.hashed) for dist in distributions),
        "baseline_import_s": statistics.median(baseline),
        "no_read_import_s": statistics.median(no_read),
        "scan_s": statistics.median(scan),
        "records_s": statistics.median(records),
    }
    result["no_read_extra_s"] = result["no_read_import_s"] - result["baseline_import_s"]
    result["no_read_ratio"] = result["no_read_import_s"] / result["baseline_import_s"]
    result["scan_ratio"] = (result["scan_s"] + result["baseline_import_s"]) / result["baseline_import_s"]
    for key, value in result.items():
        print(f"{key:>20}: {value:.2f}" if isinstance(value, float) else f"{key:>20}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
