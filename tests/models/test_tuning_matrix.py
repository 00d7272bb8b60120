"""Every combination of frozen/lora/full over vision, projector and llm, for every family (27 × 3), checked
without a training run: the tuning alone, the trainable-parameters table, which weights require a gradient and
in which dtype, and one optimizer step under bf16 autocast (frozen weights loaded in bfloat16, as on a GPU).
LoRA's B starts at zero, so A's first gradient is zero: A must get a gradient, every other trainable tensor must
change, every frozen one must not (bitwise). About a minute on 2 cores, so marked slow."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.config.schema import DataSection, LoraSection, ModelSection, TuningSection
from vlmtune_cli.encode.labels import LabelSpec, VisionCollator, encode_sample
from vlmtune_cli.errors import UsageError
from vlmtune_cli.models.families import COMPONENTS, component_of
from vlmtune_cli.models.loading import family_of, load_family, load_model, load_processor, resolve_model_path
from vlmtune_cli.models.tuning import apply_tuning, trainable_table

from ..conftest import RECIPES

pytestmark = pytest.mark.slow
MODELS = {
    "qwen2-vl": "builtin:tiny-qwen2-vl",
    "qwen2.5-vl": "builtin:tiny-qwen2.5-vl",
    "mllama": "builtin:tiny-mllama",
}
MODES = ("frozen", "lora", "full")
COMBOS = [c for c in itertools.product(MODES, repeat=3) if c != ("frozen",) * 3]


def _section(family: str) -> ModelSection:
    return ModelSection(name=MODELS[family], dtype="bfloat16")


@pytest.fixture(scope="module")
def families(cache_dir: Path) -> dict[str, tuple[object, dict[str, int], dict]]:
    """Per family: the bare model (copied for each combination), its parameters per component, and one collated
    training batch."""
    prepared = {}
    for family, name in MODELS.items():
        resolve_model_path(name, cache_dir)
        processor = load_processor(_section(family), DataSection(), cache_dir)
        spec = LabelSpec.for_family(processor.tokenizer, load_family(_section(family), cache_dir))
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Detect it."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "[12, 40, 180, 200]"}]},
        ]
        sample = {"messages": messages, "images": [Image.new("RGB", (224, 224), (200, 30, 30))]}
        batch = VisionCollator(pad_id=spec.pad_id)([encode_sample(processor, spec, sample, "all", 4096)])
        model = load_model(_section(family), cache_dir)
        sizes = dict.fromkeys(COMPONENTS, 0)
        for n, p in model.named_parameters():
            sizes[component_of(family_of(model), n)] += p.numel()
        prepared[family] = (model, sizes, batch)
    return prepared


@pytest.mark.parametrize("family", list(MODELS))
def test_every_tuning_combination(cache_dir: Path, families: dict, family: str) -> None:
    bare, sizes, batch = families[family]
    failures: list[str] = []
    for modes in COMBOS:
        try:
            _check(copy.deepcopy(bare), dict(zip(COMPONENTS, modes, strict=True)), sizes, batch)
        except Exception as exc:  # every combination is tried, then all failures are reported together
            failures.append(f"{modes}: {type(exc).__name__}: {str(exc)[:300]}")
    assert failures == [], "\n".join(failures)


def _check(model, mode: dict[str, str], sizes: dict[str, int], batch: dict) -> None:
    model = apply_tuning(model, TuningSection(**mode), LoraSection(r=4, dropout=0.0), seed=0)
    family = family_of(model)

    rows = {row.component: row for row in trainable_table(model, family)}
    for c in COMPONENTS:
        row = rows[c]
        if mode[c] == "frozen":
            assert (row.trainable, row.total, row.trains_in, row.frozen_in) == (0, sizes[c], "-", "bfloat16"), row
        elif mode[c] == "full":
            assert (row.trainable, row.total, row.trains_in, row.frozen_in) == (sizes[c],) * 2 + ("float32", "-"), row
        else:
            assert 0 < row.trainable == row.total - sizes[c], row  # the adapters are all that train
            assert (row.trains_in, row.frozen_in) == ("float32", "bfloat16"), row

    params = dict(model.named_parameters())
    for name, param in params.items():
        kept_original = ".original_module." in name  # PEFT keeps it beside the trainable copy, unused
        should_train = not kept_original and (
            mode[component_of(family, name)] == "full"
            or (mode[component_of(family, name)] == "lora" and "lora_" in name)
        )
        assert param.requires_grad == should_train, name
        assert param.dtype == (torch.float32 if should_train else torch.bfloat16), (name, param.dtype)

    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    no_grad = [n for n, p in params.items() if p.requires_grad and p.grad is None]
    assert no_grad == [], f"{len(no_grad)} trainable tensors got no gradient, e.g. {no_grad[:3]}"
    unchanged = [
        n for n, p in params.items() if p.requires_grad and "lora_A" not in n and torch.equal(before[n], p.detach())
    ]
    assert unchanged == [], f"{len(unchanged)} trainable tensors did not change, e.g. {unchanged[:3]}"
    moved = [n for n, p in params.items() if not p.requires_grad and not torch.equal(before[n], p.detach())]
    assert moved == [], f"frozen tensors changed: {moved[:3]}"


def test_all_frozen_is_a_usage_error(cache_dir: Path) -> None:
    frozen = ["tuning.vision=frozen", "tuning.projector=frozen", "tuning.llm=frozen"]
    with pytest.raises(UsageError, match="all 'frozen': nothing would train"):
        load_recipe(RECIPES / "smoke.toml", frozen)
    # The tuning step refuses it too, should a TuningSection arrive unvalidated.
    tuning = TuningSection.model_construct(vision="frozen", projector="frozen", llm="frozen")
    with pytest.raises(UsageError, match="nothing to train"):
        apply_tuning(load_model(_section("qwen2-vl"), cache_dir), tuning, LoraSection())
