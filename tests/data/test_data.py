"""Dataset sources, subsets and splits; every bad input is a UsageError that names what to fix."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from vlmtune_cli.config.schema import DataSection
from vlmtune_cli.data.sources import load_splits
from vlmtune_cli.errors import UsageError, VlmtuneError
from vlmtune_cli.models.boxes import FORMATS, parse_boxes


def load(box_format: str = "qwen2-vl-grid", **data) -> dict[str, list[dict]]:
    return load_splits(DataSection(**data), box_format=box_format)


def check_shape(sample: dict) -> None:
    assert set(sample) - {"where"} == {"id", "messages", "images", "target"}  # where: file and line, for messages
    parts = [p for m in sample["messages"] for p in m["content"]]
    assert sum(p["type"] == "image" for p in parts) == len(sample["images"])
    assert all(isinstance(img, Image.Image) and img.mode == "RGB" for img in sample["images"])
    assert all(m["role"] in ("system", "user", "assistant") for m in sample["messages"])


def fingerprint(splits: dict[str, list[dict]]) -> list:
    return [
        (s["id"], json.dumps(s["messages"]), [i.tobytes() for i in s["images"]])
        for split in splits.values()
        for s in split
    ]


# --- built-in synthetic sets ---------------------------------------------------------------------------


def test_synthetic_detection_same_seed_same_data_other_seed_differs() -> None:
    first, again, other = load(num_samples=12), load(num_samples=12), load(num_samples=12, seed=7)
    assert fingerprint(first) == fingerprint(again)
    pixels = [img for _, _, img in fingerprint(first)]
    assert pixels != [img for _, _, img in fingerprint(other)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_synthetic_detection_answer_parses_back_to_the_target_exactly(fmt: str) -> None:
    splits = load(fmt, num_samples=10, split_ratio=1.0)
    for sample in splits["train"]:
        check_shape(sample)
        assert sample["id"].startswith("synthetic-detection-")
        answer = sample["messages"][-1]["content"][0]["text"]
        result = parse_boxes(fmt, answer, tuple(sample["target"]["image_size"]))
        assert result.ok and [list(b) for b in result.boxes] == sample["target"]["boxes"]
        assert sample["images"][0].size == tuple(sample["target"]["image_size"])


def test_synthetic_fixed_image_size_off_the_grid_stays_exact() -> None:
    for sample in load(num_samples=5, options={"image_size": 224})["train"]:
        assert sample["images"][0].size == (224, 224)
        answer = sample["messages"][-1]["content"][0]["text"]
        assert [list(b) for b in parse_boxes("qwen2-vl-grid", answer, (224, 224)).boxes] == sample["target"]["boxes"]
    with pytest.raises(UsageError, match="image_size"):
        load(num_samples=2, options={"image_size": [32, "x"]})


def test_synthetic_vqa_answers() -> None:
    splits = load(source="builtin:synthetic-vqa", num_samples=10)
    for sample in splits["train"] + splits["test"]:
        check_shape(sample)
        assert sample["messages"][-1]["content"][0]["text"] == sample["target"]["answer"]


def test_two_hundred_synthetic_samples_are_cheap() -> None:
    start = time.perf_counter()
    splits = load(num_samples=200)
    assert len(splits["train"]) == 160 and len(splits["test"]) == 40
    assert time.perf_counter() - start < 10  # ~0.3 s alone; generous for a shared 2-core machine


def test_split_sizes_max_samples_and_nesting() -> None:
    base = load(num_samples=20)
    assert (len(base["train"]), len(base["test"])) == (16, 4)
    assert not {s["id"] for s in base["train"]} & {s["id"] for s in base["test"]}
    assert load(num_samples=20, split_ratio=1.0)["test"] == []
    small = load(num_samples=20, max_samples=10, split_ratio=0.5)
    assert (len(small["train"]), len(small["test"])) == (5, 5)
    smaller = load(num_samples=20, max_samples=4, split_ratio=0.5)
    ids = lambda s: {x["id"] for x in s["train"] + s["test"]}  # noqa: E731
    assert ids(smaller) < ids(small) < ids(base)  # a smaller subset is part of a larger one
    tiny = load(num_samples=2, split_ratio=0.9)
    assert (len(tiny["train"]), len(tiny["test"])) == (1, 1)  # the test split keeps one while ratio < 1
    assert list(load(num_samples=3, train_split="fit", test_split="eval")) == ["fit", "eval"]


def test_same_split_names_and_unknown_builtin() -> None:
    with pytest.raises(UsageError, match="both 'train'"):
        load(test_split="train")
    with pytest.raises(UsageError, match="unknown built-in dataset") as info:
        load(source="builtin:coco")
    assert "builtin:synthetic-detection" in info.value.hint


# --- jsonl ---------------------------------------------------------------------------------------------


def write_png(path: Path, colour: str = "red", size: tuple[int, int] = (20, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def chat(question: str, answer: str, image: bool = True) -> list[dict]:
    user = ([{"type": "image"}] if image else []) + [{"type": "text", "text": question}]
    # List content throughout: an arrow column cannot hold strings in some rows and lists in others.
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def test_jsonl_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_png(tmp_path / "d" / "img" / "a.png", size=(30, 40))
    write_png(tmp_path / "d" / "img" / "b.png", "blue")
    rows = [
        {
            "id": "a",
            "messages": chat("Box?", "[1, 2, 3, 4]"),
            "images": ["img/a.png"],
            "target": {"boxes": [[1, 2, 3, 4]], "labels": ["t"]},
        },
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image", "image": "img/b.png"}, "What colour?"]},
                {"role": "assistant", "content": [{"type": "text", "text": "blue"}]},
            ]
        },
        "",
        {"messages": chat("Colour?", "red", image=False), "images": ["img/a.png"]},  # no image part
        {"messages": chat("Text only?", "yes", image=False)},
    ]
    path = write_jsonl(tmp_path / "d" / "set.jsonl", rows)
    monkeypatch.chdir(tmp_path)  # image paths resolve against the jsonl file, not the working directory
    samples = load(source="d/set.jsonl", split_ratio=1.0)["train"]
    by_id = {s["id"]: s for s in samples}
    assert set(by_id) == {"a", "set.jsonl:2", "set.jsonl:4", "set.jsonl:5"}
    for sample in samples:
        check_shape(sample)
    assert by_id["a"]["images"][0].size == (30, 40) and by_id["a"]["target"]["boxes"] == [[1, 2, 3, 4]]
    inline = by_id["set.jsonl:2"]
    assert inline["messages"][0]["content"] == [{"type": "text", "text": "Be brief."}]
    assert inline["messages"][1]["content"][0] == {"type": "image"}
    assert inline["images"][0].getpixel((0, 0)) == (0, 0, 255) and inline["target"] == {"answer": "blue"}
    assert by_id["set.jsonl:4"]["messages"][0]["content"][0] == {"type": "image"}
    assert by_id["set.jsonl:5"]["images"] == []
    assert fingerprint(load(source=str(path), seed=3)) == fingerprint(load(source=str(path), seed=3))
    assert len(load(source=str(path), max_samples=3)["train"]) == 2


def test_jsonl_missing_image_names_line_and_path(tmp_path: Path) -> None:
    write_png(tmp_path / "ok.png")
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"messages": chat("q", "a"), "images": ["ok.png"]},
            {"messages": chat("q", "a"), "images": ["missing.png"]},
        ],
    )
    with pytest.raises(UsageError, match=r"s\.jsonl, line 2: image .*missing\.png does not exist"):
        load(source=str(path), split_ratio=1.0)
    named = write_jsonl(tmp_path / "n.jsonl", [{"id": "p7", "messages": chat("q", "a"), "images": ["gone.png"]}])
    with pytest.raises(UsageError, match=r"line 1 \(id p7\): image .*gone\.png does not exist"):
        load(source=str(named), split_ratio=1.0)


def test_jsonl_corrupt_image_and_bad_rows(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(UsageError, match=r"line 1: image .*bad\.png cannot be read"):
        load(
            source=str(write_jsonl(tmp_path / "a.jsonl", [{"messages": chat("q", "a"), "images": ["bad.png"]}])),
            split_ratio=1.0,
        )
    with pytest.raises(UsageError, match="line 2: not valid JSON"):
        load(source=str(write_jsonl(tmp_path / "b.jsonl", [{"messages": chat("q", "a", False)}, "{oops"])))
    with pytest.raises(UsageError, match="1 image parts in the messages but 0 images"):
        load(source=str(write_jsonl(tmp_path / "c.jsonl", [{"messages": chat("q", "a")}])), split_ratio=1.0)
    with pytest.raises(UsageError, match="role 'bot'"):
        load(
            source=str(write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "bot", "content": "x"}]}])),
            split_ratio=1.0,
        )
    with pytest.raises(UsageError, match="'messages' list"):
        load(source=str(write_jsonl(tmp_path / "e.jsonl", [{"text": "x"}])), split_ratio=1.0)


def test_empty_source_and_missing_paths(tmp_path: Path) -> None:
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(UsageError, match=r"empty\.jsonl' gives no samples for split 'train'"):
        load(source=str(empty))
    for missing in ("nope.jsonl", "data/missing.jsonl"):
        with pytest.raises(UsageError, match="is not a file, folder"):
            load(source=missing)
    with pytest.raises(UsageError, match=f"data.source: {tmp_path / 'none'} does not exist"):
        load(source=str(tmp_path / "none"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UsageError, match="not .jsonl"):
        load(source=str(tmp_path / "notes.txt"))


# --- plugins -------------------------------------------------------------------------------------------

PLUGIN = """
from PIL import Image

