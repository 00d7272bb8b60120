"""vlmtune's performance suite (issue 6): every figure as a ratio against a reference measured in the same run.

    .venv/bin/python benchmarks/run.py                  # full, ~15 minutes on 2 shared cores
    .venv/bin/python benchmarks/run.py --quick          # smaller sizes and fewer repeats, ~3-5 minutes
    .venv/bin/python benchmarks/run.py --only startup,loader
    nox -s bench [-- --quick]

Measurements (the issue's numbering): 1 startup, 2 loader, 3 training, 4 padding, 5 generation, 6 resume,
7 memory. All run on this machine's CPU with the built-in tiny Qwen2-VL (its processor and tokenizer do the real
per-image and per-token work; only the model is tiny). Timed figures are medians of repeats, the measured run and
its reference taken in turns so the load of a shared machine hits both alike. Prints each figure and writes
benchmarks/RESULTS.md (machine, versions, figures). A benchmark, not a test: it never fails on a slow machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SMOKE = REPO / "recipes" / "smoke.toml"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

MEASUREMENTS = ("startup", "loader", "training", "padding", "generation", "resume", "memory")
H100_SAMPLES_PER_S = 70  # what one H100 consumes on Qwen2-VL-2B LoRA (issue 6)


@dataclass
class Figure:
    number: int
    name: str
    value: str
    reference: str
    ratio: float | None
    goal: str
    met: bool | None
    notes: list[str] = field(default_factory=list)


@dataclass
class Suite:
    quick: bool
    repeats: int
    work: Path
    figures: list[Figure] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        verdict = {True: "met", False: "NOT met", None: "-"}[figure.met]
        ratio = "" if figure.ratio is None else f"ratio {figure.ratio:.3g}  "
        print(
            f"[{figure.number}] {figure.name}: {figure.value} vs {figure.reference}  {ratio}"
            f"(goal {figure.goal}: {verdict})",
            flush=True,
        )
        for note in figure.notes:
            print(f"      {note}", flush=True)

    def note(self, text: str) -> None:
        self.details.append(text)
        print(f"      {text}", flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- 1. start-up -------------------------------------------------------------------------------------------


def startup(suite: Suite) -> None:
    vlmtune = Path(sys.executable).with_name("vlmtune")
    ours = [str(vlmtune), "--help"] if vlmtune.exists() else [sys.executable, "-m", "vlmtune_cli", "--help"]
    reference = [sys.executable, "-c", "from trl import SFTTrainer"]

    def wall(argv: list[str]) -> float:
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        return time.perf_counter() - started

    wall(ours), wall(reference)  # warm the page cache
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    for _ in range(suite.repeats):
        times["ours"].append(wall(ours))
        times["ref"].append(wall(reference))
    a, b = median(times["ours"]), median(times["ref"])
    suite.add(
        Figure(
            1,
            "start-up: `vlmtune --help`",
            f"{a:.2f} s",
            f"`from trl import SFTTrainer` {b:.2f} s",
            a / b,
            "≤ 0.1",
            a / b <= 0.1,
        )
    )


# --- 2. data loader ----------------------------------------------------------------------------------------


def _loader_cache(suite: Suite, n: int, side: int = 448, source_side: int | None = None):
    """A JSONL set of n photo-like PNGs of source_side (default side) pixels a side, tokenised with
    min_pixels = max_pixels = side²."""
    from bench_tokenize import write_dataset

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


def _trainer_for(suite: Suite, recipe, processor, train_set, model=None, name="bench", per_step_walks=False):
    """vlmtune's own SFTTrainer (`trainer.build_trainer`) for `recipe`, in a scratch run directory."""
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.models import loading
    from vlmtune_cli.runs import RunDir
    from vlmtune_cli.train import trainer

    if model is None:
        cache_dir = load_settings().cache_dir
        model = loading.apply_tuning(
            loading.load_model(recipe.model, cache_dir), recipe.tuning, recipe.lora, seed=recipe.training.seed
        )
    run = RunDir(suite.work / "runs" / name)
    run.path.mkdir(parents=True, exist_ok=True)
    return trainer.build_trainer(recipe, run, model, processor, train_set, None, per_step_walks=per_step_walks)


def loader(suite: Suite) -> None:
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
        built = _trainer_for(suite, r, processor, train_set, name=f"loader-{workers}")
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


# --- 3. training overhead ----------------------------------------------------------------------------------


