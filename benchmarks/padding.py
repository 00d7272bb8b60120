"""Measurement 4, padding efficiency: real / processed tokens over one epoch of the trainer's sampler, with
`training.group_by_length` against without."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .suite import SMOKE, Figure, Suite, trainer_for


def _varied_dataset(folder: Path, n: int) -> Path:
    """n samples with images from 112 to 448 px a side and answers of 1 to 40 words: lengths ~60 to ~330 tokens."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        w, h = (int(v) * 28 for v in rng.integers(4, 17, 2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png", compress_level=1)
        words = " ".join(["red", "blue", "table", "box"][k % 4] for k in range(int(rng.integers(1, 41))))
        rows.append(
            {
                "id": f"v{i}",
                "images": [f"{i}.png"],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
                    {"role": "assistant", "content": [{"type": "text", "text": words}]},
                ],
            }
        )
    (folder / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "set.jsonl"


def measure(suite: Suite) -> None:
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.encode.build import open_splits, tokenize_recipe
    from vlmtune_cli.models import loading
    from vlmtune_cli.models.tuning import apply_tuning

    n, batch = (256, 8) if suite.quick else (512, 8)
    source = _varied_dataset(suite.work / "varied", n)
    cache_dir = load_settings().cache_dir
    base = [
        f"data.source={source}",
        "data.min_pixels=3136",
        f"data.max_pixels={448 * 448}",
        "data.max_length=4096",
        "data.split_ratio=1.0",
        f"data.max_samples={n}",
        f"training.batch_size={batch}",
        "training.grad_accum=1",
        "training.report_to=['none']",
    ]
    recipe = load_recipe(SMOKE, base, environ={})
    processor = loading.load_processor(recipe.model, recipe.data, cache_dir)
    family = loading.load_family(recipe.model, cache_dir)
    result = tokenize_recipe(recipe, cache_dir, processor=processor, family=family, progress=False)
    model = apply_tuning(loading.load_model(recipe.model, cache_dir), recipe.tuning, recipe.lora, seed=42)
    efficiency = {}
    for grouped in (False, True):
        r = load_recipe(SMOKE, [*base, f"training.group_by_length={str(grouped).lower()}"], environ={})
        train_set, _ = open_splits(result, processor)
        lengths = list(train_set.with_format(None)["length"])
        built = trainer_for(suite, r, processor, train_set, model=model, name=f"padding-{grouped}")
        started = time.perf_counter()
        dl = built.get_train_dataloader()
        order = list(iter(dl.batch_sampler)) if dl.batch_sampler is not None else None
        setup = time.perf_counter() - started
        real = processed = 0
        for idx in order:
            real += sum(lengths[i] for i in idx)
            processed += len(idx) * max(lengths[i] for i in idx)
        efficiency[grouped] = real / processed
        first = next(iter(dl))  # a real batch: its padding must be what the sampler's lengths predict
        mask = first["attention_mask"]
        # The sampler the dataloader draws from (accelerate's SeedableRandomSampler stands in for a RandomSampler).
        sampler = getattr(dl.batch_sampler, "sampler", dl.batch_sampler)
        suite.note(
            f"group_by_length={grouped}: sampler {type(sampler).__name__}, dataloader "
            f"set-up {setup:.2f} s; one real batch: {int(mask.sum())} real / {mask.numel()} processed tokens, "
            f"lengths {sorted(mask.sum(1).tolist())}"
        )
    stats = sorted(lengths)
    suite.add(
        Figure(
            4,
            f"padding efficiency with training.group_by_length (batch {batch}, lengths {stats[0]}–{stats[-1]})",
            f"{efficiency[True]:.3f}",
            f"without {efficiency[False]:.3f}",
            efficiency[True] / efficiency[False],
            "≥ 0.9 with grouping",
            efficiency[True] >= 0.9,
        )
    )
