"""Dataset sources, subsets and splits: everything `[data]` in a recipe can point at.

A sample is the standard conversation form plus the ground truth the benchmark scores against::

    {"id": "synthetic-detection-00017",
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Detect ..."}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "<|box_start|>..."}]}],
     "images": [<PIL.Image.Image RGB>],            # one per {"type": "image"} part, in order
     "target": {"boxes": [[x1, y1, x2, y2]], "labels": ["nutrition table"]}}   # or {"answer": "..."}

`data.source` may be:

- `builtin:synthetic-detection` / `builtin:synthetic-vqa` (see `vlmtune_cli.data.synthetic`);
- a `.jsonl` file, one sample per line; images are paths relative to the file::

      {"id": "p1", "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text",
       "text": "Detect the nutrition table."}]}, {"role": "assistant", "content": [{"type": "boxes"}]}],
       "images": ["photos/p1.jpg"], "target": {"boxes": [[60, 120, 420, 600]], "labels": ["nutrition table"]}}

  An assistant part `{"type": "boxes"}` is written from `target.boxes` (pixels of the upright image) in the
  recipe's family format, after the boxes are checked (`data/answers.py`); images are opened upright (EXIF
  orientation applied, `data/images.py`). `content` may be a plain string. An image may instead sit inside its part:
  `{"type": "image", "image": "photos/p1.jpg"}`. Rows with images but no image part get the image parts
  prepended to their first user turn. `id` defaults to `<file>:<line>`; `target` to
  `{"answer": <last assistant text>}` (the benchmark parses boxes out of it with the recipe's box format);
- a folder written by `datasets` `save_to_disk` (Dataset or DatasetDict), or a folder of `.parquet` files
  (a file whose name or parent folder is the split name, e.g. `train-0000.parquet`, `test/x.parquet`,
  belongs to that split); rows in the form above, images as PIL images, `{"bytes": ...}` or paths;
- `path/to/file.py:function`, the old pipeline's plugin signature
  `function(dataset_config, processor, split, split_ratio)`, called once per split with the `[data]`
  section as `dataset_config` (`processor` may be None), returning a `datasets.Dataset` or a list of rows.
  The file runs with your rights, only because the recipe names it;
- a hub dataset id (`owner/name`, options `hub_config` and `hub_revision`), where the hub is reachable or
  the dataset is cached.

Splits. A source with both requested splits (a DatasetDict, a parquet folder, a plugin) keeps them;
`max_samples` then applies to each, after a seeded shuffle. Any other source is shuffled with `data.seed`,
cut to `max_samples`, and its first `round(n * split_ratio)` samples train, the rest test; while
`split_ratio < 1` the test split keeps at least one sample. Samples within a split are in source order.
Images are decoded only for the samples kept, so a subset of a large set stays cheap; `lazy_splits` builds each
sample only when it is read, so `vlmtune tokenize` holds one shard in memory whatever the dataset's size.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FunctionType
from typing import Any

from PIL import UnidentifiedImageError

from vlmtune_cli.config.schema import BUILTIN_DATASETS, DataSection
from vlmtune_cli.data import synthetic
from vlmtune_cli.data.answers import prepare
from vlmtune_cli.data.hub import load_hub
from vlmtune_cli.data.plugin_config import DatasetConfig
from vlmtune_cli.data.samples import to_sample
from vlmtune_cli.errors import UsageError
from vlmtune_cli.models.boxes import processor_resized_size

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

# A source is a count and a way to build sample i, so only the samples a subset keeps are materialised.
Rows = tuple[int, Callable[[int], dict[str, Any]]]


@dataclass(frozen=True)
class LazySplit:
    """The samples of one split, each built (images decoded, drawn) only when it is read."""

    indices: list[int]
    make: Callable[[int], dict[str, Any]]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.make(self.indices[k])


def source_kind(source: str) -> str:
    """What `data.source` names: "builtin", "plugin", "jsonl", "folder" or "hub" (looks at the disk, loads nothing).

    Raises UsageError for an unknown built-in, a file that is neither .jsonl nor a plugin, or nothing at all.
    """
    if source.startswith("builtin:"):
        if source not in BUILTIN_DATASETS:
            raise UsageError(
                f"unknown built-in dataset {source!r}", hint=f"built-in datasets: {', '.join(BUILTIN_DATASETS)}"
            )
        return "builtin"
    if re.search(r"\.py:[^/\\]+$", source):
        return "plugin"
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".jsonl":
            raise UsageError(f"data.source {str(path)!r} is a file but not .jsonl or a plugin 'file.py:function'")
        return "jsonl"
    if path.is_dir():
        return "folder"
    if _HUB_ID.match(source) and not source.endswith((".jsonl", ".json", ".parquet", ".py")):
        return "hub"
    if path.is_absolute():  # a recipe's relative path, made absolute against the recipe's folder (config/paths.py)
        raise UsageError(
            f"data.source: {path} does not exist",
            hint="a relative path in a recipe is relative to the recipe file's folder (in --set: to the current "
            "directory)",
        )
    raise UsageError(
        f"data.source {source!r} is not a file, folder, built-in dataset or hub id",
        hint=f"built-in datasets: {', '.join(BUILTIN_DATASETS)}",
    )


def plugin_file(source: str) -> tuple[Path, str]:
    """The file and function a plugin source `path/to/file.py:function` names; UsageError if the file is missing."""
    file, func_name = source.rsplit(":", 1)
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise UsageError(
            f"plugin file {path} does not exist",
            hint="data.source = 'path/to/file.py:function', the path relative to the recipe file's folder",
        )
    return path, func_name


def load_splits(data: DataSection, *, box_format: str, processor=None) -> dict[str, list[dict]]:
    """Load `data.source` and return `{data.train_split: [...], data.test_split: [...]}`, without the samples
    `data.bad_boxes = "drop"` leaves out."""
    return {
        name: [sample for sample in (split[k] for k in range(len(split))) if not sample.get("dropped")]
        for name, split in lazy_splits(data, box_format=box_format, processor=processor).items()
    }


def lazy_splits(data: DataSection, *, box_format: str, processor=None) -> dict[str, LazySplit]:
    """Like `load_splits`, but each sample is built when read, so memory does not grow with the dataset.

    Raises UsageError for a source that cannot be read or gives no training sample, VlmtuneError when a hub
    dataset cannot be reached.
    """
    if data.train_split == data.test_split:
        raise UsageError(f"data.train_split and data.test_split are both {data.train_split!r}; name two")
    source = data.source
    named, rows = None, None
    kind = source_kind(source)
    if kind == "builtin":
        builtin = source.removeprefix("builtin:")
        rows = (data.num_samples, lambda i: synthetic.make_sample(builtin, i, data, box_format, processor))
    elif kind == "plugin":
        named = _plugin_splits(data, processor)
    elif kind == "jsonl":
        rows = _jsonl_rows(Path(source).expanduser())
    elif kind == "folder":
        rows, named = _pick_splits(_load_folder(Path(source).expanduser(), data), data, source)
    else:
        rows, named = _pick_splits(load_hub(data), data, source)

    if named is not None:
        splits = {split: _subset(rows_, data, salt=split) for split, rows_ in named.items()}
    else:
        assert rows is not None, "every source without named splits gives rows"
        order = _subset(rows, data, salt="")
        n_train = min(len(order), max(1, round(len(order) * data.split_ratio)))
        if data.split_ratio < 1.0 and len(order) > 1:
            n_train = min(n_train, len(order) - 1)
        splits = {data.train_split: sorted(order[:n_train]), data.test_split: sorted(order[n_train:])}
        named = {data.train_split: rows, data.test_split: rows}
    if not splits[data.train_split]:
        raise UsageError(
            f"data.source {source!r} gives no samples for split {data.train_split!r}",
            hint="check the file or plugin, and data.max_samples / data.split_ratio",
        )

    def prepared(make: Callable[[int], dict[str, Any]]) -> Callable[[int], dict[str, Any]]:
        def resized(size: tuple[int, int]) -> tuple[int, int]:
            return processor_resized_size(processor, size, data.min_pixels, data.max_pixels)

        return lambda i: prepare(make(i), box_format, data.bad_boxes, resized)

    return {split: LazySplit(indices, prepared(named[split][1])) for split, indices in splits.items()}


def _subset(rows: Rows, data: DataSection, salt: str) -> list[int]:
    order = list(range(rows[0]))
    random.Random(f"{data.seed}:{salt}").shuffle(order)
    kept = order[: data.max_samples] if data.max_samples else order
    return kept if not salt else sorted(kept)


# --- sources -------------------------------------------------------------------------------------------


def _jsonl_rows(path: Path) -> Rows:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append((lineno, json.loads(line)))
                except ValueError as exc:
                    raise UsageError(f"{path}, line {lineno}: not valid JSON ({exc})") from None
    base = path.parent
    return len(rows), lambda i: to_sample(rows[i][1], f"{path.name}:{rows[i][0]}", f"{path}, line {rows[i][0]}", base)


def _dataset_rows(ds: Any, label: str, base: Path | None = None) -> Rows:
    def make(i: int) -> dict[str, Any]:
        try:
            row = ds[i]  # a datasets.Dataset decodes its Image columns here
        except UnidentifiedImageError:
            raise UsageError(f"{label}, row {i}: an image is corrupt or not an image") from None
        except Exception as exc:
            raise UsageError(f"{label}, row {i}: cannot be read ({type(exc).__name__}: {exc})") from None
        return to_sample(row, f"{label}-{i:05d}", f"{label}, row {i}", base)

    return len(ds), make


def _load_folder(path: Path, data: DataSection) -> Any:
    import datasets

    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return datasets.load_from_disk(str(path))
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise UsageError(f"folder {path} holds neither a dataset saved with save_to_disk nor .parquet files")
    import pyarrow.parquet as pq

    # Read with pyarrow rather than load_dataset("parquet") to avoid copying the data into the HF cache.
    by_split: dict[str, list[Path]] = {}
    for file in files:
        names = [*file.relative_to(path).parent.parts, re.split(r"[-_.]", file.stem)[0]]
        split = next((s for s in (data.train_split, data.test_split) if s in names), "other")
        by_split.setdefault(split, []).append(file)
    tables = {split: [pq.read_table(f) for f in fs] for split, fs in by_split.items()}
    import pyarrow as pa
    from datasets.table import InMemoryTable

    loaded: dict[str | datasets.NamedSplit, datasets.Dataset] = {
        s: datasets.Dataset(InMemoryTable(pa.concat_tables(t, promote_options="default"))) for s, t in tables.items()
    }
    return datasets.DatasetDict(loaded) if len(loaded) > 1 else loaded.popitem()[1]


def _pick_splits(ds: Any, data: DataSection, source: str) -> tuple[Rows | None, dict[str, Rows] | None]:
    """Named splits if the source has both requested ones; otherwise the one split to cut by split_ratio."""
    base = Path(source) if Path(source).is_dir() else None
    label = Path(source).name or source
    if not hasattr(ds, "keys"):  # a plain Dataset
        return _dataset_rows(ds, label, base), None
    names = list(ds.keys())
    if data.train_split in names and data.test_split in names:
        wanted = (data.train_split, data.test_split)
        return None, {s: _dataset_rows(ds[s], f"{label}-{s}", base) for s in wanted}
    if data.train_split in names or len(names) == 1:
        only = data.train_split if data.train_split in names else names[0]
        return _dataset_rows(ds[only], f"{label}-{only}", base), None
    raise UsageError(
        f"{source} has splits {', '.join(names)} but not {data.train_split!r}",
        hint="set data.train_split / data.test_split to the source's split names",
    )


def _plugin_splits(data: DataSection, processor: Any) -> dict[str, Rows]:
    path, func_name = plugin_file(data.source)
    file = data.source.rsplit(":", 1)[0]
    spec = importlib.util.spec_from_file_location(f"vlmtune_plugin_{path.stem}", path)
    assert spec is not None and spec.loader is not None, "a .py file always gets a source loader"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    sys.path.insert(0, str(path.parent))  # so the plugin can import its sibling modules
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise UsageError(f"importing plugin {file} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(path.parent))
    func = getattr(module, func_name, None)
    if not callable(func):
        found = [n for n, v in vars(module).items() if isinstance(v, FunctionType) and not n.startswith("_")]
        raise UsageError(
            f"plugin {file} has no function {func_name!r}", hint=f"functions in the file: {', '.join(found) or 'none'}"
        )
    named, call = {}, f"{file}:{func_name}"
    for split in (data.train_split, data.test_split):
        try:
            result = func(DatasetConfig(data), processor, split, data.split_ratio)
        except Exception as exc:
            raise UsageError(
                f"plugin {call} failed for split {split!r}: {type(exc).__name__}: {exc}",
                hint="fix the plugin; it is called as function(dataset_config, processor, split, split_ratio)",
            ) from exc
        if not isinstance(result, list):
            import datasets

            if isinstance(result, datasets.DatasetDict) and split in result:
                result = result[split]
            if not isinstance(result, datasets.Dataset):
                raise UsageError(
                    f"plugin {call} returned a {type(result).__name__} for split {split!r}",
                    hint="return a datasets.Dataset or a list of {'messages', 'images'} dicts",
                )
        named[split] = _dataset_rows(result, f"{path.stem}-{split}", path.parent)
    return named
