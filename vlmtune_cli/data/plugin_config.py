"""What a plugin source receives as `dataset_config`: the recipe's `data.options`, readable as attributes.

    [data]
    source = "my_data.py:get_custom_dataset"
    [data.options]
    bucket = "s3://shelf-photos"

    def get_custom_dataset(dataset_config, processor, split, split_ratio):
        dataset_config.bucket            # "s3://shelf-photos" (also dataset_config["bucket"], .get("bucket"))
        dataset_config.seed              # a key of [data] itself, when data.options has no key of that name

`data.options` keys come first; the other `[data]` keys (`seed`, `max_samples`, ..., and `options` itself, which
plugins written for the earlier whole-table argument use) are read through when no option has their name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmtune_cli.config.schema import DataSection


class DatasetConfig(Mapping[str, Any]):
    """`data.options` as a read-only mapping with attribute access, falling back to the `[data]` keys."""

    def __init__(self, data: DataSection) -> None:
        self._options = dict(data.options)
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._options[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._options:
            return self._options[name]
        if name in type(self._data).model_fields:
            return getattr(self._data, name)
        known = ", ".join(sorted(self._options)) or "none"
        raise AttributeError(f"dataset_config has no {name!r}: set it under [data.options] (options given: {known})")

    def __repr__(self) -> str:
        return f"DatasetConfig({self._options!r})"
