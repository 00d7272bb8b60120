"""benchmarks/fsdp_capacity.py, the README's "How large a model fits" table: its memory arithmetic on a hand-computed
example, and one published config built on the meta device against the count its model card gives."""

from __future__ import annotations

import pytest

from benchmarks.fsdp_capacity import GIB, MODELS, Counts, count, fits, largest_fitting, state_bytes

# 1B parameters, 10M LoRA parameters, a largest unit of 50M and a root unit of 200M.
EXAMPLE = Counts(
    name="example",
    total=1_000_000_000,
    vision=100_000_000,
    projector=10_000_000,
    llm=890_000_000,
    lora=10_000_000,
    largest_unit=50_000_000,
    root=200_000_000,
)


def test_state_bytes_by_hand() -> None:
    # Full fine-tuning, one GPU or DDP: 16 bytes per parameter (fp32 weight + fp32 gradient + AdamW m, v).
    assert state_bytes(EXAMPLE, "full", 1) == 16e9
    assert state_bytes(EXAMPLE, "full", 8, sharded=False) == 16e9
    # FSDP2 over 8: 16e9 / 8 = 2e9, plus two gathered 50M units in bf16 (0.2e9), plus the 200M root unit's bf16
    # weights and bf16 gradient (0.8e9).
    assert state_bytes(EXAMPLE, "full", 8) == 2e9 + 0.2e9 + 0.8e9
    # LoRA, one GPU: frozen bf16 weights (2e9) + 16 bytes per LoRA parameter (0.16e9).
    assert state_bytes(EXAMPLE, "lora", 1) == 2.16e9
    # FSDP2 over 4: 2.16e9 / 4 = 0.54e9, plus two 50M units (0.2e9), plus the frozen root's weights only (0.4e9).
    assert state_bytes(EXAMPLE, "lora", 4) == pytest.approx(0.54e9 + 0.2e9 + 0.4e9)


def test_fits_against_the_budget_left_by_the_headroom() -> None:
    needed = state_bytes(EXAMPLE, "full", 8) / GIB  # 3e9 bytes = 2.79 GiB
    assert fits(EXAMPLE, "full", 8, gpu_gib=needed / 0.8, headroom=0.2)
    assert not fits(EXAMPLE, "full", 8, gpu_gib=needed / 0.8 * 0.999, headroom=0.2)
    smaller = Counts("smaller", 500_000_000, 0, 0, 500_000_000, 5_000_000, 25_000_000, 100_000_000)
    assert largest_fitting([smaller, EXAMPLE], "full", 8, gpu_gib=80, headroom=0.2) is EXAMPLE
    assert largest_fitting([smaller, EXAMPLE], "full", 1, gpu_gib=10, headroom=0.2) is smaller  # 7.45 GiB
    assert largest_fitting([smaller, EXAMPLE], "full", 1, gpu_gib=1, headroom=0.2) is None


def test_qwen2_vl_7b_built_from_its_published_config() -> None:
    spec = next(m for m in MODELS if m.name == "Qwen/Qwen2-VL-7B-Instruct")
    counts = count(spec)
    assert counts.total == pytest.approx(8.29e9, rel=0.03)  # the model card's 8.29B ("7B" in the name)
    assert counts.vision + counts.projector + counts.llm == counts.total
    # A decoder layer, by hand: attention 3584² + 3584 (q, bias) + 2 × (3584 × 512 + 512) (k, v) + 3584² (o);
    # MLP 3 × 3584 × 18944; two RMSNorms of 3584.
    layer = 3584 * 3584 + 3584 + 2 * (3584 * 512 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584
    assert counts.largest_unit == layer == 233_057_792
    # LoRA r=16 per layer: q, o 16 × (3584 + 3584); k, v 16 × (3584 + 512); gate, up, down 16 × (3584 + 18944).
    per_layer = 2 * 16 * (3584 + 3584) + 2 * 16 * (3584 + 512) + 3 * 16 * (3584 + 18944)
    assert counts.lora == 28 * per_layer
