"""Shared fixtures. Tests run offline on the CPU; the tiny model is built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, with the reason, where torch sees no CUDA GPU (torch is imported only if one is
    collected: most runs never pay for it here)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False (run scripts/gpu-check.sh)")
    for item in gpu:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's VLMTUNE_* variables, and nothing reaches for a hub."""
    for name in list(os.environ):
        if name.startswith("VLMTUNE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache per test session, so the tiny models are built once."""
    return tmp_path_factory.mktemp("vlmtune-cache")


@pytest.fixture
def workspace(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace directory (the current directory) that shares the session's cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLMTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("VLMTUNE_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path
