"""vlmtune's performance suite (issue 6): every figure as a ratio against a reference measured in the same run.

    python -m benchmarks.run                  # from the repository root: full, ~15 minutes on 2 shared cores
    python -m benchmarks.run --quick          # smaller sizes and fewer repeats, ~3-5 minutes
    python -m benchmarks.run --only startup,loader
    nox -s bench [-- --quick]

Measurements (the issue's numbering), one module each in this package with a `measure(suite)`: 1 startup,
2 loader, 3 training, 4 padding, 5 generation, 6 resume, 7 memory. All run on this machine's CPU with the built-in
tiny Qwen2-VL (its processor and tokenizer do the real per-image and per-token work; only the model is tiny). Timed
figures are medians of repeats, the measured run and its reference taken in turns so the load of a shared machine
hits both alike. Prints each figure and writes benchmarks/RESULTS.md (machine, versions, figures). A benchmark, not
a test: it never fails on a slow machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

# In the order; each names a module of this package. Packing (bench_packing.py) is not one of them: it
# writes its own table (five settings, three goals each) as a section of RESULTS.md, not figure rows.
MEASUREMENTS = ("startup", "loader", "training", "padding", "generation", "resume", "memory")


def main() -> None:
    if not __package__:  # `python benchmarks/run.py`: the package-relative imports below need `-m`
        sys.exit("run the suite from the repository root as a module: python -m benchmarks.run [--quick]")
    from .suite import HERE, REPO, Suite, write_results

    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (~3 minutes)")
    parser.add_argument(
        "--only", default=",".join(MEASUREMENTS), help=f"comma-separated subset of {', '.join(MEASUREMENTS)}"
    )
    parser.add_argument("--repeats", type=int, default=0, help="repeats per timed figure (default 3, quick 2)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/OpenMP threads in every process (default 1: on a shared machine more threads spin "
        "against other jobs; a training step took 0.28 s with 2 threads vs 0.045 s with 1)",
    )
    args = parser.parse_args()
    chosen = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown measurement(s) {', '.join(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    args.out = args.out.resolve()  # the measurements run in a scratch directory
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.threads:  # before torch is imported here or in any subprocess
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="vlmtune-bench-") as tmp:
        work = Path(tmp)
        # A scratch workspace: its own cache (the tiny model is built there) and runs directory.
        os.environ["VLMTUNE_CACHE_DIR"] = str(work / "cache")
        os.environ["VLMTUNE_RUNS_DIR"] = str(work / "runs")
        os.chdir(work)
        suite = Suite(args.quick, args.repeats or (2 if args.quick else 3), work)
        for number, name in enumerate(MEASUREMENTS, 1):
            if name in chosen:
                print(f"--- {number}. {name}", flush=True)
                importlib.import_module(f"{__package__}.{name}").measure(suite)
        os.chdir(REPO)
    write_results(
        suite, args.out, (load_start, " ".join(f"{x:.1f}" for x in os.getloadavg())), time.perf_counter() - started
    )


if __name__ == "__main__":
    main()
