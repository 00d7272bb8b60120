"""Model families, the built-in tiny Qwen2-VL, loading, and per-component freezing/LoRA (CPU, seconds)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmtune_cli.config.schema import DataSection, LoraSection, ModelSection, TuningSection
from vlmtune_cli.errors import UsageError, VlmtuneError
from vlmtune_cli.models import builtin, builtin_parts
from vlmtune_cli.models.families import COMPONENTS, FAMILIES, component_of, family_for_model_type
from vlmtune_cli.models.loading import family_of, load_model, load_processor, resolve_model_path
from vlmtune_cli.models.tuning import apply_tuning, lora_target_modules, trainable_table

TINY = ModelSection(name="builtin:tiny-qwen2-vl")


@pytest.fixture(scope="session")
def cache_dir(cache_dir) -> Path:
    """The session cache of conftest.py, with the tiny model built in it."""
    resolve_model_path(TINY.name, cache_dir)
    return cache_dir


@pytest.fixture(scope="session")
def processor(cache_dir):
    return load_processor(TINY, DataSection(), cache_dir)


@pytest.fixture()
def model(cache_dir):
    return load_model(TINY, cache_dir)


def conversation(answer: str = "<|box_start|>(120,80),(610,900)<|box_end|>") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Detect the nutrition table."}],
        },
        {"role": "assistant", "content": answer},
    ]


@pytest.fixture(scope="session")
def batch(processor):
    """Two samples of different text lengths and image sizes, right-padded as in training."""
    texts = [processor.apply_chat_template(conversation(a), tokenize=False) for a in ("(1,2),(3,4)", "none")]
    images = [Image.new("RGB", (224, 224), (200, 30, 30)), Image.new("RGB", (280, 168), (30, 30, 200))]
    enc = processor(text=texts, images=images, return_tensors="pt", padding=True)
    enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc


def test_builtin_model_round_trips_through_auto_classes(cache_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmtune_cli.models import qwen_processor

    path = resolve_model_path(TINY.name, cache_dir)
    assert Path(path) == cache_dir / "models" / "tiny-qwen2-vl"
    qwen_processor.register()
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert model.config.model_type == "qwen2_vl"
    assert 200_000 < model.num_parameters() < 260_000
    tokenizer = processor.tokenizer
    assert len(tokenizer) == model.config.text_config.vocab_size == 600
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.padding_side == "right"
    assert all(tokenizer.convert_tokens_to_ids(t) != tokenizer.unk_token_id for t in builtin_parts.SPECIAL_TOKENS)
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"


def test_builtin_model_is_built_once_and_reused(cache_dir):
    weights = cache_dir / "models" / "tiny-qwen2-vl" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    resolve_model_path(TINY.name, cache_dir)
    assert weights.stat().st_mtime_ns == stamp
    assert resolve_model_path("Qwen/Qwen2-VL-2B-Instruct", cache_dir) == "Qwen/Qwen2-VL-2B-Instruct"


def test_build_is_deterministic(cache_dir, tmp_path):
    builtin.build_tiny_qwen2_vl(tmp_path / "again", seed=0)
    builtin.build_tiny_qwen2_vl(tmp_path / "other", seed=1)
    first = cache_dir / "models" / "tiny-qwen2-vl"
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja", "config.json"):
        assert (first / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    assert (first / "model.safetensors").read_bytes() != (tmp_path / "other" / "model.safetensors").read_bytes()


def test_killed_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def crash(directory, seed):
        (directory / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(builtin, "_write_tiny_qwen2_vl", crash)
    with pytest.raises(KeyboardInterrupt):
        builtin.build_tiny_qwen2_vl(tmp_path / "tiny", seed=0)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_resolves_build_once_and_clear_leftovers(tmp_path, monkeypatch):
    import threading
    import time

    builds = []

    def slow_build(out_dir, seed=0):
        builds.append(out_dir)
        time.sleep(0.2)  # long enough for the other thread to arrive while this one builds
        builtin.build_tiny_qwen2_vl(out_dir, seed)

    monkeypatch.setitem(builtin.BUILDERS, TINY.name, ("tiny-qwen2-vl", slow_build))
    leftover = tmp_path / "models" / ".tiny-qwen2-vl.building-killed"
    leftover.mkdir(parents=True)
    threads = [threading.Thread(target=resolve_model_path, args=(TINY.name, tmp_path)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert builtin.is_current_build(tmp_path / "models" / "tiny-qwen2-vl")
    assert not leftover.exists()


def test_processor_turns_an_image_and_chat_into_64_image_tokens(processor):
    text = processor.apply_chat_template(conversation(), tokenize=False)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    assert text.endswith("<|box_end|><|im_end|>\n")
    enc = processor(text=[text], images=[Image.new("RGB", (224, 224))], return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [[1, 16, 16]]
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((enc["input_ids"] == image_pad).sum()) == 64
    prompt = processor.apply_chat_template(conversation()[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")


def test_pixel_bounds_from_the_recipe_reach_the_image_processor(cache_dir):
    processor = load_processor(TINY, DataSection(max_pixels=112 * 112), cache_dir)
    enc = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (224, 224))])
    assert enc["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_processor_falls_back_when_a_checkpoint_names_the_stock_qwen2_vl_processor(cache_dir, tmp_path):
    # Real Qwen2-VL checkpoints name Qwen2VLProcessor, which cannot load without torchvision.
    checkpoint = tmp_path / "like-a-hub-checkpoint"
    shutil.copytree(cache_dir / "models" / "tiny-qwen2-vl", checkpoint)
    for name in ("processor_config.json", "tokenizer_config.json"):
        settings = json.loads((checkpoint / name).read_text())
        settings["processor_class"] = "Qwen2VLProcessor"
        (checkpoint / name).write_text(json.dumps(settings))
    processor = load_processor(ModelSection(name=str(checkpoint)), DataSection(), cache_dir)
    assert hasattr(processor, "image_processor") and processor.tokenizer.pad_token == "<|endoftext|>"


def test_forward_with_labels_gives_a_finite_loss(model, processor):
    text = processor.apply_chat_template(conversation(), tokenize=False)
    enc = processor(text=[text], images=[Image.new("RGB", (224, 224))], return_tensors="pt")
    loss = model(**enc, labels=enc["input_ids"]).loss
    assert torch.isfinite(loss)


def test_batch_of_two_with_padding(model, processor, batch):
    assert (batch["attention_mask"] == 0).any(), "the two samples should differ in length"
    assert torch.isfinite(model(**batch).loss)
    processor.tokenizer.padding_side = "left"
    try:
        texts = [processor.apply_chat_template(conversation()[:1], tokenize=False, add_generation_prompt=True)] * 2
        images = [Image.new("RGB", (224, 224)), Image.new("RGB", (280, 168))]
        enc = processor(text=texts, images=images, return_tensors="pt", padding=True)
    finally:
        processor.tokenizer.padding_side = "right"
    out = model.generate(**enc, max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 2


def test_every_parameter_belongs_to_exactly_one_component(model):
    family = family_of(model)
    for name, _ in model.named_parameters():
        matches = [c for c in COMPONENTS if any(name.startswith(p) for p in family.prefixes(c))]
        assert len(matches) == 1, (name, matches)
    assert component_of(family, "model.visual.patch_embed.proj.weight") == "vision"
    assert component_of(family, "model.visual.merger.mlp.0.weight") == "projector"
    assert component_of(family, "lm_head.weight") == "llm"
    # PEFT prefixes names with base_model.model.
    assert component_of(family, "base_model.model.model.visual.merger.mlp.0.lora_A.default.weight") == "projector"
    with pytest.raises(VlmtuneError, match="model.mystery.weight"):
        component_of(family, "model.mystery.weight")


def test_unknown_model_type_is_a_usage_error():
    with pytest.raises(UsageError, match="'gpt2'.*qwen2_vl"):
        family_for_model_type("gpt2")
    assert {f.name for f in FAMILIES} >= {"qwen2-vl"}


CASES = {
    "v1-v2-llm-lora": ("frozen", "frozen", "lora"),
    "vision-lora": ("lora", "frozen", "frozen"),
    "projector-lora": ("frozen", "lora", "frozen"),
    "all-lora": ("lora", "lora", "lora"),
    "v3-encoder-full": ("full", "full", "frozen"),
    "v4-llm-full": ("frozen", "frozen", "full"),
    "projector-full-llm-lora": ("frozen", "full", "lora"),
    "vision-lora-llm-full": ("lora", "frozen", "full"),
}


@pytest.mark.parametrize("modes", CASES.values(), ids=CASES.keys())
def test_one_step_changes_exactly_the_trained_components(model, batch, modes):
    tuning = TuningSection(vision=modes[0], projector=modes[1], llm=modes[2])
    model = apply_tuning(model, tuning, LoraSection(dropout=0.0), seed=0)
    family = family_of(model)
    mode = dict(zip(COMPONENTS, modes, strict=True))
    for name, module in model.named_modules():
        if hasattr(module, "lora_A"):
            assert mode[component_of(family, name)] == "lora", name

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)
    model.train()
    model(**batch).loss.backward()
    optimizer.step()

    changed = {c: False for c in COMPONENTS}
    for name, param in model.named_parameters():
        component = component_of(family, name)
        same = torch.equal(before[name], param.detach())
        if mode[component] == "frozen" or not param.requires_grad:
            assert same, f"{name} ({mode[component]}) changed"
        elif mode[component] == "full":
            assert not same, f"{name} (full) did not change"
        else:
            assert "lora_" in name, f"{name} trains in a LoRA component"
        changed[component] |= not same
    assert changed == {c: mode[c] != "frozen" for c in COMPONENTS}
    table = {row.component: row.trainable for row in trainable_table(model, family)}
    assert all((table[c] > 0) == (mode[c] != "frozen") for c in COMPONENTS)


def test_lora_targets_from_a_user_list_stay_in_lora_components(model):
    family = family_of(model)
    names = lora_target_modules(model, family, {"llm"}, ["q_proj", "v_proj"])
    assert len(names) == 4 and all(n.startswith("model.language_model.") for n in names)
    with pytest.raises(UsageError, match="qkv"):
        lora_target_modules(model, family, {"llm"}, ["q_proj", "qkv"])
    all_linear = lora_target_modules(model, family, {"llm"}, "all-linear")
    assert "lm_head" not in all_linear and not any(n.startswith("model.visual.") for n in all_linear)


def test_lora_initialisation_is_seeded(cache_dir):
    def lora_weights():
        tuned = apply_tuning(load_model(TINY, cache_dir), TuningSection(), LoraSection(), seed=3)
        return {n: p.detach().clone() for n, p in tuned.named_parameters() if "lora_A" in n}

    first, second = lora_weights(), lora_weights()
    assert first and all(torch.equal(first[n], second[n]) for n in first)


def test_loading_errors_name_the_model(cache_dir, tmp_path):
    missing = str(tmp_path / "no-such-checkpoint")
    with pytest.raises(UsageError, match="no-such-checkpoint"):
        load_model(ModelSection(name=missing), cache_dir)
    with pytest.raises(UsageError, match="no-such-checkpoint"):
        load_processor(ModelSection(name=missing), DataSection(), cache_dir)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA"):
            load_model(TINY.model_copy(update={"quantization": "4bit"}), cache_dir)


def test_importing_the_modules_does_not_import_torch():
    code = "import sys, vlmtune_cli.models.loading, vlmtune_cli.models.families; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_mllama_refuses_inherited_pixel_bounds_until_they_are_unset(cache_dir, tmp_path):
    from vlmtune_cli.config.recipe import load_recipe

    repo = Path(__file__).resolve().parents[2]
    child = tmp_path / "mllama.toml"
    child.write_text(f'extends = "{repo / "recipes" / "smoke.toml"}"\n[model]\nname = "builtin:tiny-mllama"\n')
    inherited = load_recipe(child, environ={})
    with pytest.raises(UsageError, match="need a processor that resizes by pixel area") as caught:
        load_processor(inherited.model, inherited.data, cache_dir)
    assert "--unset data.min_pixels" in (caught.value.hint or "")
    dropped = load_recipe(child, environ={}, unset=["data.min_pixels", "data.max_pixels"])
    processor = load_processor(dropped.model, dropped.data, cache_dir)
    assert type(processor).__name__ == "MllamaProcessor"
