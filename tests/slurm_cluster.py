"""Helpers for tests that need a real SLURM cluster (the local one from `scripts/local-slurm.sh`).

Usage in a test module::

    import pytest
    from .slurm_cluster import pickle_by_value, requires_slurm, submitit_folder

    pytestmark = [pytest.mark.slurm, requires_slurm]
    pickle_by_value(__name__)   # the job's Python cannot import this test module: ship its functions by value

    def add(a, b):
        return a + b

    def test_add(tmp_path):
        import submitit
        ex = submitit.AutoExecutor(folder=submitit_folder(tmp_path), slurm_max_num_timeout=3)
        ex.update_parameters(timeout_min=2, slurm_partition="debug")
        assert ex.submit(add, 2, 3).result() == 5

(`tests/` is a package; without its `__init__.py` it would be `from slurm_cluster import ...`.)

Such tests are skipped, with the reason below, when no cluster answers. Start one with
`bash scripts/local-slurm.sh start` (root, Debian 12; see scripts/LOCAL-SLURM.md).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = [
    "NO_CLUSTER_REASON",
    "cluster_available",
    "pickle_by_value",
    "requires_slurm",
    "sacct_state",
    "submitit_folder",
]

NO_CLUSTER_REASON = "no SLURM cluster running: start one with `bash scripts/local-slurm.sh start`"


@functools.lru_cache(maxsize=1)
def cluster_available() -> bool:
    """True when `sbatch` is on PATH and `sinfo -h` answers (exit 0) within 5 s.

    Cached for the test session: it is evaluated once, when a module using `requires_slurm` is imported.
    """
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        proc = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


requires_slurm = pytest.mark.skipif(not cluster_available(), reason=NO_CLUSTER_REASON)


def submitit_folder(tmp_path: Path) -> Path:
    """A fresh submitit log folder inside pytest's `tmp_path`.

    One folder per test: submitit finds results by job id (`<id>_0_result.pkl`), so a folder shared between
    tests (or reused after the cluster's state was purged) can hand back another job's stale result.
    """
    folder = Path(tmp_path) / "submitit"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sacct_state(job_id: str | int) -> str:
    """State of a job's allocation as `sacct` reports it ("" while accounting has not recorded it yet).

    Fresher than submitit's `job.state`, which is cached (use `job.get_info(mode="force")` there).
    "CANCELLED by 0" is returned as "CANCELLED".
    """
    proc = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return lines[-1].split()[0] if lines else ""


def pickle_by_value(module_name: str) -> None:
    """Make submitit (cloudpickle) pickle the functions and classes of `module_name` by value.

    A SLURM job unpickles its function in a fresh `python -m submitit.core._submit`, whose sys.path lacks what
    pytest added: a function defined in a test module can fail there with `ModuleNotFoundError: No module
    named 'test_...'` (the job ends FAILED; seen with a rootdir-less `tests/`; `tests.test_x` imports only while
    the job's working directory is the repository root). Call `pickle_by_value(__name__)` at the top of such a
    test module. Functions from installed packages (vlmtune_cli, the stdlib) need nothing.
    """
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[module_name])
