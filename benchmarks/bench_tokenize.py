"""Benchmark of `vlmtune tokenize`: overhead against a bare processor loop, memory as the dataset grows, the time of
a cache hit, and what storing resized images instead of `pixel_values` costs and saves.

    python -m benchmarks.bench_tokenize              # from the repository root; ~3 minutes on 2 cores
    python -m benchmarks.bench_tokenize --quick      # smaller sizes, ~1 minute

Prints one line per figure and the ratios the issue asks for; benchmarks/README.md records a run. Everything
runs on the built-in tiny Qwen2-VL (the processor and tokenizer are real-sized in their work per image: patches
and visual tokens depend only on the pixel bounds) with images of `--side` pixels and max_pixels = side².
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.toml"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_tokenize", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="samples of the throughput and hit runs")
    parser.add_argument("--side", type=int, default=448, help="image side in pixels (448: 256 visual tokens)")
    parser.add_argument(
        "--rss",
        type=int,
        nargs=2,
        default=(1000, 10000),
        metavar=("SMALL", "LARGE"),
        help="dataset sizes whose peak RSS is compared",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="--samples 300 --rss 300 3000")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.rss = 300, (300, 3000)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        work = Path(tmp)
        os.chdir(work)
        os.environ["VLMTUNE_CACHE_DIR"] = str(work / "cache")
        source = write_dataset(work / "data", args.samples, args.side)
        overrides = [
            f"data.source={source}",
            f"data.max_pixels={args.side * args.side}",
            "data.min_pixels=3136",
            "data.max_length=4096",
            "data.split_ratio=1.0",
            f"data.max_samples={args.samples}",
        ]
        figures: dict[str, float] = {}
        throughput(overrides, args.workers, figures)
        hit_time(overrides, figures)
        storage(overrides, figures)
        peak_rss(args.rss, figures)
    print(json.dumps(figures, indent=1))


def write_dataset(folder: Path, n: int, side: int) -> Path:
    """n samples, each with its own PNG photo-like image (gradients plus noise) of about side × side pixels."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    rows = []
    for i in range(n):
        base = np.stack([(xx + 3 * i) % 256, (yy + 5 * i) % 256, ((xx + yy) // 2 + i) % 256], -1)
        image = np.clip(base + rng.integers(-12, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i:05d}.png", compress_level=1)
        rows.append(
            {
                "id": f"s{i}",
                "images": [f"{i:05d}.png"],
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": "What colour is the corner?"}],
                    },
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": f"The corner is {['red', 'blue'][i % 2]}."}],
                    },
                ],
            }
        )
    path = folder / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def throughput(overrides: list[str], workers: int, figures: dict[str, float], repeat: int = 2) -> None:
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.data.sources import lazy_splits
    from vlmtune_cli.encode.build import tokenize_recipe
    from vlmtune_cli.models import loading

    recipe = load_recipe(SMOKE, overrides)
    cache_dir = load_settings().cache_dir
    processor = loading.load_processor(recipe.model, recipe.data, cache_dir)
    family = loading.load_family(recipe.model, cache_dir)
    split = lazy_splits(recipe.data, box_format=family.box_format, processor=processor)["train"]

    def bare() -> None:  # read the sample (decode its image), apply the template, call the processor
        for k in range(len(split)):
            sample = split[k]
            text = processor.apply_chat_template(sample["messages"], tokenize=False)
            processor(text=[text], images=sample["images"], return_tensors="np")

    def tokenize(n: int, shortcut: bool):
        return tokenize_recipe(
            recipe,
            cache_dir,
            force=True,
            workers=n,
            processor=processor,
            family=family,
            progress=False,
            ids_without_pixels=shortcut,
        )

    # The machine is shared: each figure is the best of `repeat` runs, taken in turns.
    runs = {
        "bare": bare,
        "full processor, 1 worker": lambda: tokenize(1, False),
        "ids without pixels, 1 worker": lambda: tokenize(1, True),
        f"ids without pixels, {workers} workers": lambda: tokenize(workers, True),
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            started = time.perf_counter()
            result = run()
            best[name] = min(best[name], time.perf_counter() - started)
    n = len(split)
    report(figures, "bare processor loop, s", best.pop("bare"), f"{n / min(best.values()):.0f} samples/s best")
    bare_s = figures["bare processor loop, s"]
    for name, seconds in best.items():
        report(
            figures,
            f"tokenize, {name}, s",
            seconds,
            f"{n / seconds:.0f} samples/s, {seconds / bare_s:.2f}× the bare loop",
        )
        figures[f"ratio tokenize/bare, {name}"] = round(seconds / bare_s, 3)
    size = sum(f.stat().st_size for f in result.path.rglob("*.arrow"))
    report(figures, "cache size per sample, KB", size / n / 1e3)


def hit_time(overrides: list[str], figures: dict[str, float]) -> None:
    """A second `vlmtune tokenize` of the same recipe, whole command: interpreter start to exit."""
    argv = [sys.executable, "-m", "vlmtune_cli", "tokenize", str(SMOKE), "--json"]
    for item in overrides:
        argv += ["--set", item]
    subprocess.run(argv, check=True, capture_output=True)  # built already by throughput(): a hit
    times = []
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run(argv, check=True, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        payload = json.loads(done.stdout)
        assert payload["hit"], payload
    report(figures, f"cache hit, whole command, {payload['counts']['train']['samples']} samples, s", min(times))
    report(figures, "cache hit, inside the command (fingerprint + stats), s", payload["seconds"])
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.encode import cache

    started = time.perf_counter()
    cache.fingerprint(load_recipe(SMOKE, overrides), load_settings().cache_dir)
    report(figures, "fingerprint alone (hashes the jsonl and every image), s", time.perf_counter() - started)


def storage(overrides: list[str], figures: dict[str, float], n: int = 100) -> None:
    """Reading a sample for the model: stored float32 pixel_values (the old in-memory layout) vs resized raw
    images turned into pixel_values by the image processor in the loader."""
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.data.sources import load_splits
    from vlmtune_cli.encode.build import open_splits, tokenize_recipe
    from vlmtune_cli.encode.labels import LabelSpec, encode_sample
    from vlmtune_cli.models import loading

    recipe = load_recipe(SMOKE, [*overrides, f"data.max_samples={n}"])
    cache_dir = load_settings().cache_dir
    processor = loading.load_processor(recipe.model, recipe.data, cache_dir)
    family = loading.load_family(recipe.model, cache_dir)
    spec = LabelSpec.for_family(processor.tokenizer, family)
    samples = load_splits(recipe.data, box_format=family.box_format, processor=processor)["train"]
    encoded = [encode_sample(processor, spec, s, "assistant", 4096) for s in samples]
    import datasets
    import numpy as np

    started = time.perf_counter()  # what the in-memory path before the cache did (tokenized.to_dataset)
    rows = [{key: np.asarray(value) for key, value in item.items()} for item in encoded]
    stored = datasets.Dataset.from_list(rows).with_format("numpy")
    write_old = time.perf_counter() - started
    old_bytes = sum(t.nbytes for t in stored.data.columns) / n
    result = tokenize_recipe(recipe, cache_dir, processor=processor, family=family, progress=False)
    new_bytes = sum(f.stat().st_size for f in result.path.rglob("*.arrow")) / n
    cached, _ = open_splits(result, processor)
    for name, dataset in (("pixel_values stored", stored), ("resized images + loader", cached)):
        dataset[0]
        started = time.perf_counter()
        for i in range(n):
            dataset[i]
        report(figures, f"read one sample for the model, {name}, ms", (time.perf_counter() - started) / n * 1e3)
    report(figures, "bytes per sample, pixel_values stored, KB", old_bytes / 1e3)
    report(figures, "bytes per sample, resized images, KB", new_bytes / 1e3)
    report(figures, "writing pixel_values to Arrow (datasets.from_list), ms per sample", write_old / n * 1e3)


def peak_rss(sizes: tuple[int, int], figures: dict[str, float]) -> None:
    """Peak RSS of `tokenize` (one process) on the built-in detection set at two sizes."""
    peaks = []
    for n in sizes:
        probe = (
            "from vlmtune_cli.config.recipe import load_recipe\n"
            "from vlmtune_cli.config.settings import load_settings\n"
            "from vlmtune_cli.encode.build import tokenize_recipe\n"
            f"r = load_recipe({str(SMOKE)!r}, ['data.num_samples={n}', 'data.max_samples={n}', 'data.seed=7'])\n"
            "res = tokenize_recipe(r, load_settings().cache_dir, force=True, workers=1, progress=False)\n"
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
            "peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]\n"
            "print(peak, res.seconds)\n"
        )
        done = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
        kb, seconds = done.stdout.split()
        peaks.append(int(kb) / 1024)
        report(figures, f"peak RSS, {n} samples, MB", peaks[-1], f"{n / float(seconds):.0f} samples/s")
    figures["peak RSS ratio large/small"] = round(peaks[1] / peaks[0], 3)
    print(f"peak RSS ratio {sizes[1]}/{sizes[0]} samples: {peaks[1] / peaks[0]:.2f} (target ≤ 1.3)")


def report(figures: dict[str, float], name: str, value: float, note: str = "") -> None:
    figures[name] = round(value, 4)
    print(f"{name}: {value:.3f}" + (f"  ({note})" if note else ""), flush=True)


if __name__ == "__main__":
    main()
