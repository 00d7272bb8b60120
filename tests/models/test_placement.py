"""Where and in which precision models load and train on a GPU node, decided on this CPU machine: the precision
pick per compute capability, the dtype frozen weights load in, and the device each rank loads onto (QLoRA on
several GPUs), checked on the `from_pretrained` call itself, in one process and in two torchrun processes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.config.schema import ModelSection
from vlmtune_cli.models import loading
from vlmtune_cli.models.placement import (
    auto_precision,
    local_device_map,
    training_load_dtype,
    training_precision,
)

from ..conftest import RECIPES

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("cuda", "capability", "expected"),
    [
        (False, None, "fp32"),
        (True, (6, 0), "fp16"),  # P100
        (True, (7, 0), "fp16"),  # V100: torch.cuda.is_bf16_supported() is True here, by emulation
        (True, (7, 5), "fp16"),  # T4
        (True, (8, 0), "bf16"),  # A100
        (True, (8, 9), "bf16"),  # L4, RTX 4090
        (True, (9, 0), "bf16"),  # H100
    ],
)
def test_auto_precision_is_bf16_only_where_the_gpu_computes_it(cuda, capability, expected) -> None:
    assert auto_precision(cuda, capability) == expected


def test_training_precision_and_load_dtype() -> None:
    assert training_precision("fp32", "auto", "bf16") == "fp32"
    assert training_precision("auto", "auto", "fp16") == "fp16"
    assert training_precision("auto", "float32", "bf16") == "bf16"
    assert training_precision("auto", "bfloat16", "fp32") == "bf16", "an explicit bf16 load trains under autocast"
    assert [training_load_dtype("auto", p) for p in ("bf16", "fp16", "fp32")] == ["bfloat16", "float16", "float32"]
    assert training_load_dtype("float32", "bf16") == "float32"


def _precision_on(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int] | None, *overrides: str) -> tuple:
    """(precision, why) the trainer picks for the smoke recipe on a GPU of `capability` (None: no CUDA)."""
    from vlmtune_cli.train.sft_config import precision_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    recipe = load_recipe(RECIPES / "smoke.toml", ["training.precision=auto", *overrides])
    return precision_for(recipe)


def test_build_sft_config_precision_per_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _precision_on(monkeypatch, (7, 0)) == (
        "fp16",
        "auto: GPU compute capability 7.0, no native bf16, fp16 instead",
    )
    assert _precision_on(monkeypatch, (8, 0)) == ("bf16", "auto: GPU compute capability 8.0, native bf16")
    assert _precision_on(monkeypatch, None) == ("fp32", "auto: no CUDA GPU")
    assert _precision_on(monkeypatch, None, "model.dtype=bfloat16") == ("bf16", "auto: follows model.dtype = bfloat16")
    monkeypatch.undo()
    # And the SFTConfig built on this (CPU) machine carries it.
    from vlmtune_cli.runs import run_dir_for
    from vlmtune_cli.train.sft_config import build_sft_config

    for overrides, flags in (([], (False, False)), (["model.dtype=bfloat16"], (True, False))):
        recipe = load_recipe(RECIPES / "smoke.toml", ["training.precision=auto", *overrides])
        config = build_sft_config(recipe, run_dir_for(recipe, tmp_path), has_eval=False)
        assert (config.bf16, config.fp16) == flags


def test_local_device_map() -> None:
    assert local_device_map(False, {"LOCAL_RANK": "1"}) is None
    assert local_device_map(True, {}) == {"": 0}
    assert local_device_map(True, {"LOCAL_RANK": "3"}) == {"": 3}


def _intercept_quantised_load(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Make this CPU machine look like a CUDA node with bitsandbytes, and record `from_pretrained`'s kwargs."""
    from transformers import AutoModelForImageTextToText

    calls: list[dict] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else find_spec(name, *a)
    )
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", lambda path, **kw: calls.append(kw) or kw)
    return calls


def test_a_quantised_model_loads_onto_the_local_ranks_gpu(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    calls = _intercept_quantised_load(monkeypatch)
    section = ModelSection(name="builtin:tiny-qwen2-vl", quantization="4bit")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    loading.load_model(section, cache_dir)
    monkeypatch.setenv("LOCAL_RANK", "1")
    loading.load_model(section, cache_dir, dtype="bfloat16")
    assert [c["device_map"] for c in calls] == [{"": 0}, {"": 1}]
    assert all(c["quantization_config"].load_in_4bit for c in calls)
    assert calls[0]["dtype"] == torch.bfloat16, "auto on compute capability 8.0"
    # Unquantised: straight to the GPU for training; to host memory otherwise (export merges there).
    plain = ModelSection(name="builtin:tiny-qwen2-vl")
    loading.load_model(plain, cache_dir, on_gpu=True)
    loading.load_model(plain, cache_dir)
    assert calls[2]["device_map"] == {"": 1} and "device_map" not in calls[3]


@pytest.mark.slow
def test_two_torchrun_processes_each_load_onto_their_own_gpu(tmp_path: Path, cache_dir: Path) -> None:
    """`torchrun --nproc_per_node 2` (gloo, CPU): each rank asks `from_pretrained` for its own device."""
    script = tmp_path / "rank.py"
    script.write_text(
        f"""
import json, os, sys
import pytest, torch, torch.distributed as dist
sys.path.insert(0, {str(REPO)!r})
from tests.models.test_placement import _intercept_quantised_load
from vlmtune_cli.config.schema import ModelSection
from vlmtune_cli.models.loading import load_model

dist.init_process_group("gloo")  # a real 2-process job; the load happens as in training, before the Trainer
with pytest.MonkeyPatch.context() as patch:
    calls = _intercept_quantised_load(patch)
    load_model(ModelSection(name="builtin:tiny-qwen2-vl", quantization="4bit"), {str(cache_dir)!r})
out = {{"rank": dist.get_rank(), "local_rank": os.environ["LOCAL_RANK"], "device_map": calls[0]["device_map"]}}
with open({str(tmp_path)!r} + f"/rank{{dist.get_rank()}}.json", "w") as handle:
    handle.write(json.dumps(out))
dist.destroy_process_group()
"""
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*torchrun, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [
        {"rank": 0, "local_rank": "0", "device_map": {"": 0}},
        {"rank": 1, "local_rank": "1", "device_map": {"": 1}},
    ]