def rows(n, colour):
    user = [{"type": "image"}, {"type": "text", "text": "Colour?"}]
    return [{"messages": [{"role": "user", "content": user},
                          {"role": "assistant", "content": [{"type": "text", "text": colour}]}],
             "images": [Image.new("RGB", (8, 8), colour)]} for _ in range(n)]

def as_list(dataset_config, processor, split, split_ratio):
    assert processor is None and 0 < split_ratio <= 1
    return rows(6 if split == "train" else 3, dataset_config.options.get("colour", "red"))

def as_dataset(dataset_config, processor, split, split_ratio):
    import datasets
    return datasets.Dataset.from_list(rows(4 if split == "train" else 2, "green"))

def by_attribute(dataset_config, processor, split, split_ratio):
    # As the docs promise: data.options as dataset_config, read by attribute, by key or with get().
    assert dict(dataset_config) == {"colour": "blue", "count": 5}
    assert dataset_config["count"] == dataset_config.get("count") == 5
    return rows(dataset_config.count if split == "train" else 2, dataset_config.colour)

def seed_of(dataset_config, processor, split, split_ratio):
    return rows(dataset_config.seed, "red")

def typo(dataset_config, processor, split, split_ratio):
    return rows(1, dataset_config.colur)

def broken(dataset_config, processor, split, split_ratio):
    raise RuntimeError("no such bucket")

