"""Every model family × every variant: the built-in tiny models, labels, the tokenised cache, training with
per-component freezing, and a smoke benchmark (CPU; the matrix is marked slow and takes about a minute)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vlmtune_cli.cli import app
from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.config.schema import DataSection, ModelSection
from vlmtune_cli.encode.labels import IGNORE_INDEX, LabelSpec, VisionCollator, encode_sample
from vlmtune_cli.errors import UsageError
from vlmtune_cli.models import builtin, builtin_gemma3, builtin_mllama
from vlmtune_cli.models.families import COMPONENTS, component_of, family_for_model_type
from vlmtune_cli.models.loading import (
    family_of,
    load_family,
    load_model,
    load_processor,
    load_trained_model,
    resolve_model_path,
)

from ..conftest import RECIPES

runner = CliRunner()

# family -> (smoke recipe, built-in model)
FAMILIES = {
    "qwen2-vl": ("smoke.toml", "builtin:tiny-qwen2-vl"),
    "qwen2.5-vl": ("smoke-qwen2.5-vl.toml", "builtin:tiny-qwen2.5-vl"),
    "mllama": ("smoke-mllama.toml", "builtin:tiny-mllama"),
    "qwen3-vl": ("smoke-qwen3-vl.toml", "builtin:tiny-qwen3-vl"),
    "gemma3": ("smoke-gemma3.toml", "builtin:tiny-gemma3"),
    "qwen3.5": ("smoke-qwen3.5.toml", "builtin:tiny-qwen3.5"),
}
# What the chat template writes at the start of a trained answer (Qwen3.5: an empty think block).
ANSWER_PREFIX = {"qwen3.5": "<think>\n\n</think>\n\n"}
# The [tuning] tables of recipes/v1.toml-v4.toml.
VARIANTS = {
    "v1": {"loss_on": "all", "vision": "lora", "projector": "lora", "llm": "lora"},
    "v2": {"loss_on": "assistant", "vision": "lora", "projector": "lora", "llm": "lora"},
    "v3": {"loss_on": "assistant", "vision": "full", "projector": "full", "llm": "frozen"},
    "v4": {"loss_on": "assistant", "vision": "frozen", "projector": "frozen", "llm": "lora"},
}
SMALL = [
    "data.num_samples=8",
    "data.max_samples=8",
    "data.split_ratio=0.75",
    "training.max_steps=3",
    "training.warmup_steps=0",
    "training.eval_steps=100",
    "training.save_steps=100",
    "training.logging_steps=1",
    "benchmark.max_new_tokens=8",
    "training.report_to=[]",
]


@pytest.fixture(scope="module")
def built(cache_dir: Path) -> Path:
    """The session cache with every family's tiny model built in it."""
    for _, name in FAMILIES.values():
        resolve_model_path(name, cache_dir)
    return cache_dir


def _section(family: str) -> ModelSection:
    return ModelSection(name=FAMILIES[family][1], dtype="float32")


def _chat(answer: str, images: int = 1) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": "Detect it."}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


# --- the built-in models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_parameter_lies_in_exactly_one_component_and_each_component_has_some(built: Path, family: str) -> None:
    model = load_model(_section(family), built)
    found = family_for_model_type(model.config.model_type)
    assert found.name == family
    counts = {c: 0 for c in COMPONENTS}
    for name, param in model.named_parameters():
        counts[component_of(found, name)] += param.numel()
    assert all(counts.values()), counts
    assert 150_000 < sum(counts.values()) < 400_000
    # FSDP's units (training.strategy = "fsdp"): each class is in the model, the units hold no one another, and
    # together they hold the language model's layers and the vision tower's blocks.
    units = [m for m in model.modules() if type(m).__name__ in found.fsdp_blocks]
    assert {type(m).__name__ for m in units} == set(found.fsdp_blocks)
    inside = [n for unit in units for n, sub in unit.named_modules() if n and type(sub).__name__ in found.fsdp_blocks]
    assert inside == []
    in_units = {id(p) for unit in units for p in unit.parameters()}
    layers = [n for n, p in model.named_parameters() if ".layers." in n or ".blocks." in n]
    assert layers and all(id(dict(model.named_parameters())[n]) in in_units for n in layers)


