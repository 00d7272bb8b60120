"""`vlmtune tokenize` and the tokenised-data cache: every source kind, fingerprints that change exactly when an
input that matters changes, cache hits without the model stack, batches identical to the in-memory encoding,
`--show`, overlength, bad inputs, and builds that fail or are killed leaving nothing that looks complete."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vlmtune_cli.cli import app
from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.encode import cache

from ..conftest import RECIPES

runner = CliRunner()
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")
SMOKE = str(RECIPES / "smoke.toml")
SMALL = ("data.num_samples=10", "data.max_samples=10")


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def tokenize(*args: str, code: int = 0):
    result = runner.invoke(app, ["tokenize", *args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def as_json(*args: str) -> dict:
    return json.loads(tokenize(*args, "--json").stdout)


def chat(question: str, answer: str | None, images: int = 1, system: str | None = None) -> list[dict]:
    turns = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    turns.append({"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": question}]})
    if answer is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


def write_image(path: Path, size: tuple[int, int] = (224, 224), colour: str = "red") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path.name if path.parent.name != "img" else f"img/{path.name}"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def mixed_rows(base: Path) -> list[dict]:
    """Images that are resized (some exactly, one not a fixed point of the resize), two images, text only."""
    return [
        {"id": "square", "messages": chat("Colour?", "red"), "images": [write_image(base / "img" / "a.png")]},
        {
            "id": "wide",
            "messages": chat("Colour?", "blue", system="Be brief."),
            "images": [write_image(base / "img" / "b.png", (300, 200), "blue")],
        },
        {
            "id": "odd",
            "messages": chat("Colour?", "green"),
            "images": [write_image(base / "img" / "c.png", (97, 131), "green")],
        },
        {"id": "two", "messages": chat("Which is red?", "the first", images=2), "images": ["img/a.png", "img/b.png"]},
        {"id": "text", "messages": chat("Say yes.", "yes", images=0)},
    ]


# --- fingerprints (no model stack) ---------------------------------------------------------------------


def fake_model(path: Path) -> Path:
    """A model directory as far as the fingerprint cares: processor files and a weights file."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("tokenizer.json", "{}"),
        ("config.json", '{"model_type": "qwen2_vl"}'),
        ("preprocessor_config.json", "{}"),
        ("model.safetensors", "weights"),
        ("generation_config.json", "{}"),
    ):
        (path / name).write_text(text)
    return path


@pytest.fixture
def jsonl_recipe(workspace: Path) -> Path:
    fake_model(workspace / "model")
    source = write_jsonl(
        workspace / "d" / "set.jsonl",
        [
            {"messages": chat("q", "a"), "images": [write_image(workspace / "d" / "img" / "a.png")]},
            {"messages": chat("q", "b"), "images": ["img/a.png"]},
        ],
    )
    recipe = workspace / "r.toml"
    recipe.write_text(f'extends = "{SMOKE}"\n[model]\nname = "{workspace / "model"}"\n[data]\nsource = "{source}"\n')
    return recipe


def key(recipe: Path, *overrides: str, cache_dir: Path = Path("c")) -> str:
    return cache.fingerprint(load_recipe(recipe, list(overrides)), cache_dir).key


