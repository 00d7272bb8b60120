"""Run `vlmtune train ARGS...` and exit at the first optimizer step (a subprocess of the resume measurement, resume.py).

    BENCH_T0=<time.time() before the process started> BENCH_OUT=<file> python -m benchmarks.resume_probe train ...

(with the repository root as working directory or on PYTHONPATH: resume.py passes it on PYTHONPATH).

Writes one JSON line to BENCH_OUT: the step reached, seconds from BENCH_T0 to the end of that step, and how many
samples the data loader built before it (a trainer that replays skipped batches would build all of them).
Nothing else changes in the command: it is the real CLI path (recipe, cache, model, trainer, resume).
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    t0 = float(os.environ["BENCH_T0"])
    out = os.environ["BENCH_OUT"]
    from vlmtune_cli.encode import inputs
    from vlmtune_cli.train import trainer

    loaded = [0]
    original_call = inputs.ModelInputs.__call__

    def counting_call(self, batch):  # type: ignore[no-untyped-def]
        if "images" in batch:
            loaded[0] += len(batch["images"])
        return original_call(self, batch)

    inputs.ModelInputs.__call__ = counting_call
    original_build = trainer.build_trainer

    def build(*args, **kwargs):  # type: ignore[no-untyped-def]
        from transformers import TrainerCallback

        built = original_build(*args, **kwargs)

        class FirstStep(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                with open(out, "w") as handle:
                    handle.write(
                        json.dumps(
                            {"step": state.global_step, "seconds": time.time() - t0, "samples_loaded": loaded[0]}
                        )
                        + "\n"
                    )
                os._exit(0)

        built.add_callback(FirstStep())
        return built

    trainer.build_trainer = build
    from vlmtune_cli.cli import main as cli_main

    sys.argv = ["vlmtune", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