@pytest.mark.slow
@pytest.mark.parametrize(
    "builder",
    [
        builtin.build_tiny_qwen2_5_vl,
        builtin.build_tiny_mllama,
        builtin.build_tiny_qwen3_vl,
        builtin.build_tiny_gemma3,
        builtin.build_tiny_qwen3_5,
    ],
)
def test_builders_are_deterministic(tmp_path: Path, builder) -> None:
    def digest(directory: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}

    builder(tmp_path / "a")
    builder(tmp_path / "b")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left of the atomic build


def test_mllama_processor_loads_without_the_image_only_fallback_and_refuses_pixel_bounds(built: Path) -> None:
    processor = load_processor(_section("mllama"), DataSection(), built)
    assert type(processor).__name__ == "MllamaProcessor"
    assert processor.image_processor.size["height"] == builtin_mllama.MLLAMA_IMAGE_SIZE
    with pytest.raises(UsageError, match="min_pixels/max_pixels"):
        load_processor(_section("mllama"), DataSection(max_pixels=50176), built)


def test_a_tokenizer_that_adds_bos_still_gives_one_bos(built: Path) -> None:
    """Real Llama 3 tokenizers add `<|begin_of_text|>` and so does the chat template: training, the tokenize
    cache and generation must not feed the model two."""
    from tokenizers.processors import TemplateProcessing

    from vlmtune_cli.encode.inputs import probe_layout, processor_outputs
    from vlmtune_cli.eval import benchmark

    processor = load_processor(_section("mllama"), DataSection(), built)
    tokenizer = processor.tokenizer
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    assert tokenizer("hi")["input_ids"][0] == bos_id, "the tokenizer now adds a BOS, like Llama 3's"

    sample = {"messages": _chat("[12, 40, 180, 200]"), "images": [Image.new("RGB", (200, 250), "red")]}
    spec = LabelSpec.for_family(tokenizer, load_family(_section("mllama"), built))
    trained = encode_sample(processor, spec, sample, "assistant", 4096)["input_ids"].tolist()
    text = processor.apply_chat_template(sample["messages"], tokenize=False)
    cached = processor_outputs(processor, text, sample["images"], probe_layout(processor))[0]["input_ids"][0].tolist()
    model = load_model(_section("mllama"), built)
    seen: list[list[int]] = []
    generate = model.generate
    model.generate = lambda **inputs: seen.append(inputs["input_ids"][0].tolist()) or generate(**inputs)
    benchmark.generate(model, processor, [sample], batch_size=1, max_new_tokens=1)
    for ids in (trained, cached, seen[0]):
        assert ids.count(bos_id) == 1 and ids[0] == bos_id
    assert trained == cached


def test_mllama_cross_attention_gates_are_not_zero(built: Path) -> None:
    model = load_model(_section("mllama"), built)
    gates = {n: p for n, p in model.named_parameters() if n.endswith(("attn_gate", "mlp_gate"))}
    assert gates and all(bool(p.ne(0).all()) for p in gates.values())


