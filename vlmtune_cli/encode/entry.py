"""A tokenised-data cache entry on disk: what `tokenize_recipe` returns, its Arrow shards written while building and
read back as `datasets.Dataset`s serving model inputs (the loader's transform, inputs.py, makes `pixel_values`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmtune_cli.encode.inputs import ModelInputs, PixelMode
from vlmtune_cli.encode.stats import SplitReport

BATCH_ROWS = 64
BATCH_BYTES = 32 << 20


@dataclass
class TokenizeResult:
    path: Path
    key: str
    hit: bool
    seconds: float
    manifest: dict[str, Any]
    stats: dict[str, Any]
    model_path: str
    miss_reason: str | None = None

    def reports(self) -> list[SplitReport]:
        return [SplitReport.from_summary(name, s) for name, s in self.stats["splits"].items()]

    def describe(self) -> str:
        how = "cache hit" if self.hit else "built"
        return f"{self.path} ({how}, {self.seconds:.2f} s)"


# --- writing ---------------------------------------------------------------------------------------------


class ShardWriter:
    """Rows → an Arrow IPC stream file, flushed every BATCH_ROWS rows or BATCH_BYTES of images."""

    def __init__(self, path: Path, layout: dict[str, Any]):
        import pyarrow as pa

        self.pa, self.path, self.rows = pa, path, 0
        self.schema = arrow_schema(layout)
        self.buffer: list[dict[str, Any]] = []
        self.bytes = 0
        self.writer = None

    def __enter__(self) -> ShardWriter:
        return self

    def add(self, row: dict[str, Any]) -> None:
        self.buffer.append(row)
        self.bytes += sum(len(b) for b in row["images"])
        if len(self.buffer) >= BATCH_ROWS or self.bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self.writer = self.pa.ipc.new_stream(str(self.path), self.schema)
        columns = {name: [row[name] for row in self.buffer] for name in self.schema.names}
        self.writer.write_batch(self.pa.RecordBatch.from_pydict(columns, schema=self.schema))
        self.rows += len(self.buffer)
        self.buffer, self.bytes = [], 0

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.flush()
        if self.writer is not None:
            self.writer.close()


def arrow_schema(layout: dict[str, Any]) -> Any:
    import numpy as np
    import pyarrow as pa

    fields = [
        pa.field("id", pa.string()),
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("labels", pa.list_(pa.int32())),
        pa.field("images", pa.list_(pa.binary())),
        pa.field("image_sizes", pa.list_(pa.list_(pa.int32()))),
    ]
    for key, (_, ndim, dtype) in layout["extras"].items():
        kind = pa.from_numpy_dtype(np.dtype(dtype))
        for _ in range(ndim):
            kind = pa.list_(kind)
        fields.append(pa.field(key, kind))
    return pa.schema(fields)


# --- reading -------------------------------------------------------------------------------------------


def open_splits(result: TokenizeResult, processor: Any, *, pixels: PixelMode = "table") -> tuple[Any, Any]:
    """(train, test) of a cache entry as memory-mapped `datasets.Dataset`s serving model inputs; test may be None.

    `pixels`: how the loader makes `pixel_values` (see `ModelInputs`).
    """
    import datasets
    import pyarrow.compute as pc

    opened = []
    for name in (result.stats["train_split"], result.stats["test_split"]):
        shards = result.manifest["splits"][name]["shards"]
        if not shards:
            opened.append(None)
            continue
        parts = [datasets.Dataset.from_file(str(result.path / shard["file"])) for shard in shards]
        dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        # Token counts for `training.group_by_length` (transformers reads the `length` column), from the ids alone.
        # (pyarrow.compute generates its functions at import, so pyright cannot see list_value_length.)
        lengths = pc.list_value_length(dataset.data.column("input_ids")).to_numpy()  # pyright: ignore[reportAttributeAccessIssue]
        dataset = dataset.add_column("length", lengths)
        opened.append(
            dataset.with_transform(
                ModelInputs(
                    processor.image_processor,
                    result.manifest["extras"],
                    result.manifest.get("nested_images", False),
                    pixels=pixels,
                )
            )
        )
    return opened[0], opened[1]


def read_rows(
    result: TokenizeResult, n: int, columns: tuple[str, ...] = ("id", "input_ids", "labels")
) -> list[dict[str, Any]]:
    """The first `n` cached samples (train split first), as plain lists; needs pyarrow only."""
    import pyarrow as pa

    rows: list[dict[str, Any]] = []
    for name in (result.stats["train_split"], result.stats["test_split"]):
        for shard in result.manifest["splits"][name]["shards"]:
            with pa.memory_map(str(result.path / shard["file"])) as source:
                for batch in pa.ipc.open_stream(source):
                    for row in batch.select(list(columns)).to_pylist():
                        if len(rows) >= n:
                            return rows
                        rows.append({"split": name, **row})
    return rows
