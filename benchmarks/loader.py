"""Measurement 2, data loader: the trainer's own dataloader over the cache against the old way (processor in the
collate function) and against the bare image-processor call on pre-resized images."""

from __future__ import annotations

import math
import os
import time

from .bench_tokenize import write_dataset
from .suite import SMOKE, Figure, Suite, median, trainer_for

H100_SAMPLES_PER_S = 70  # what one H100 consumes on Qwen2-VL-2B LoRA (issue 6)


def _loader_cache(suite: Suite, n: int, side: int = 448, source_side: int | None = None):
    """A JSONL set of n photo-like PNGs of source_side (default side) pixels a side, tokenised with
    min_pixels = max_pixels = side²."""
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.encode.build import tokenize_recipe
    from vlmtune_cli.models import loading

    source = write_dataset(suite.work / f"data-{source_side or side}-{n}", n, source_side or side)
    overrides = [
        f"data.source={source}",
        f"data.min_pixels={side * side}",
        f"data.max_pixels={side * side}",
        "data.max_length=4096",
        "data.split_ratio=1.0",
        f"data.max_samples={n}",
        "training.eval_steps=1000",
    ]
    recipe = load_recipe(SMOKE, overrides, environ={})
    cache_dir = load_settings().cache_dir
    processor = loading.load_processor(recipe.model, recipe.data, cache_dir)
    family = loading.load_family(recipe.model, cache_dir)
    result = tokenize_recipe(recipe, cache_dir, processor=processor, family=family, progress=False)
    return recipe, processor, family, result