def wrong_type(dataset_config, processor, split, split_ratio):
    return {"train": []}

def corrupt(dataset_config, processor, split, split_ratio):
    return [{"messages": rows(1, "red")[0]["messages"], "images": [{"bytes": b"not an image"}]}]

def corrupt_feature(dataset_config, processor, split, split_ratio):
    import datasets
    features = datasets.Features({"images": datasets.Sequence(datasets.Image())})
    return datasets.Dataset.from_dict({"images": [[{"bytes": b"junk", "path": "x.png"}]]}, features)
"""


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "my_data.py"
    path.write_text(PLUGIN)
    return path


def test_plugin_returning_lists_keeps_its_splits(plugin: Path) -> None:
    splits = load(source=f"{plugin}:as_list", options={"colour": "blue"})
    assert (len(splits["train"]), len(splits["test"])) == (6, 3)
    sample = splits["train"][0]
    check_shape(sample)
    assert sample["id"] == "my_data-train-00000" and sample["target"] == {"answer": "blue"}
    capped = load(source=f"{plugin}:as_list", max_samples=2)
    assert (len(capped["train"]), len(capped["test"])) == (2, 2)  # max_samples applies per split


def test_plugin_reads_data_options_as_attributes(plugin: Path) -> None:
    splits = load(source=f"{plugin}:by_attribute", options={"colour": "blue", "count": 5})
    assert (len(splits["train"]), len(splits["test"])) == (5, 2)
    assert splits["train"][0]["target"] == {"answer": "blue"}
    # A [data] key is read through when no option has its name.
    assert len(load(source=f"{plugin}:seed_of", seed=3)["train"]) == 3
    with pytest.raises(
        UsageError, match=r"AttributeError: dataset_config has no 'colur': set it under \[data.options\]"
    ):
        load(source=f"{plugin}:typo", options={"colour": "blue"})


def test_plugin_returning_datasets(plugin: Path) -> None:
    splits = load(source=f"{plugin}:as_dataset")
    assert (len(splits["train"]), len(splits["test"])) == (4, 2)
    assert splits["test"][0]["images"][0].getpixel((0, 0)) == (0, 128, 0)


@pytest.mark.parametrize(
    "suffix, match",
    [
        ("broken", r"my_data\.py:broken failed for split 'train': RuntimeError: no such bucket"),
        ("wrong_type", r"my_data\.py:wrong_type returned a dict for split 'train'"),
        ("missing", "has no function 'missing'"),
        ("corrupt", r"my_data-train, row 0: image embedded image cannot be read \(corrupt"),
        ("corrupt_feature", r"my_data-train, row 0: an image is corrupt"),
    ],
)
def test_plugin_errors(plugin: Path, suffix: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        load(source=f"{plugin}:{suffix}")


def test_plugin_file_missing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="plugin file .*nowhere.py does not exist"):
        load(source=f"{tmp_path}/nowhere.py:get_custom_dataset")


# --- folders and the hub -------------------------------------------------------------------------------


def hf_rows(n: int, colour: str) -> list[dict]:
    return [
        {
            "id": f"{colour}{i}",
            "messages": chat("Colour?", colour),
            "images": [Image.new("RGB", (8, 8), colour)],
            "target": {"answer": colour},
        }
        for i in range(n)
    ]


def test_saved_dataset_dict_keeps_splits(tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(hf_rows(5, "red")),
            "test": datasets.Dataset.from_list(hf_rows(3, "blue")),
        }
    ).save_to_disk(tmp_path / "dd")
    splits = load(source=str(tmp_path / "dd"), max_samples=4)
    assert [s["id"] for s in splits["test"]] == ["blue0", "blue1", "blue2"]
    assert len(splits["train"]) == 4 and all(s["target"] == {"answer": "red"} for s in splits["train"])
    check_shape(splits["train"][0])
    with pytest.raises(UsageError, match="has splits train, test but not 'fit'"):
        load(source=str(tmp_path / "dd"), train_split="fit")


def test_saved_dataset_and_parquet_folder(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(hf_rows(10, "red")).save_to_disk(tmp_path / "ds")
    splits = load(source=str(tmp_path / "ds"), split_ratio=0.7)
    assert (len(splits["train"]), len(splits["test"])) == (7, 3)

    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_list(hf_rows(4, "red")).to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    datasets.Dataset.from_list(hf_rows(2, "blue")).to_parquet(str(tmp_path / "pq" / "test.parquet"))
    splits = load(source=str(tmp_path / "pq"))
    assert [s["id"] for s in splits["test"]] == ["blue0", "blue1"] and len(splits["train"]) == 4
    assert splits["train"][0]["images"][0].getpixel((0, 0)) == (255, 0, 0)
    datasets.Dataset.from_list(hf_rows(3, "red")).to_parquet(str(tmp_path / "pq" / "validation.parquet"))
    assert len(load(source=str(tmp_path / "pq"))["train"]) == 4  # files of other splits are not mixed in
    (tmp_path / "nested" / "train").mkdir(parents=True)
    datasets.Dataset.from_list(hf_rows(5, "red")).to_parquet(str(tmp_path / "nested" / "train" / "0.parquet"))
    splits = load(source=str(tmp_path / "nested"), split_ratio=0.6)  # only a train split: cut by split_ratio
    assert (len(splits["train"]), len(splits["test"])) == (3, 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither a dataset saved with save_to_disk nor .parquet"):
        load(source=str(tmp_path / "empty"))


def test_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(VlmtuneError, match="Hub is unreachable") as info:
        load(source="someone/nutrition-labels")
    assert "local source" in info.value.hint and time.perf_counter() - start < 10


def test_synthetic_json_boxes_are_in_the_processors_resized_pixels() -> None:
    class Processor:  # the attributes processor_resized_size reads off a Qwen-VL image processor
        class image_processor:  # noqa: N801
            size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
            patch_size, merge_size = 14, 2

    data = DataSection(num_samples=4, split_ratio=1.0, options={"image_size": [200, 250]})
    for sample in load_splits(data, box_format="qwen2.5-vl-json", processor=Processor())["train"]:
        bbox = json.loads(sample["messages"][-1]["content"][0]["text"])[0]["bbox_2d"]
        assert max(bbox[0], bbox[2]) <= 196 and max(bbox[1], bbox[3]) <= 252  # smart_resize(200, 250)
        result = parse_boxes("qwen2.5-vl-json", json.dumps([{"bbox_2d": bbox}]), (200, 250), (196, 252))
        for got, want in zip(result.boxes[0], sample["target"]["boxes"][0], strict=True):
            assert abs(got - want) <= 0.52  # half a resized pixel in original pixels