def test_fingerprint_changes_exactly_when_an_input_that_matters_changes(
    jsonl_recipe: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = key(jsonl_recipe)
    assert key(jsonl_recipe) == base
    matters = [
        "data.max_length=256",
        "data.min_pixels=3136",
        "data.max_pixels=100352",
        "tuning.loss_on=all",
        "data.overlength=error",
        "data.max_samples=1",
        "data.seed=1",
        "data.split_ratio=0.5",
        "data.train_split=fit",
        "data.test_split=eval",
        "model.revision=v2",
        "model.trust_remote_code=true",
        "data.bad_boxes=clip",
        "data.answer_check=warn",
        "benchmark.task=vqa",  # for a file source, detection turns on the answer check (built-in sets: not)
    ]
    keys = {item: key(jsonl_recipe, item) for item in matters}
    assert base not in keys.values() and len(set(keys.values())) == len(matters), keys
    irrelevant = [
        "training.lr=0.1",
        "variant=other",
        "tuning.vision=lora",
        "training.epochs=9",
        "data.num_samples=5",
        "data.options.colour='red'",
        "lora.r=4",
    ]
    assert {item: key(jsonl_recipe, item) for item in irrelevant} == dict.fromkeys(irrelevant, base)

    image = workspace / "d" / "img" / "a.png"
    os.utime(image, (1, 1))  # a touched file with the same bytes is the same input
    assert key(jsonl_recipe) == base
    write_image(image, colour="blue")
    assert key(jsonl_recipe) != base, "an image's content is part of the fingerprint"
    write_image(image)
    assert key(jsonl_recipe) == base
    rows = (workspace / "d" / "set.jsonl").read_text()
    (workspace / "d" / "set.jsonl").write_text(rows.replace('"b"', '"c"'))
    assert key(jsonl_recipe) != base, "the jsonl's content is part of the fingerprint"
    (workspace / "d" / "set.jsonl").write_text(rows)

    (workspace / "model" / "model.safetensors").write_text("other weights")
    (workspace / "model" / "generation_config.json").write_text('{"do_sample": true}')
    assert key(jsonl_recipe) == base, "weights do not change tokenisation"
    (workspace / "model" / "tokenizer.json").write_text('{"changed": 1}')
    assert key(jsonl_recipe) != base, "the tokenizer does"
    (workspace / "model" / "tokenizer.json").write_text("{}")
    assert key(jsonl_recipe, cache_dir=workspace / "elsewhere") == base, "a cache directory is not an input"

    monkeypatch.setattr(cache, "CODE_VERSION", cache.CODE_VERSION + 1)
    assert key(jsonl_recipe) != base
    monkeypatch.undo()
    monkeypatch.setattr(cache, "_version", lambda name: "0.0-other")
    assert key(jsonl_recipe) != base


def test_a_hit_does_not_read_unchanged_files_again(
    jsonl_recipe: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache, "_SETTLE_NS", -(10**12))  # the files were written a moment ago
    reads: list[str] = []
    real = cache.file_digest
    monkeypatch.setattr(cache, "file_digest", lambda path: reads.append(Path(path).name) or real(path))
    first = key(jsonl_recipe)
    assert {"set.jsonl", "a.png", "tokenizer.json"} <= set(reads)
    reads.clear()
    assert key(jsonl_recipe) == first and reads == []
    image = workspace / "d" / "img" / "a.png"
    before = image.stat()
    content = bytearray(image.read_bytes())
    content[len(content) // 2] ^= 1
    image.write_bytes(content)  # same size, other bytes; then put the old mtime back
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert key(jsonl_recipe) != first and reads == ["a.png"]


def test_remembered_digests_of_files_gone_or_changed_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache, "_SETTLE_NS", -(10**12))
    files = {name: tmp_path / f"{name}.bin" for name in ("kept", "gone", "changed", "new")}
    for name, path in files.items():
        path.write_bytes(name.encode())

    def remembered() -> set[str]:
        stored = json.loads((tmp_path / "cache" / "tokenized" / "file-digests.json").read_text())
        return {Path(name).stem for name in stored}

    digests = cache._Digests(tmp_path / "cache")
    for name in ("kept", "gone", "changed"):
        digests(files[name])
    digests.save()
    assert remembered() == {"kept", "gone", "changed"}
    files["gone"].unlink()
    files["changed"].write_bytes(b"other bytes")
    again = cache._Digests(tmp_path / "cache")
    again(files["new"])
    again.save()
    assert remembered() == {"kept", "new"}


def test_fingerprint_of_builtin_and_plugin_sources(
    jsonl_recipe: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmtune_cli.data import synthetic

    builtin = ("data.source=builtin:synthetic-detection",)
    base = key(jsonl_recipe, *builtin)
    assert key(jsonl_recipe, *builtin, "data.num_samples=11") != base, "num_samples sizes a built-in set"
    assert key(jsonl_recipe, *builtin, "data.options.image_size=300") != base
    assert key(jsonl_recipe, "data.source=builtin:synthetic-vqa") != base
    monkeypatch.setattr(synthetic, "DATA_VERSION", synthetic.DATA_VERSION + 1)
    assert key(jsonl_recipe, *builtin) != base

    plugin = workspace / "p.py"
    plugin.write_text("def f(dataset_config, processor, split, split_ratio):\n    return []\n")
    source = f"data.source={plugin}:f"
    first = key(jsonl_recipe, source)
    assert key(jsonl_recipe, source, "data.options.colour='red'") != first, "a plugin reads data.options"
    plugin.write_text("def f(dataset_config, processor, split, split_ratio):\n    return [1]\n")
    assert key(jsonl_recipe, source) != first, "a plugin's code is part of the fingerprint"


def test_unknown_and_missing_sources_fail_before_loading_anything(workspace: Path) -> None:
    result = tokenize(SMOKE, *sets("data.source=builtin:coco"), code=2)
    assert "unknown built-in dataset 'builtin:coco'" in result.stderr and "Traceback" not in result.output
    result = tokenize(SMOKE, *sets("data.source=nowhere/at-all.jsonl"), code=2)
    # --set is relative to the current directory; the message names the place it looked.
    assert f"data.source: {workspace / 'nowhere' / 'at-all.jsonl'} does not exist" in result.stderr
    result = tokenize(SMOKE, *sets(f"data.source={workspace}/gone.py:get_custom_dataset"), code=2)
    assert "plugin file" in result.stderr and "gone.py does not exist" in result.stderr
    for argv in (["tokenize", "--help"], ["tokenize", SMOKE, "--set", "data.source=builtin:coco"]):
        assert _heavy_modules_after(argv, workspace, workspace / "empty-cache")[1] == set(), argv


# --- building, hits, the model stack -------------------------------------------------------------------


def _heavy_modules_after(argv: list[str], cwd: Path, cache_dir: Path) -> tuple[str, set[str]]:
    probe = (
        "import sys\n"
        "from vlmtune_cli.cli import main\n"
        f"sys.argv = {['vlmtune', *argv]!r}\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY', ' '.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    env = {**os.environ, "VLMTUNE_CACHE_DIR": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd, env=env, check=False, timeout=120
    )
    last = done.stderr.strip().splitlines()[-1].split()
    assert last[0] == "HEAVY", done.stderr
    return done.stdout, set(last[1:])


@pytest.mark.slow
def test_build_then_cache_hit_without_the_model_stack_and_force(workspace: Path, cache_dir: Path) -> None:
    args = [SMOKE, *sets(*SMALL, "data.seed=101")]
    built = tokenize(*args)
    assert " built in " in built.stdout and "token statistics" in built.stdout
    entry = Path(re.search(r"→ (\S+) built", built.stdout).group(1))
    assert entry.parent == cache_dir / "tokenized"
    assert {p.name for p in entry.iterdir()} == {"manifest.json", "stats.json", "train", "test"}
    stats = json.loads((entry / "stats.json").read_text())
    train = stats["splits"]["train"]
    assert (train["samples"], stats["splits"]["test"]["samples"]) == (8, 2)
    assert sum(train["histogram"]["counts"]) == train["seen"] == 8
    assert 0 < train["trained_fraction"]["assistant"] < train["trained_fraction"]["all"] < 1

    started = time.perf_counter()
    stdout, heavy = _heavy_modules_after(["tokenize", *args], workspace, cache_dir)
    assert heavy == set(), "a cache hit must not load the model stack"
    assert " cache hit in " in stdout and str(entry) in stdout and "token statistics" in stdout
    assert time.perf_counter() - started < 20

    payload = as_json(*args)
    assert payload["hit"] is True and payload["cache"] == str(entry) and payload["stats"] == stats
    assert payload["counts"]["train"] == {
        "samples": 8,
        "dropped_overlength": 0,
        "dropped_untrained": 0,
        "dropped_bad_boxes": 0,
        "clipped_boxes": 0,
        "unparsed_answers": 0,
    }
    forced = as_json(*args, "--force")
    assert forced["hit"] is False and forced["cache"] == str(entry)
    assert not list((cache_dir / "tokenized").glob(f".{entry.name}.*-*")), "no staging or old copy left"


@pytest.mark.slow
@pytest.mark.parametrize("shortcut", [True, False], ids=["ids-without-pixels", "full-processor"])
def test_cached_batches_equal_the_in_memory_encoding(
    workspace: Path, cache_dir: Path, shortcut: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from vlmtune_cli.data.sources import load_splits
    from vlmtune_cli.encode.build import open_splits, read_rows, tokenize_recipe
    from vlmtune_cli.encode.labels import LabelSpec, VisionCollator, encode_sample
    from vlmtune_cli.models import loading

    source = write_jsonl(workspace / "set.jsonl", mixed_rows(workspace))
    # min_pixels below max_pixels: most images are resized before they are stored.
    recipe = load_recipe(SMOKE, [f"data.source={source}", "data.split_ratio=1.0", "data.min_pixels=3136"])
    processor = loading.load_processor(recipe.model, recipe.data, cache_dir)
    family = loading.load_family(recipe.model, cache_dir)
    result = tokenize_recipe(
        recipe, cache_dir, processor=processor, family=family, force=True, ids_without_pixels=shortcut
    )
    assert result.manifest["images"] == "resized" and result.manifest["ids_without_pixels"] is shortcut
    samples = load_splits(recipe.data, box_format=family.box_format, processor=processor)["train"]
    stored = {row["id"]: row["image_sizes"] for row in read_rows(result, 10, ("id", "image_sizes"))}
    assert stored["wide"] != [[300, 200]] and stored["text"] == []  # stored at the model's resolution

    spec = LabelSpec.for_family(processor.tokenizer, family)
    in_memory = [encode_sample(processor, spec, s, "assistant", 512) for s in samples]
    train, test = open_splits(result, processor)
    assert test is None and [row["id"] for row in read_rows(result, 10)] == [s["id"] for s in samples]
    collate = VisionCollator(pad_id=spec.pad_id)
    for rows in ([0, 1, 2, 3, 4], [4, 1], [3]):
        expected, got = collate([in_memory[i] for i in rows]), collate([train[i] for i in rows])
        assert expected.keys() == got.keys()
        for name in expected:
            assert expected[name].dtype == got[name].dtype, name
            assert torch.equal(expected[name], got[name]), name


@pytest.mark.slow
def test_workers_write_the_same_cache(workspace: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmtune_cli.encode import build

    monkeypatch.setattr(build, "BATCH_ROWS", 3)  # shards of 3 samples: several tasks for two workers
    args = [SMOKE, *sets("data.num_samples=14", "data.max_samples=14", "data.seed=202")]
    one = as_json(*args, "--workers", "1", "--force")
    two = as_json(*args, "--workers", "2", "--force")
    assert two["stats"]["workers"] == 2 and one["stats"]["workers"] == 1
    strip = ("build_seconds", "workers")
    assert {k: v for k, v in one["stats"].items() if k not in strip} == {
        k: v for k, v in two["stats"].items() if k not in strip
    }
    result = build.tokenize_recipe(load_recipe(SMOKE, args[2::2]), cache_dir)
    assert result.hit and len(result.manifest["splits"]["train"]["shards"]) > 2
    columns = ("id", "input_ids", "labels", "images", "image_sizes", "image_grid_thw", "mm_token_type_ids")
    rows_two = build.read_rows(result, 100, columns)
    build.tokenize_recipe(load_recipe(SMOKE, args[2::2]), cache_dir, force=True, workers=1)
    again = build.tokenize_recipe(load_recipe(SMOKE, args[2::2]), cache_dir)
    assert again.hit and len(again.manifest["splits"]["train"]["shards"]) < len(
        result.manifest["splits"]["train"]["shards"]
    )
    assert build.read_rows(again, 100, columns) == rows_two


@pytest.mark.slow
def test_each_source_kind(workspace: Path) -> None:
    import datasets

    source = write_jsonl(workspace / "set.jsonl", mixed_rows(workspace))
    jsonl = as_json(SMOKE, *sets(f"data.source={source}", "data.split_ratio=0.6"))
    assert jsonl["counts"]["train"]["samples"] == 3 and jsonl["counts"]["test"]["samples"] == 2

    vqa = as_json(SMOKE, *sets("data.source=builtin:synthetic-vqa", *SMALL))
    assert vqa["counts"]["train"]["samples"] == 8

    rows = [
        {"id": f"r{i}", "messages": chat("Colour?", "red"), "images": [Image.new("RGB", (64, 48), "red")]}
        for i in range(5)
    ]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:3]), "test": datasets.Dataset.from_list(rows[3:])}
    ).save_to_disk(workspace / "saved")
    folder = as_json(SMOKE, *sets(f"data.source={workspace / 'saved'}"))
    assert (folder["counts"]["train"]["samples"], folder["counts"]["test"]["samples"]) == (3, 2)

    (workspace / "my_data.py").write_text(
        "from PIL import Image\n"
        "def get_custom_dataset(dataset_config, processor, split, split_ratio):\n"
        "    assert processor is not None  # tokenize hands the plugin the model's processor\n"
        "    n = 4 if split == 'train' else 2\n"
        "    user = [{'type': 'image'}, {'type': 'text', 'text': 'Colour?'}]\n"
        "    answer = [{'type': 'text', 'text': dataset_config.options['colour']}]\n"
        "    return [{'messages': [{'role': 'user', 'content': user}, {'role': 'assistant', 'content': answer}],\n"
        "             'images': [Image.new('RGB', (56, 56), 'blue')]} for _ in range(n)]\n"
    )
    plugin = as_json(SMOKE, *sets("data.source=my_data.py:get_custom_dataset", "data.options.colour='blue'"))
    assert (plugin["counts"]["train"]["samples"], plugin["counts"]["test"]["samples"]) == (4, 2)

    hub = tokenize(SMOKE, *sets("data.source=someone/nutrition-labels"), code=1)
    assert "Hub is unreachable" in hub.stderr and "Traceback" not in hub.output