def measure(suite: Suite) -> None:
    import numpy as np
    import torch

    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.data.sources import lazy_splits
    from vlmtune_cli.encode.build import open_splits
    from vlmtune_cli.encode.labels import IGNORE_INDEX

    n = 32 if suite.quick else 256
    batch = 8
    recipe, processor, family, result = _loader_cache(suite, n)
    cores = len(os.sched_getaffinity(0))

    def vlmtune_loader(workers: int, legacy_collate: bool = False, cache=None, processor_pixels: bool = False):
        source, entry = (recipe.data.source, result) if cache is None else (cache[0].data.source, cache[3])
        r = load_recipe(
            SMOKE,
            [
                f"data.source={source}",
                f"training.batch_size={batch}",
                f"training.dataloader_num_workers={workers}",
                "training.report_to=['none']",
            ],
            environ={},
        )
        train_set, _ = open_splits(entry, processor, pixels="processor" if processor_pixels else "table")
        built = trainer_for(suite, r, processor, train_set, name=f"loader-{workers}")
        if legacy_collate:
            built.data_collator = _LegacyCollator(built.data_collator)
        return built.get_train_dataloader()

    # The user's old way: decode each image from disk in the dataset, then apply the chat template and call the
    # processor on the batch in the collate function, in the main process (num_workers=0).
    def old_loader(data):
        lazy = lazy_splits(data, box_format=family.box_format, processor=processor)["train"]

        class Lazy(torch.utils.data.Dataset):
            def __len__(self):
                return len(lazy)

            def __getitem__(self, k):
                return lazy[k]

        return torch.utils.data.DataLoader(
            Lazy(), batch_size=batch, shuffle=True, collate_fn=old_collate, num_workers=0
        )

    samples = lazy_splits(recipe.data, box_format=family.box_format, processor=processor)["train"]
    image_ids = {processor.tokenizer.convert_tokens_to_ids(processor.image_token)}
    pad_id = processor.tokenizer.pad_token_id

    def old_collate(items):
        texts = [processor.apply_chat_template(s["messages"], tokenize=False) for s in items]
        out = processor(text=texts, images=[s["images"] for s in items], padding=True, return_tensors="pt")
        labels = out["input_ids"].clone()
        labels[(labels == pad_id) | torch.isin(labels, torch.tensor(sorted(image_ids)))] = IGNORE_INDEX
        out["labels"] = labels
        return out

    old = old_loader(recipe.data)
    # Photos are larger than the model's resolution: the old way then decodes and resizes them in every epoch.
    large = _loader_cache(suite, n, 448, source_side=896)
    # The bare image-processor call on images already decoded and resized (in memory), one per sample.
    resized = [np.array(samples[k]["images"][0].convert("RGB")) for k in range(n)]
    from PIL import Image

    pil = [Image.fromarray(a) for a in resized]
    ip = processor.image_processor

    def bare() -> None:
        for image in pil:
            ip(images=[image], return_tensors="np")

    loaders = {
        "vlmtune, 0 workers": vlmtune_loader(0),
        "vlmtune, 0 workers, torch.cat collator (before)": vlmtune_loader(0, True, processor_pixels=True),
        "vlmtune, 0 workers, image processor per image (before)": vlmtune_loader(0, processor_pixels=True),
        f"vlmtune, {cores} workers": vlmtune_loader(cores),
        "old way (collate, 0 workers)": old,
        "vlmtune, 0 workers, 896 px sources": vlmtune_loader(0, cache=large),
        "old way, 896 px sources": old_loader(large[0].data),
    }

    def drain(dl) -> None:
        seen = 0
        for b in dl:
            seen += b["input_ids"].shape[0]
        assert seen == n, seen

    for dl in loaders.values():  # warm-up: worker start, first-call caches
        next(iter(dl))
    times: dict[str, list[float]] = {name: [] for name in [*loaders, "bare"]}
    for _ in range(suite.repeats if suite.quick else max(5, suite.repeats)):  # short passes: more of them
        for name, dl in loaders.items():
            started = time.perf_counter()
            drain(dl)
            times[name].append(time.perf_counter() - started)
        started = time.perf_counter()
        bare()
        times["bare"].append(time.perf_counter() - started)
    rate = {name: n / median(t) for name, t in times.items()}
    ours, ours_w = rate["vlmtune, 0 workers"], rate[f"vlmtune, {cores} workers"]
    best = max(ours, ours_w)
    old_rate = rate["old way (collate, 0 workers)"]
    suite.add(
        Figure(
            2,
            "loader from the cache, 448×448 (256 visual tokens), samples/s",
            f"{best:.0f} ({cores} workers {ours_w:.0f}, 0 workers {ours:.0f})",
            f"old way {old_rate:.0f}",
            best / old_rate,
            "≥ 3",
            best / old_rate >= 3,
        )
    )
    suite.add(
        Figure(
            2,
            "loader, 0 workers, vs bare image-processor call on pre-resized images",
            f"{ours:.0f} samples/s",
            f"bare call {rate['bare']:.0f} samples/s",
            ours / rate["bare"],
            "≥ 0.8",
            ours / rate["bare"] >= 0.8,
        )
    )
    big, big_old = rate["vlmtune, 0 workers, 896 px sources"], rate["old way, 896 px sources"]
    suite.add(
        Figure(
            2,
            "loader, 0 workers, from 896×896 PNGs (the cache stores them resized to 448×448)",
            f"{big:.0f} samples/s",
            f"old way {big_old:.0f}",
            big / big_old,
            "≥ 3",
            big / big_old >= 3,
        )
    )
    before = rate["vlmtune, 0 workers, torch.cat collator (before)"]
    per_core = ours  # the main process alone: one core
    processor_call = rate["vlmtune, 0 workers, image processor per image (before)"]
    suite.note(
        f"loader, 0 workers, image processor per image: collator before (each array copied, then torch.cat): "
        f"{before:.0f} samples/s; after (one numpy concatenate): {processor_call:.0f} "
        f"({processor_call / before:.2f}×)"
    )
    suite.note(
        f"loader, 0 workers, pixel values by the image processor (before): {processor_call:.0f} samples/s; "
        f"by its arithmetic tabulated (vlmtune_cli/patchify.py, bit-identical): {ours:.0f} "
        f"({ours / processor_call:.2f}×)"
    )
    suite.note(
        f"per core: {per_core:.0f} samples/s → {math.ceil(H100_SAMPLES_PER_S / per_core)} core(s) of this CPU "
        f"feed one H100 at {H100_SAMPLES_PER_S} samples/s (old way: "
        f"{math.ceil(H100_SAMPLES_PER_S / rate['old way (collate, 0 workers)'])}); "
        f"{cores} workers: {ours_w:.0f} samples/s ({ours_w / cores:.0f} per core)"
    )


class _LegacyCollator:
    """VisionCollator as it was before the performance work: each array copied, then `torch.cat`."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, samples):
        import numpy as np
        import torch

        batch = self.collator([{k: v for k, v in s.items() if k != "pixel_values"} for s in samples])
        batch["pixel_values"] = torch.cat([torch.from_numpy(np.array(s["pixel_values"])) for s in samples], dim=0)
        return batch