def training(suite: Suite) -> None:
    import torch
    from transformers import TrainerCallback

    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.encode.build import open_splits, tokenize_recipe
    from vlmtune_cli.encode.labels import VisionCollator
    from vlmtune_cli.models import loading

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
        return loading.apply_tuning(
            loading.load_model(recipe.model, cache_dir), recipe.tuning, recipe.lora, seed=recipe.training.seed
        )

    def rate(stamps: list[float]) -> float:
        return (len(stamps) - 1 - warm) / (stamps[-1] - stamps[warm])

    def with_trainer(skip_module_walks: bool = True) -> float:
        stamps: list[float] = []

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                stamps.append(time.perf_counter())

        built = _trainer_for(
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


# --- 4. padding efficiency ---------------------------------------------------------------------------------


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


def padding(suite: Suite) -> None:
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.encode.build import open_splits, tokenize_recipe
    from vlmtune_cli.models import loading

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
    model = loading.apply_tuning(loading.load_model(recipe.model, cache_dir), recipe.tuning, recipe.lora, seed=42)
    efficiency = {}
    for grouped in (False, True):
        r = load_recipe(SMOKE, [*base, f"training.group_by_length={str(grouped).lower()}"], environ={})
        train_set, _ = open_splits(result, processor)
        lengths = list(train_set.with_format(None)["length"])
        built = _trainer_for(suite, r, processor, train_set, model=model, name=f"padding-{grouped}")
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
        suite.note(
            f"group_by_length={grouped}: sampler {type(built._get_train_sampler()).__name__}, dataloader "
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


# --- 5. generation -----------------------------------------------------------------------------------------


def generation(suite: Suite) -> None:
    from bench_generation import measure

    samples, new = (16, 16) if suite.quick else (32, 48)
    result = measure(samples=samples, batch_size=16, max_new_tokens=new, repeats=suite.repeats)
    a, b = median(result["batch1_seconds"]), median(result["batched_seconds"])
    suite.add(
        Figure(
            5,
            f"generation at batch 16, samples/s ({new} new tokens)",
            f"{samples / b:.1f}",
            f"batch 1 {samples / a:.1f}",
            a / b,
            "≥ 5",
            a / b >= 5,
            [f"identical outputs {result['identical']}/{result['samples']}"],
        )
    )


# --- 6. resume cost ----------------------------------------------------------------------------------------


def resume(suite: Suite) -> None:
    late = 100 if suite.quick else 1000
    early = 10
    runs_dir = suite.work / "resume-runs"
    env = {**os.environ, "VLMTUNE_RUNS_DIR": str(runs_dir)}
    # Steps per epoch: samples / 4; both resume points fall inside an epoch, the late one with many batches to skip.
    samples = 440 if suite.quick else 1600
    per_epoch = samples // 4
    sets = [
        f"data.num_samples={samples}",
        f"data.max_samples={samples}",
        "data.split_ratio=1.0",
        "training.batch_size=4",
        f"training.max_steps={late + 20}",
        f"training.save_steps={early}",
        f"training.save_total_limit={late}",
        "training.report_to=['none']",
        "training.logging_steps=50",
        "variant=resume-bench",
    ]
    argv = ["train", str(SMOKE)] + [x for s in sets for x in ("--set", s)]
    # The whole run up to step `late`, saving every `early` steps.
    stop = [
        sys.executable,
        "-c",
        "import sys; from transformers import TrainerCallback; from vlmtune_cli.train import trainer as T\n"
        "b = T.build_trainer\n"
        f"class S(TrainerCallback):\n"
        f"    def on_step_end(self, a, s, c, **k):\n"
        f"        c.should_training_stop = s.global_step >= {late}\n"
        "def build(*a, **k):\n    t = b(*a, **k); t.add_callback(S()); return t\n"
        "T.build_trainer = build\nfrom vlmtune_cli.cli import main\n"
        "sys.argv = ['vlmtune', *sys.argv[1:]]\nmain()",
        *argv,
    ]
    started = time.perf_counter()
    subprocess.run(stop, check=True, capture_output=True, env=env)
    suite.note(f"resume: trained the run to step {late} in {time.perf_counter() - started:.0f} s")
    run = runs_dir / "resume-bench"
    source = suite.work / "resume-source"
    shutil.move(run, source)

    def probe(step: int) -> dict:
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(
            source,
            run,
            ignore=lambda d, names: [
                x for x in names if x.startswith("checkpoint-") and x != f"checkpoint-{step}" or x == "final"
            ],
        )
        out = suite.work / "probe.json"
        out.unlink(missing_ok=True)
        t0 = time.time()
        subprocess.run(
            [sys.executable, str(HERE / "resume_probe.py"), *argv],
            check=True,
            capture_output=True,
            env={**env, "BENCH_T0": repr(t0), "BENCH_OUT": str(out)},
        )
        return json.loads(out.read_text())

    times: dict[int, list[float]] = {early: [], late: []}
    loaded: dict[int, int] = {}
    for _ in range(max(2, suite.repeats)):
        for step in (early, late):
            got = probe(step)
            assert got["step"] == step + 1, got
            times[step].append(got["seconds"])
            loaded[step] = got["samples_loaded"]
    a, b = median(times[late]), median(times[early])
    # Met: no skipped batch is loaded again, and the time is the same within the noise of a shared machine.
    flat = loaded[late] == loaded[early] and a / b <= 1.2
    suite.add(
        Figure(
            6,
            f"resume: process start to first resumed step, at step {late}",
            f"{a:.2f} s",
            f"at step {early} {b:.2f} s",
            a / b,
            "≈ 1 (must not grow with the step)",
            flat,
            [
                f"samples the loader built before the first resumed step: {loaded[late]} at step {late} "
                f"({late % per_epoch} batches of 4 to skip in its epoch), {loaded[early]} at step {early} "
                f"({early % per_epoch} to skip)"
            ],
        )
    )


# --- 7. memory ---------------------------------------------------------------------------------------------


def memory(suite: Suite) -> None:
    from bench_tokenize import peak_rss

    sizes = (200, 2000) if suite.quick else (1000, 10000)
    figures: dict[str, float] = {}
    peak_rss(sizes, figures)
    small, large = (figures[f"peak RSS, {n} samples, MB"] for n in sizes)
    suite.add(
        Figure(
            7,
            f"memory: peak RSS of `tokenize`, {sizes[1]:,} samples",
            f"{large:.0f} MB",
            f"{sizes[0]:,} samples {small:.0f} MB",
            large / small,
            "≤ 1.3",
            large / small <= 1.3,
        )
    )


# --- report ------------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    )
    return {
        "CPU": model,
        "cores available": str(len(os.sched_getaffinity(0))),
        "RAM": f"{mem_kb / 1024**2:.1f} GiB",
        "OS": platform.platform(),
        "Python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "vlmtune",
        "torch",
        "transformers",
        "trl",
        "accelerate",
        "datasets",
        "peft",
        "tokenizers",
        "numpy",
        "pillow",
        "pyarrow",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def write_results(suite: Suite, path: Path, loads: tuple[str, str], seconds: float) -> None:
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    lines = [
        "# Benchmark results",
        "",
        f"Written by `benchmarks/run.py{' --quick' if suite.quick else ''}` on "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} (git {git.stdout.strip() or '?'}, working tree may "
        f"differ), {seconds / 60:.1f} minutes. Medians of {suite.repeats} repeats, measured and reference runs in "
        f"turns. Load average at start / end: {loads[0]} / {loads[1]}. torch/OpenMP threads per process: "
        f"{os.environ.get('OMP_NUM_THREADS', 'default')}.",
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in machine().items()],
        "",
        "| package | version |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in versions().items()],
        "",
        "| # | figure | value | reference (same run) | ratio | goal | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in suite.figures:
        ratio = "" if f.ratio is None else f"{f.ratio:.3g}"
        met = {True: "yes", False: "**no**", None: "-"}[f.met]
        lines.append(f"| {f.number} | {f.name} | {f.value} | {f.reference} | {ratio} | {f.goal} | {met} |")
    notes = [n for f in suite.figures for n in f.notes] + suite.details
    if notes:
        lines += ["", "Notes:", "", *[f"- {n}" for n in notes]]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (~3 minutes)")
    parser.add_argument(
        "--only", default=",".join(MEASUREMENTS), help=f"comma-separated subset of {', '.join(MEASUREMENTS)}"
    )
    parser.add_argument("--repeats", type=int, default=0, help="repeats per timed figure (default 3, quick 2)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/OpenMP threads in every process (default 1: on a shared machine more threads spin "
        "against other jobs; a training step took 0.28 s with 2 threads vs 0.045 s with 1)",
    )
    args = parser.parse_args()
    chosen = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown measurement(s) {', '.join(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.threads:  # before torch is imported here or in any subprocess
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="vlmtune-bench-") as tmp:
        work = Path(tmp)
        # A scratch workspace: its own cache (the tiny model is built there) and runs directory.
        os.environ["VLMTUNE_CACHE_DIR"] = str(work / "cache")
        os.environ["VLMTUNE_RUNS_DIR"] = str(work / "runs")
        os.chdir(work)
        suite = Suite(args.quick, args.repeats or (2 if args.quick else 3), work)
        for name in MEASUREMENTS:
            if name in chosen:
                print(f"--- {MEASUREMENTS.index(name) + 1}. {name}", flush=True)
                globals()[name](suite)
        os.chdir(REPO)
    write_results(
        suite, args.out, (load_start, " ".join(f"{x:.1f}" for x in os.getloadavg())), time.perf_counter() - started
    )


if __name__ == "__main__":
    main()
