"""Measurement 3, training overhead: steps/s of vlmtune's trainer against a plain PyTorch loop on the same model,
samples and collator."""

from __future__ import annotations

import math
import time

from .suite import SMOKE, Figure, Suite, median, trainer_for


def measure(suite: Suite) -> None:
    import torch
    from transformers import TrainerCallback

    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.encode.build import open_splits, tokenize_recipe
    from vlmtune_cli.encode.labels import VisionCollator
    from vlmtune_cli.models import loading
    from vlmtune_cli.models.tuning import apply_tuning

    steps, warm = (25, 5) if suite.quick else (80, 10)
    cache_dir = load_settings().cache_dir
    recipe = load_recipe(
        SMOKE,
        [
            f"training.max_steps={steps}",
            "training.save_steps=100000",
            "training.logging_steps=10",
            "training.report_to=['none']",
            "data.split_ratio=1.0",
        ],
        environ={},
    )
    processor = loading.load_processor(recipe.model, recipe.data, cache_dir)
    family = loading.load_family(recipe.model, cache_dir)
    cached, _ = open_splits(
        tokenize_recipe(recipe, cache_dir, processor=processor, family=family, progress=False), processor
    )
    rows = [cached[i] for i in range(len(cached))]  # in memory: both sides get the same, ready samples
    keys = list(rows[0])

    def Rows():  # noqa: N802  (a datasets.Dataset, as TRL insists, serving the rows above)
        import datasets

        return datasets.Dataset.from_dict({"k": list(range(len(rows)))}).with_transform(
            lambda batch: {key: [rows[k][key] for k in batch["k"]] for key in keys}
        )

    def fresh_model():
        return apply_tuning(
            loading.load_model(recipe.model, cache_dir), recipe.tuning, recipe.lora, seed=recipe.training.seed
        )

    def rate(stamps: list[float]) -> float:
        return (len(stamps) - 1 - warm) / (stamps[-1] - stamps[warm])

    def with_trainer(skip_module_walks: bool = True) -> float:
        stamps: list[float] = []

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                stamps.append(time.perf_counter())

        built = trainer_for(
            suite, recipe, processor, Rows(), model=fresh_model(), name="training", per_step_walks=not skip_module_walks
        )
        built.add_callback(Clock())
        built.train()
        return rate(stamps)

    def plain() -> float:
        t = recipe.training
        model = fresh_model()
        model.train()
        generator = torch.Generator().manual_seed(t.seed)
        data = torch.utils.data.DataLoader(
            Rows(),
            batch_size=t.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=VisionCollator(pad_id=processor.tokenizer.pad_token_id),
        )
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / max(1, t.warmup_steps)) * 0.5 * (1 + math.cos(math.pi * s / steps))
        )
        stamps: list[float] = []
        while len(stamps) < steps:
            for inputs in data:
                loss = model(**inputs).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                stamps.append(time.perf_counter())
                if len(stamps) == steps:
                    break
        return rate(stamps)

    ours: list[float] = []
    ref: list[float] = []
    walking: list[float] = []
    for _ in range(suite.repeats):
        ours.append(with_trainer())
        ref.append(plain())
        walking.append(with_trainer(skip_module_walks=False))
    a, b, before = median(ours), median(ref), median(walking)
    suite.note(
        f"training, Trainer's per-step module walks (before): {before:.1f} steps/s ({before / b:.3f} of the "
        f"plain loop); made once (vlmtune_cli/step_overhead.py): {a:.1f} ({a / before:.2f}×)"
    )
    suite.add(
        Figure(
            3,
            f"training: vlmtune's SFTTrainer, steps/s (batch {recipe.training.batch_size}, 64 visual tokens, LoRA)",
            f"{a:.1f}",
            f"plain PyTorch loop (AdamW, clip, schedule) {b:.1f}",
            a / b,
            "≥ 0.85",
            a / b >= 0.85,
        )
    )
