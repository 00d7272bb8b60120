"""One trainer per run directory: an exclusive lock next to it, taken by rank 0 for all ranks."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from vlmtune_cli.errors import UsageError
from vlmtune_cli.fsutil import exclusive_lock
from vlmtune_cli.runs import RunDir
from vlmtune_cli.train.ranks import from_rank_zero


@contextlib.contextmanager
def run_dir_lock(run: RunDir) -> Iterator[None]:
    """Hold an exclusive `fcntl.flock` on `<runs_dir>/.<variant>.lock` while training into `run`.

    The lock file sits next to the run directory (so `--overwrite` can delete the directory) and is never
    deleted; the kernel drops the lock when its holder exits however it exits, so a crash leaves nothing
    stuck. Under torch.distributed only rank 0 (env `RANK`) takes it: the other ranks train the same run, and
    learn from rank 0 when it could not take it (the same error on every rank, none left waiting).
    """
    with contextlib.ExitStack() as stack:

        def take() -> None:
            stack.enter_context(_hold_run_dir_lock(run))

        from_rank_zero(take)
        yield


@contextlib.contextmanager
def _hold_run_dir_lock(run: RunDir) -> Iterator[None]:
    import socket

    path = run.path.parent / f".{run.path.name}.lock"
    with contextlib.ExitStack() as stack:
        try:
            run.path.parent.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(exclusive_lock(path, wait=False))
        except BlockingIOError:
            holder = path.read_text(encoding="utf-8").strip() or "another process"
            raise UsageError(
                f"{run.path} is being trained by {holder}; two trainings cannot write one run directory",
                hint="wait for it to end (`vlmtune chain status` for a chain), or give this recipe its own `variant`",
            ) from None
        except OSError as exc:
            raise UsageError(
                f"cannot write to runs_dir {run.path.parent}: {exc.strerror or exc}",
                hint="set runs_dir in vlmtune.toml or VLMTUNE_RUNS_DIR to a writable folder",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
