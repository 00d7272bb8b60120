"""Measurement 6, resume cost: `vlmtune train` (the real CLI) from process start to the first resumed step, from a
late checkpoint against an early one (`resume_probe.py` in a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from .suite import SMOKE, Figure, Suite, median, module_env


def measure(suite: Suite) -> None:
    late = 100 if suite.quick else 1000
    early = 10
    runs_dir = suite.work / "resume-runs"
    # Both subprocesses below get the repository on PYTHONPATH (the probe runs as `-m benchmarks.resume_probe`), so
    # they import the same vlmtune_cli.
    env = module_env({**os.environ, "VLMTUNE_RUNS_DIR": str(runs_dir)})
    # Steps per epoch: samples / 4; both resume points fall inside an epoch, the late one with many batches to skip.
    samples = 440 if suite.quick else 1600
    per_epoch = samples // 4
    sets = [
        f"data.num_samples={samples}",
        f"data.max_samples={samples}",
        "data.split_ratio=1.0",
        "training.batch_size=4",
        f"training.max_steps={late + 20}",
        f"training.save_steps={early}",
        f"training.save_total_limit={late}",
        "training.report_to=['none']",
        "training.logging_steps=50",
        "variant=resume-bench",
    ]
    argv = ["train", str(SMOKE)] + [x for s in sets for x in ("--set", s)]
    # The whole run up to step `late`, saving every `early` steps.
    stop = [
        sys.executable,
        "-c",
        "import sys; from transformers import TrainerCallback; from vlmtune_cli.train import trainer as T\n"
        "b = T.build_trainer\n"
        f"class S(TrainerCallback):\n"
        f"    def on_step_end(self, a, s, c, **k):\n"
        f"        c.should_training_stop = s.global_step >= {late}\n"
        "def build(*a, **k):\n    t = b(*a, **k); t.add_callback(S()); return t\n"
        "T.build_trainer = build\nfrom vlmtune_cli.cli import main\n"
        "sys.argv = ['vlmtune', *sys.argv[1:]]\nmain()",
        *argv,
    ]
    started = time.perf_counter()
    subprocess.run(stop, check=True, capture_output=True, env=env)
    suite.note(f"resume: trained the run to step {late} in {time.perf_counter() - started:.0f} s")
    run = runs_dir / "resume-bench"
    source = suite.work / "resume-source"
    shutil.move(run, source)

    def probe(step: int) -> dict:
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(
            source,
            run,
            ignore=lambda d, names: [
                x for x in names if x.startswith("checkpoint-") and x != f"checkpoint-{step}" or x == "final"
            ],
        )
        out = suite.work / "probe.json"
        out.unlink(missing_ok=True)
        t0 = time.time()
        subprocess.run(
            [sys.executable, "-m", "benchmarks.resume_probe", *argv],
            check=True,
            capture_output=True,
            env={**env, "BENCH_T0": repr(t0), "BENCH_OUT": str(out)},
        )
        return json.loads(out.read_text())

    times: dict[int, list[float]] = {early: [], late: []}
    loaded: dict[int, int] = {}
    for _ in range(max(2, suite.repeats)):
        for step in (early, late):
            got = probe(step)
            assert got["step"] == step + 1, got
            times[step].append(got["seconds"])
            loaded[step] = got["samples_loaded"]
    a, b = median(times[late]), median(times[early])
    # Met: no skipped batch is loaded again, and the time is the same within the noise of a shared machine.
    flat = loaded[late] == loaded[early] and a / b <= 1.2
    suite.add(
        Figure(
            6,
            f"resume: process start to first resumed step, at step {late}",
            f"{a:.2f} s",
            f"at step {early} {b:.2f} s",
            a / b,
            "≈ 1 (must not grow with the step)",
            flat,
            [
                f"samples the loader built before the first resumed step: {loaded[late]} at step {late} "
                f"({late % per_epoch} batches of 4 to skip in its epoch), {loaded[early]} at step {early} "
                f"({early % per_epoch} to skip)"
            ],
        )
    )
