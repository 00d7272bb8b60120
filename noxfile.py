"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s smoke`, `nox -s bench`.

Each session installs the CPU build of torch first so the open `torch` range of the package installs nothing
more (an unpinned torch pulls a multi-GB CUDA build). Set VLMTUNE_TORCH to pick another torch requirement.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
TORCH = os.environ.get("VLMTUNE_TORCH", "torch==2.13.0")
BASEDPYRIGHT = "basedpyright==1.40.2"  # pinned: a new release may add checks; .pre-commit-config.yaml uses the same


def _install(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[test]")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite; `slurm` tests run when a cluster is up (bash scripts/local-slurm.sh start)."""
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, the tests and the benchmarks: formatting (checked, never rewritten) and lint rules."""
    session.install("ruff")
    session.run("ruff", "format", "--check", "vlmtune_cli", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "check", "vlmtune_cli", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """basedpyright as pyproject's [tool.basedpyright] sets it (basic mode, on vlmtune_cli): zero errors.

    It needs the package's dependencies installed to see their types, so it runs in a full environment; it finds
    them through the session's `python`, first on PATH.
    """
    _install(session)
    session.install(BASEDPYRIGHT)
    session.run("basedpyright", *session.posargs)


@nox.session
def smoke(session: nox.Session) -> None:
    """Train the smoke recipe on the built-in tiny model."""
    _install(session)
    session.run("vlmtune", "train", "recipes/smoke.toml", "--overwrite")


@nox.session
def bench(session: nox.Session) -> None:
    """The performance suite (`python -m benchmarks.run`, from the repository root; not a default session):
    `nox -s bench -- --quick` for a short run."""
    _install(session)
    session.run("python", "-m", "benchmarks.run", *session.posargs)
