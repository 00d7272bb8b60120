"""On a CUDA GPU only (skipped with the reason elsewhere; scripts/gpu-check.sh runs them): what the CPU tests
prove with bf16 on CPU and with intercepted load calls, checked on the real device."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmtune_cli.config.schema import DataSection, LoraSection, ModelSection, TuningSection
from vlmtune_cli.encode.labels import LabelSpec, VisionCollator, encode_sample
from vlmtune_cli.models.loading import family_of, load_family, load_model, load_processor
from vlmtune_cli.models.placement import machine_precision
from vlmtune_cli.models.tuning import apply_tuning

pytestmark = pytest.mark.gpu
TINY = "builtin:tiny-qwen2-vl"


def _batch(cache_dir: Path, section: ModelSection) -> dict:
    processor = load_processor(section, DataSection(min_pixels=224 * 224, max_pixels=224 * 224), cache_dir)
    spec = LabelSpec.for_family(processor.tokenizer, load_family(section, cache_dir))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Detect it."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "[12, 40, 180, 200]"}]},
    ]
    sample = {"messages": messages, "images": [Image.new("RGB", (224, 224), (200, 30, 30))]}
    batch = VisionCollator(pad_id=spec.pad_id)([encode_sample(processor, spec, sample, "all", 4096)])
    return {k: v.to("cuda") for k, v in batch.items()}


def test_auto_precision_follows_the_compute_capability() -> None:
    major, minor = torch.cuda.get_device_capability()
    assert machine_precision() == ("bf16" if (major, minor) >= (8, 0) else "fp16")


def test_bf16_full_components_and_lora_train_every_tensor_on_cuda(cache_dir: Path) -> None:
    """vision and projector full (PEFT modules_to_save), llm LoRA, bf16 weights, autocast on the GPU, lr 2e-5."""
    section = ModelSection(name=TINY, dtype="bfloat16")
    model = load_model(section, cache_dir, on_gpu=True)  # as training loads it
    assert {p.device for p in model.parameters()} == {torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))}
    model = apply_tuning(model, TuningSection(vision="full", projector="full", llm="lora"), LoraSection(dropout=0.0))
    params = dict(model.named_parameters())
    assert {p.dtype for p in params.values() if p.requires_grad} == {torch.float32}
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=2e-5, weight_decay=0.0)
    batch = _batch(cache_dir, section)
    model.train()
    for _ in range(2):  # LoRA's A moves from the second step on (B starts at zero)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert [n for n, p in params.items() if p.requires_grad and torch.equal(before[n], p.detach())] == []
    assert [n for n, p in params.items() if not p.requires_grad and not torch.equal(before[n], p.detach())] == []


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_qlora_loads_on_the_local_ranks_gpu_and_trains(cache_dir: Path) -> None:
    section = ModelSection(name=TINY, quantization="4bit")
    model = load_model(section, cache_dir)
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    assert {p.device for p in model.parameters()} == {local}
    assert any(type(p).__name__ == "Params4bit" for p in model.parameters()), "nothing was quantised"
    model = apply_tuning(model, TuningSection(vision="frozen", projector="frozen", llm="lora"), LoraSection())
    family = family_of(model)
    assert family.name == "qwen2-vl"
    loss = model(**_batch(cache_dir, section)).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)