@pytest.mark.slow
def test_show_marks_exactly_the_assistant_tokens(workspace: Path) -> None:
    rows = [
        {
            "id": "v2",
            "images": [write_image(workspace / "img" / "a.png")],
            "messages": [
                *chat("Colour?", "red square", system="You find colours."),
                {"role": "user", "content": [{"type": "text", "text": "And the assistant's?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "none, assistant"}]},
            ],
        }
    ]
    source = write_jsonl(workspace / "one.jsonl", rows)
    result = tokenize(SMOKE, *sets(f"data.source={source}", "data.split_ratio=1.0"), "--show", "1")
    shown = result.stdout[result.stdout.index("── train · v2") :]
    assert re.findall(r"⟦(.*?)⟧", shown, flags=re.S) == ["red square<|im_end|>", "none, assistant<|im_end|>"]
    assert shown.count("‹image ×64›") == 1 and "<|image_pad|>" not in shown
    assert "<|im_start|>assistant\n⟦red square" in shown, "the assistant header itself is masked"
    payload = as_json(SMOKE, *sets(f"data.source={source}", "data.split_ratio=1.0"), "--show", "1")
    kinds = [(part["kind"], part["text"]) for part in payload["samples"][0]["segments"]]
    assert [text for kind, text in kinds if kind == "trained"] == ["red square<|im_end|>", "none, assistant<|im_end|>"]
    assert ("image", "‹image ×64›") in kinds


# --- drops and bad input -------------------------------------------------------------------------------


def cache_entries(cache_dir: Path) -> set[str]:
    return {p.name for p in (cache_dir / "tokenized").iterdir() if p.is_dir()}


@pytest.mark.slow
def test_overlength_drop_is_counted_and_error_builds_nothing(workspace: Path, cache_dir: Path) -> None:
    rows = [
        {
            "id": f"s{i}",
            "messages": chat("Colour?" + " please" * (40 * (i % 2)), "red"),
            "images": [write_image(workspace / "img" / "a.png")],
        }
        for i in range(6)
    ]
    source = write_jsonl(workspace / "long.jsonl", rows)
    data = (f"data.source={source}", "data.split_ratio=1.0")
    dropped = tokenize(SMOKE, *sets(*data, "data.max_length=120"))
    assert "train: dropped 3 longer than max_length (s1, s3, s5)" in dropped.stdout
    stats = as_json(SMOKE, *sets(*data, "data.max_length=120"))["stats"]["splits"]["train"]
    assert (stats["samples"], stats["over_max_length"], stats["length"]["max"] > 120) == (3, 3, True)

    before = cache_entries(cache_dir)
    error = tokenize(SMOKE, *sets(*data, "data.max_length=121", "data.overlength=error"), code=2)
    assert re.search(r"sample s1 of split 'train' has \d+ tokens, over data.max_length \(121\)", error.stderr)
    assert "Traceback" not in error.output and cache_entries(cache_dir) == before


@pytest.mark.slow
def test_bad_inputs_are_messages_and_build_nothing(workspace: Path, cache_dir: Path) -> None:
    write_image(workspace / "ok.png")
    (workspace / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    before = cache_entries(cache_dir)
    cases = {
        "missing": (
            [
                {"id": "m1", "messages": chat("q", "a"), "images": ["ok.png"]},
                {"id": "m2", "messages": chat("q", "a"), "images": ["gone.png"]},
            ],
            r"line 2 \(id m2\): image \S*gone\.png does not exist",
        ),
        "corrupt": (
            [{"id": "c1", "messages": chat("q", "a"), "images": ["bad.png"]}],
            r"line 1 \(id c1\): image \S*bad\.png cannot be read",
        ),
        "unanswered": (
            [{"id": "u1", "messages": chat("q", None), "images": ["ok.png"]}],
            r"split 'train' of \S+ has no trainable sample \(train: dropped 1 with no trained token",
        ),
        "empty": ([], r"gives no samples for split 'train'"),
    }
    for name, (rows, message) in cases.items():
        source = write_jsonl(workspace / f"{name}.jsonl", rows)
        result = tokenize(SMOKE, *sets(f"data.source={source}", "data.split_ratio=1.0"), code=2)
        assert re.search(message, result.stderr), (name, result.stderr)
        assert "Traceback" not in result.output
    assert cache_entries(cache_dir) == before

    mixed = write_jsonl(
        workspace / "mixed.jsonl",
        [
            {"id": "u1", "messages": chat("q", None), "images": ["ok.png"]},
            {"id": "ok", "messages": chat("q", "a"), "images": ["ok.png"]},
        ],
    )
    kept = tokenize(SMOKE, *sets(f"data.source={mixed}", "data.split_ratio=1.0"))
    assert "train: dropped 1 with no trained token (u1)" in kept.stdout

    (workspace / "plug.py").write_text(
        "def wrong(dataset_config, processor, split, split_ratio):\n    return {'rows': []}\n"
    )
    for function, message in (
        ("nothing", "has no function 'nothing'"),
        ("wrong", "plug.py:wrong returned a dict for split 'train'"),
    ):
        result = tokenize(SMOKE, *sets(f"data.source=plug.py:{function}"), code=2)
        assert message in result.stderr and "Traceback" not in result.output


@pytest.mark.slow
def test_a_killed_build_leaves_nothing_that_looks_complete(workspace: Path, cache_dir: Path) -> None:
    write_image(workspace / "ok.png")
    os.mkfifo(workspace / "slow.png")  # opening it blocks: the build hangs half-way, where we kill it
    rows = [{"id": f"s{i}", "messages": chat("q", "a"), "images": ["ok.png"]} for i in range(3)]
    rows.append({"id": "s3", "messages": chat("q", "a"), "images": ["slow.png"]})
    source = write_jsonl(workspace / "set.jsonl", rows)
    argv = ["tokenize", SMOKE, *sets(f"data.source={source}", "data.split_ratio=1.0")]
    env = {**os.environ, "VLMTUNE_CACHE_DIR": str(cache_dir)}
    process = subprocess.Popen(
        [sys.executable, "-c", "from vlmtune_cli.cli import main; main()", *argv],
        cwd=workspace,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while not list((cache_dir / "tokenized").glob(".*.building-*/train")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    recipe = load_recipe(SMOKE, argv[3::2])
    fp = cache.fingerprint(recipe, cache_dir)
    assert (
        not cache.entry_path(cache_dir, fp.key).exists()
        and cache.read_entry(cache.entry_path(cache_dir, fp.key)) is None
    )
    assert list((cache_dir / "tokenized").glob(f".{fp.key}.building-*")), "the staging directory stays behind"

    (workspace / "slow.png").unlink()
    write_image(workspace / "slow.png")
    payload = as_json(*argv[1:])  # a new fingerprint (the image is a file now); its build clears the leftovers
    assert payload["hit"] is False and payload["counts"]["train"]["samples"] == 4
    assert not list((cache_dir / "tokenized").glob(".*.building-*"))


@pytest.mark.slow
def test_train_reads_the_cache(workspace: Path, cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    import datasets

    from vlmtune_cli.models import loading
    from vlmtune_cli.train.trainer import _encoded_splits

    args = [SMOKE, *sets(*SMALL, "data.seed=303")]
    built = as_json(*args)
    recipe = load_recipe(SMOKE, args[2::2])
    processor = loading.load_processor(recipe.model, recipe.data, cache_dir)
    family = loading.load_family(recipe.model, cache_dir)
    capsys.readouterr()
    train, test = _encoded_splits(recipe, processor, family, cache_dir)
    assert f"tokenized data: {built['cache']} (cache hit" in capsys.readouterr().err
    assert isinstance(train, datasets.Dataset) and isinstance(test, datasets.Dataset)
    assert len(train) == built["counts"]["train"]["samples"] and len(test) == built["counts"]["test"]["samples"]
    assert {"input_ids", "labels", "pixel_values", "image_grid_thw"} <= set(train[0])


def test_tokenize_workers_die_on_sigterm_whatever_the_parent_handles() -> None:
    """`vlmtune train` turns SIGTERM into "checkpoint, then stop". Forked tokenize workers inherited that handler, so a
    worker stuck at the end of a build ignored the SIGTERM with which `Pool.terminate` ends it, and the build never
    returned (seen in CI). The pool's initializer gives them the default handlers back."""
    import multiprocessing
    import signal

    from vlmtune_cli.encode import build

    previous = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        with multiprocessing.get_context("fork").Pool(2, initializer=build._worker_signals) as pool:
            handlers = pool.map(signal.getsignal, [signal.SIGTERM, signal.SIGINT])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert handlers == [signal.SIG_DFL, signal.SIG_IGN]
