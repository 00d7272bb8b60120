"""Chores shared by every wing: swapping a finished directory into place, file modes by the umask, exclusive
locks, "am I rank 0".

Leaf module: imports nothing of ours but errors/console, nothing heavy.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def rank() -> int:
    """This process's global rank under torch.distributed (env `RANK`, set by torchrun and by our SLURM links)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_rank_zero() -> bool:
    """True in a single process and on global rank 0: the one process that writes what all ranks share."""
    return rank() == 0


def current_umask() -> int:
    """The process's umask (reading it means setting it: set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def respect_umask(path: Path) -> None:
    """Give `path` and everything under it the modes a plain open() or mkdir() would have given.

    safetensors (0.8) writes through a private temporary file and mkstemp/mkdtemp create 0600/0700 whatever the
    umask: weights, markers and cache entries would otherwise be unreadable to the other users of a shared
    project folder. Symbolic links are left alone.
    """
    mask = current_umask()
    for item in [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]:
        if item.is_symlink():
            continue
        want = (0o777 if item.is_dir() else 0o666) & ~mask
        if stat.S_IMODE(item.stat().st_mode) != want:
            item.chmod(want)


def replace_dir(staging: Path, final: Path) -> None:
    """Put the finished directory `staging` at `final`, replacing whatever is there, with modes as the umask says.

    A directory cannot be renamed over a non-empty one, so an old `final` first moves aside into a hidden
    sibling (`.<name>.old-*`), removed last. A crash at any moment leaves `final` either absent, old or new:
    never half-written. On failure the old one is put back. Raises OSError.
    """
    staging, final = Path(staging), Path(final)
    respect_umask(staging)  # mkdtemp's 0700 and safetensors' 0600 would hide it from the other users of a folder
    aside = None
    if final.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, aside / final.name)
    try:
        os.replace(staging, final)
    except OSError:
        if aside is not None:
            os.replace(aside / final.name, final)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


_NO_FLOCK = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)
_warned_no_flock: set[str] = set()


@contextmanager
def exclusive_lock(path: Path, *, wait: bool = True) -> Iterator[IO[str]]:
    """Hold `flock(LOCK_EX)` on `path` (created if missing); yields its handle, open for reading and appending.

    The kernel drops the lock when its holder dies however it dies, so a killed process never blocks later ones.
    `wait=False` raises BlockingIOError when another process holds it. On a file system without flock (Lustre
    mounted without `-o flock`, some NFS set-ups: ENOSYS) it warns once per directory and goes on unlocked:
    refusing to train at all would be worse than the race the lock guards against.
    """
    path = Path(path)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                raise
            if str(path.parent) not in _warned_no_flock:
                _warned_no_flock.add(str(path.parent))
                from rich.markup import escape

                from vlmtune_cli.console import err_console

                err_console.print(
                    f"[yellow]warning: {escape(str(path.parent))} does not support file locks ({exc.strerror}); "
                    "going on without them: do not start two trainings or builds of the same thing at once[/]",
                    highlight=False,
                )
            yield handle
            return
        try:
            yield handle
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
