"""`training.packing` on the real tiny models: a packed row gives each sample the logits it gets alone (every family
that packs), a packed batch the loss and gradients of the same samples padded, a packed run resumed from a
checkpoint (and a 2-link chain) the weights of the uninterrupted one bit for bit, and Mllama refuses before
anything loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vlmtune_cli.cli import app

from ..conftest import RECIPES
from .test_train import assert_bitwise_equal, interrupt_after, tensors

runner = CliRunner()
QWEN_FAMILIES = ["builtin:tiny-qwen2-vl", "builtin:tiny-qwen2.5-vl"]


def chat(question: str, answer: str, images: int) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Samples of 31 to 280 tokens: two images of different shapes, text only, one odd-sized image, three images."""
    import numpy as np
    from PIL import Image

    base = tmp_path_factory.mktemp("packing-data")
    (base / "img").mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a": (224, 224), "b": (308, 196), "c": (97, 131)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(base / "img" / f"{name}.png")
    rows = [
        {
            "id": "two",
            "messages": chat("Which?", " ".join(["the first one"] * 30), 2),
            "images": ["img/a.png", "img/b.png"],
        },
        {"id": "text", "messages": chat("Say yes.", "yes", 0)},
        {"id": "odd", "messages": chat("Colour?", "green", 1), "images": ["img/c.png"]},
        {"id": "three", "messages": chat("Count", "three", 3), "images": ["img/c.png", "img/a.png", "img/b.png"]},
    ]
    (base / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return base / "set.jsonl"


def setup(model_name: str, source: Path, cache_dir: Path) -> tuple[Any, Any, list[dict]]:
    """(model in fp32, processor, the four samples as the cache's loader serves them), loss on every token."""
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.encode.build import open_splits, tokenize_recipe
    from vlmtune_cli.models import loading

    recipe = load_recipe(
        RECIPES / "smoke.toml",
        [
            f"model.name={model_name}",
            f"data.source={source}",
            "data.split_ratio=1.0",
            "data.min_pixels=3136",
            "data.max_pixels=50176",
            "tuning.loss_on=all",  # every sample's first label is trained: the boundary case of the label shift
        ],
        environ={},
    )
    processor = loading.load_processor(recipe.model, recipe.data, cache_dir)
    result = tokenize_recipe(
        recipe, cache_dir, processor=processor, family=loading.load_family(recipe.model, cache_dir)
    )
    train_set, _ = open_splits(result, processor)
    samples = [train_set[i] for i in range(len(train_set))]
    return loading.load_model(recipe.model, cache_dir, dtype="float32"), processor, samples


def packed(model: Any, processor: Any, rows: list[list[dict]]) -> dict:
    from vlmtune_cli.encode.packing import REAL_TOKENS, PackedCollator
    from vlmtune_cli.models.loading import rope_index

    batch = PackedCollator(processor.tokenizer.pad_token_id, rope_index(model))([{"packed_samples": r} for r in rows])
    assert int(batch.pop(REAL_TOKENS)) == sum(len(s["input_ids"]) for row in rows for s in row)
    return batch


@pytest.mark.parametrize("model_name", QWEN_FAMILIES)
def test_packed_row_gives_each_sample_its_logits_alone(model_name: str, source: Path, cache_dir: Path) -> None:
    import torch

    from vlmtune_cli.encode.labels import VisionCollator

    model, processor, samples = setup(model_name, source, cache_dir)
    lengths = [len(s["input_ids"]) for s in samples]
    assert len(lengths) == 4 and max(lengths) > 5 * min(lengths), lengths
    assert [len(s["image_grid_thw"]) if s.get("image_grid_thw") is not None else 0 for s in samples] == [2, 0, 1, 3]
    model.eval()
    batch = packed(model, processor, [samples])
    assert batch["position_ids"].shape == (4, 1, sum(lengths)) and "attention_mask" not in batch
    assert batch["image_grid_thw"].shape == (6, 3)
    with torch.no_grad():
        row = model(**batch, use_cache=False).logits[0]
        starts = [sum(lengths[:k]) for k in range(len(lengths))]
        for sample, start, n in zip(samples, starts, lengths, strict=True):
            alone = model(**VisionCollator(processor.tokenizer.pad_token_id)([sample]), use_cache=False).logits[0]
            assert (row[start : start + n] - alone).abs().max() <= 1e-5, sample
        # The same row with a cache: transformers skips the sample boundaries and the later samples see the earlier
        # ones (the trap the trainer avoids with use_cache=False). Proves the comparison above can fail.
        cached = model(**batch, use_cache=True).logits[0]
        assert (cached[lengths[0] :] - row[lengths[0] :]).abs().max() > 1e-2


def test_packed_batch_gives_the_loss_and_gradients_of_the_padded_one(source: Path, cache_dir: Path) -> None:
    import torch

    from vlmtune_cli.encode.labels import VisionCollator

    model, processor, samples = setup(QWEN_FAMILIES[0], source, cache_dir)
    model.train()  # no dropout in the tiny model: train mode changes nothing but is what training runs

    def loss_and_grads(batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # Two rows of different lengths (the shorter is padded): the mean over every trained token of the batch.
    loss, grads = loss_and_grads(packed(model, processor, [[samples[0], samples[1]], [samples[3], samples[2]]]))
    ref_loss, ref_grads = loss_and_grads(VisionCollator(processor.tokenizer.pad_token_id)(samples))
    assert abs(float(loss - ref_loss)) <= 1e-5, (float(loss), float(ref_loss))
    assert grads.keys() == ref_grads.keys() and any(n.startswith("model.visual.") for n in grads)
    worst = max(float((grads[n] - ref_grads[n]).abs().max()) for n in grads)
    assert worst <= 1e-5, worst


def test_mllama_refuses_packing_before_anything_loads(workspace: Path) -> None:
    args = ["train", str(RECIPES / "smoke.toml"), "--set", "model.name=builtin:tiny-mllama"]
    result = runner.invoke(app, [*args, "--set", "training.packing=true"])
    assert result.exit_code == 2, result.output
    assert "training.packing = true: the mllama family cannot pack" in result.stderr
    assert not (workspace / "runs" / "smoke").exists()  # no run directory, no data, no weights loaded


# Packed LoRA run: 24 samples → 19 train → 10 rows, 5 steps per epoch at 2 rows per batch; a checkpoint every 3
# steps, two epochs.
PACKED = [
    "data.num_samples=24",
    "data.max_samples=24",
    "training.packing=true",
    "training.packing_length=276",  # about two smoke samples per row (the default, the longest sample, holds one)
    "training.batch_size=2",
    "training.grad_accum=1",
    "training.epochs=2",
    "training.save_steps=3",
    "training.save_total_limit=20",
    "training.eval_steps=100",
    "chain.epochs_per_job=1",
    "training.logging_steps=1",
]


@pytest.mark.slow
def test_packed_run_resumed_mid_epoch_and_chained_equals_the_uninterrupted_run(workspace: Path) -> None:
    def train(env: dict[str, str] | None = None) -> Any:
        result = runner.invoke(
            app, ["train", str(RECIPES / "smoke.toml"), *sum((["--set", s] for s in PACKED), [])], env=env
        )
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result

    first = train()
    assert "19 samples → 10 rows" in first.stderr  # 5 steps per epoch at 2 rows per batch
    run = workspace / "runs" / "smoke"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 10
    reference = tensors(run / "final" / "adapter_model.safetensors")
    # Killed in epoch 2 right after checkpoint 6 (its first batch): the resumed run must reshuffle the rows for
    # epoch 2 and skip exactly that batch.
    copy = interrupt_after(run, 6, workspace / "second")
    resumed = train(env={"VLMTUNE_RUNS_DIR": str(workspace / "second")})
    assert "checkpoint-6 (step 6" in resumed.stderr and "step 7 · loss" in resumed.stderr
    assert "step 6 · loss" not in resumed.stderr
    assert_bitwise_equal(tensors(copy / "final" / "adapter_model.safetensors"), reference)
    # The same two epochs as a chain of two one-epoch links (`chain run`, no SLURM): the rows and their order carry
    # over from link to link.
    chain = runner.invoke(
        app,
        ["chain", "run", str(RECIPES / "smoke.toml"), "--jobs", "2", *sum((["--set", s] for s in PACKED), [])],
        env={"VLMTUNE_RUNS_DIR": str(workspace / "chain")},
    )
    assert chain.exit_code == 0, chain.output
    assert "resuming from" in chain.stderr and "step 10 · loss" in chain.stderr
    assert_bitwise_equal(tensors(workspace / "chain" / "smoke" / "final" / "adapter_model.safetensors"), reference)
    # TRL's num_tokens log counts the real tokens of the first batch: its two rows, in the sampler's epoch-0 order.
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.encode.build import tokenize_recipe
    from vlmtune_cli.encode.packing import cached_lengths, plan_rows
    from vlmtune_cli.train.sampling import epoch_seeded_shuffle

    lengths = cached_lengths(
        tokenize_recipe(load_recipe(RECIPES / "smoke.toml", PACKED), load_settings().cache_dir), "train"
    )
    rows = plan_rows(lengths, 276, seed=42)
    first = list(epoch_seeded_shuffle(len(rows), seed=42))[:2]
    logged = [e for e in summary["log_history"] if "loss" in e]
    assert logged[0]["num_tokens"] == sum(lengths[i] for r in first for i in rows[r])