# --- labels -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_labels_per_family(built: Path, family: str) -> None:
    """v1 masks exactly the image tokens; v2 trains exactly the answer and its end-of-turn token."""
    processor = load_processor(_section(family), DataSection(), built)
    fam = load_family(_section(family), built)
    spec = LabelSpec.for_family(processor.tokenizer, fam)
    tokenizer = processor.tokenizer
    sample = {"messages": _chat("[12, 40, 180, 200]"), "images": [Image.new("RGB", (200, 250), "red")]}
    every = encode_sample(processor, spec, sample, "all", 4096)
    ids = every["input_ids"].tolist()
    masked = [t for t, label in zip(ids, every["labels"], strict=True) if label == IGNORE_INDEX]
    assert masked and set(masked) <= spec.image_ids
    image_ids = {tokenizer.convert_tokens_to_ids(t) for t in fam.image_tokens}
    assert len(masked) == sum(1 for t in ids if t in image_ids)
    if family == "mllama":
        assert masked == [tokenizer.convert_tokens_to_ids("<|image|>")]

    answer = encode_sample(processor, spec, sample, "assistant", 4096)
    trained = [t for t in answer["labels"] if t != IGNORE_INDEX]
    expected = ANSWER_PREFIX.get(family, "") + "[12, 40, 180, 200]" + fam.end_of_turn
    assert tokenizer.decode(trained, skip_special_tokens=False) == expected
    assert trained[-1] == tokenizer.convert_tokens_to_ids(fam.end_of_turn)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_batches_equal_the_in_memory_encoding(workspace: Path, built: Path, family: str) -> None:
    """One and two images of odd sizes per sample: the cache gives the collator what the processor gives."""
    from vlmtune_cli.data.sources import load_splits
    from vlmtune_cli.encode.build import open_splits, read_rows, tokenize_recipe

    for name, size in (("a", (97, 131)), ("b", (300, 200)), ("c", (224, 224))):
        Image.new("RGB", size, "blue").save(workspace / f"{name}.png")
    rows = [
        {"id": "one", "messages": _chat("[1, 2, 30, 40]"), "images": ["a.png"]},
        {"id": "two", "messages": _chat("the first", images=2), "images": ["b.png", "c.png"]},
        {"id": "three", "messages": _chat("square"), "images": ["c.png"]},
    ]
    (workspace / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Not detection answers in every family's syntax: the answer check (tested in test_own_data_tokenize.py) is off.
    overrides = ["data.source=set.jsonl", "data.split_ratio=1.0", "data.answer_check=off"]
    recipe = load_recipe(RECIPES / FAMILIES[family][0], overrides)
    processor = load_processor(recipe.model, recipe.data, built)
    fam = load_family(recipe.model, built)
    result = tokenize_recipe(recipe, built, processor=processor, family=fam, force=True, progress=False)
    if family == "gemma3":  # the statistics count the soft tokens, not the `<start_of_image>` placeholder
        visual = result.stats["splits"]["train"]["visual_tokens_per_image"]
        assert visual["min"] == visual["max"] == builtin_gemma3.TOKENS_PER_IMAGE, visual
    samples = load_splits(recipe.data, box_format=fam.box_format, processor=processor)["train"]
    spec = LabelSpec.for_family(processor.tokenizer, fam)
    in_memory = {s["id"]: encode_sample(processor, spec, s, "assistant", 512) for s in samples}
    train, _ = open_splits(result, processor)
    cached = {row["id"]: train[i] for i, row in enumerate(read_rows(result, 10))}
    collate = VisionCollator(pad_id=spec.pad_id)
    for ids in (["one", "two", "three"], ["two", "one"], ["three"]):
        expected = collate([in_memory[i] for i in ids])
        got = collate([cached[i] for i in ids])
        assert expected.keys() == got.keys()
        for name in expected:
            assert expected[name].dtype == got[name].dtype, name
            assert torch.equal(expected[name], got[name]), name
    if family == "mllama":
        assert expected["cross_attention_mask"].shape[:2] == expected["input_ids"].shape


# --- the matrix: every family × v1-v4 trains; frozen components stay bit-identical; a smoke benchmark ---------


def _by_component(model, family) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {c: {} for c in COMPONENTS}
    for name, param in model.named_parameters():
        parts[component_of(family, name)][name] = param.detach().clone()
    return parts


# Qwen3.5's linear-attention layers run through transformers' reference PyTorch code on a CPU: about 16 s of CPU
# per cell against 4-7 s for the others (measured December 2026, pytest's user time less its start-up). It runs
# v2 (LoRA everywhere, and the benchmark) and v3 (its hybrid LLM frozen bit for bit); v1 differs from v2 only in
# labels (family-independent code, checked per family above) and v4 freezes what v3 trains and LoRA-tunes what v2
# does.
LEAN = {"qwen3.5": ("v2", "v3")}
MATRIX = [
    pytest.param(family, variant, id=f"{family}-{variant}")
    for family in FAMILIES
    for variant in VARIANTS
    if variant in LEAN.get(family, VARIANTS)
]


@pytest.mark.slow
@pytest.mark.parametrize("family, variant", MATRIX)
def test_every_family_trains_every_variant(workspace: Path, built: Path, family: str, variant: str) -> None:
    recipe_file = RECIPES / FAMILIES[family][0]
    overrides = [*SMALL, f"variant={family}-{variant}", *(f"tuning.{k}={v}" for k, v in VARIANTS[variant].items())]
    result = runner.invoke(app, ["train", str(recipe_file), *(a for o in overrides for a in ("--set", o))])
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = Path("runs") / f"{family}-{variant}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 3 and summary["final_loss"] is not None

    recipe = load_recipe(recipe_file, overrides)
    fam = load_family(recipe.model, built)
    before = _by_component(load_model(recipe.model, built), fam)
    after = _by_component(load_trained_model(recipe.model, run / "final", built), fam)
    for component in COMPONENTS:
        assert before[component].keys() == after[component].keys()
        changed = [n for n in before[component] if not torch.equal(before[component][n], after[component][n])]
        if getattr(recipe.tuning, component) == "frozen":
            assert changed == [], f"{component} is frozen but changed: {changed[:3]}"
        else:
            assert changed, f"{component} is set to {getattr(recipe.tuning, component)} but did not change"
    if family == "qwen3-vl":  # the DeepStack mergers are projector: v3 trains them, v4 freezes them
        deepstack = [n for n in before["projector"] if ".deepstack_merger_list." in n]
        assert deepstack
        moved = [n for n in deepstack if not torch.equal(before["projector"][n], after["projector"][n])]
        expected = {"frozen": [], "full": deepstack}.get(recipe.tuning.projector)
        assert moved == expected if expected is not None else moved, (
            recipe.tuning.projector,
            sorted(set(deepstack) - set(moved)),
        )

    if variant == "v2":  # a smoke benchmark per family: scores may be 0, the files and the parser must work
        bench = runner.invoke(app, ["benchmark", str(run), "--limit", "2", "--batch-size", "2", "--json"])
        assert bench.exit_code == 0, bench.output + repr(bench.exception)
        # A limited benchmark writes its own files, next to the full run's.
        metrics = json.loads((run / "metrics-limit-2.json").read_text())
        assert metrics["family"] == family and metrics["box_format"] == fam.box_format
        predictions = [json.loads(line) for line in (run / "predictions-limit-2.jsonl").read_text().splitlines()]
        assert len(predictions) == 2 and all("parsed" in p for p in predictions)


# --- family specifics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_parameter_outside_every_component_is_an_error(family: str) -> None:
    from vlmtune_cli.errors import VlmtuneError
    from vlmtune_cli.models.families import FAMILIES as TABLE

    fam = next(f for f in TABLE if f.name == family)
    with pytest.raises(VlmtuneError, match="model.mystery.weight"):
        component_of(fam, "model.mystery.weight")
    with pytest.raises(VlmtuneError, match="belongs to none"):
        component_of(fam, "base_model.model.model.new_tower.proj.weight")


@pytest.mark.slow
def test_gemma3_token_type_ids_reach_the_training_forward(
    workspace: Path, built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer passes the cached `token_type_ids` to every training forward, marking each sample's soft tokens."""
    from transformers.models.gemma3 import modeling_gemma3

    seen: list[torch.Tensor | None] = []
    forward = modeling_gemma3.Gemma3Model.forward

    def spy(self, *args, **kwargs):
        if torch.is_grad_enabled():  # a training step, not an evaluation
            seen.append(kwargs.get("token_type_ids"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_gemma3.Gemma3Model, "forward", spy)
    overrides = [*SMALL, "training.max_steps=1", "variant=gemma3-types"]
    result = runner.invoke(
        app, ["train", str(RECIPES / "smoke-gemma3.toml"), *(a for o in overrides for a in ("--set", o))]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert seen and all(t is not None for t in seen)
    assert int(seen[0].sum()) == builtin_gemma3.TOKENS_PER_IMAGE * seen[0].shape[0]  # one image per sample


def test_gemma3_token_type_ids_mark_the_soft_tokens_and_change_the_forward(built: Path) -> None:
    """Gemma 3's image tokens attend to each other both ways only when `token_type_ids` marks them."""
    processor = load_processor(_section("gemma3"), DataSection(), built)
    soft = processor.tokenizer.convert_tokens_to_ids("<image_soft_token>")
    sample = {"messages": _chat("[1, 2, 3, 4]"), "images": [Image.new("RGB", (200, 250), "red")]}
    spec = LabelSpec.for_family(processor.tokenizer, load_family(_section("gemma3"), built))
    batch = VisionCollator(pad_id=spec.pad_id)([encode_sample(processor, spec, sample, "all", 512)])
    assert torch.equal(batch["token_type_ids"][0], (batch["input_ids"][0] == soft).long())
    model = load_model(_section("gemma3"), built)
    with torch.no_grad():
        both_ways = model(**batch).logits
        causal = model(**{k: v for k, v in batch.items() if k != "token_type_ids"}).logits
    first_soft = int((batch["input_ids"][0] == soft).nonzero()[0])
    assert not torch.allclose(both_ways[0, first_soft], causal[0, first_soft])  # it now sees the later soft tokens
    assert torch.equal(both_ways[0, :first_soft], causal[0, :first_soft])  # text before the image is unchanged


def test_an_unknown_family_is_exit_2_with_the_families_and_the_guide(workspace: Path) -> None:
    from transformers import AutoConfig

    AutoConfig.for_model("llava").save_pretrained(workspace / "some-llava")
    for command in (["train"], ["tokenize"]):
        result = runner.invoke(
            app, [*command, str(RECIPES / "smoke-base.toml"), "--set", f"model.name={workspace / 'some-llava'}"]
        )
        assert result.exit_code == 2, result.output + repr(result.exception)
        out = " ".join(result.output.split())
        assert "'llava' model, a family vlmtune does not support" in out
        assert "qwen3-vl (qwen3_vl)" in out and "gemma3 (gemma3)" in out and "mllama (mllama)" in out
        assert "docs/families.md" in out


def test_lora_on_a_component_without_linear_layers_trains_it_fully_and_says_so(
    built: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Gemma 3's projector is one bare matrix: `projector = "lora"` (v1, v2) would otherwise train nothing there."""
    from vlmtune_cli.config.schema import LoraSection, TuningSection
    from vlmtune_cli.models.tuning import apply_tuning, trainable_table

    model = apply_tuning(load_model(_section("gemma3"), built), TuningSection(**VARIANTS["v2"]), LoraSection(), seed=0)
    assert "gemma3's projector has no linear layer for LoRA: it trains fully instead (2,080 parameters" in " ".join(
        capsys.readouterr().err.split()
    )
    table = {row.component: (row.trainable, row.total) for row in trainable_table(model, family_of(model))}
    # PEFT keeps the original projector beside its trainable copy (modules_to_save); the table counts what the
    # forward pass uses, so the whole projector trains.
    assert table["projector"] == (2_080, 2_080)
    assert 0 < table["vision"][0] < table["vision"][1] and 0 < table["llm"][0] < table["llm"][1]  # LoRA adapters
