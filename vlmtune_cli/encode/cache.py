"""The tokenised-dataset cache: its fingerprint, its layout, and writing an entry so it is complete or absent.

Longer than 400 lines because what the fingerprint hashes (the digests of sources and model files, remembered
across runs) is read best next to the fingerprint it makes; the entry's files themselves are in entry.py.

    <cache_dir>/tokenized/<fingerprint>/
      manifest.json        everything the fingerprint covers, the columns, the shards, the label token ids
      stats.json           the token statistics `vlmtune tokenize` prints
      <split>/00000.arrow  Arrow IPC stream shards, memory-mapped by `datasets.Dataset.from_file`

The fingerprint covers everything that changes what `tokenize` writes: the source (a `.jsonl` file's bytes and
those of every image it names, a folder's files, a plugin file's code, a built-in set's version, a hub dataset's
commit), the subset and split keys, the model's processor and tokenizer files (not its weights), the pixel
bounds, `max_length`, `overlength`, `loss_on`, `bad_boxes`, the answer check, the versions of
transformers/tokenizers/Pillow and CODE_VERSION (which covers how images are opened: EXIF orientation applied).
Keys that cannot change the output (`training.*`, `variant`, `[tuning]` components) are left out, so v2, v3 and v4
share one cache.

Not covered, so `--force` is needed after changing them: files a plugin reads by itself, images a folder's rows
name outside that folder, and a hub dataset or model revision that moved while this machine was offline.

An entry is built in a hidden staging directory next to it and renamed into place once `manifest.json` (written
last) is on disk: a build that fails or is killed leaves nothing that looks complete, and its staging directory
is removed by the next build of the same fingerprint.

Imports nothing heavy: computing a fingerprint and answering a cache hit never load torch or transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from vlmtune_cli.config.schema import Recipe
from vlmtune_cli.fsutil import exclusive_lock, replace_dir, respect_umask

# Bump whenever vlmtune's encoding path (data.py's conversion of rows, labels.py, tokenized.py, the cache format)
# changes what a cache entry holds: entries written by an older vlmtune then stop matching.
# 3: images are stored upright (EXIF orientation applied); answers rendered per family from `{"type": "boxes"}`;
#    boxes checked; assistant turns found through character offsets.
CODE_VERSION = 3
MANIFEST = "manifest.json"
STATS = "stats.json"
# Versions of the libraries whose behaviour is baked into the cache (templating, tokenising, resizing).
_PACKAGES = ("transformers", "tokenizers", "pillow")
# Model files that do not change tokenisation: weights, their indexes, generation settings, docs.
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".gguf",
    ".onnx",
    ".npz",
    ".tflite",
    ".index.json",
)
_SETTLE_NS = 2_000_000_000
_IGNORED_MODEL_FILES = {"generation_config.json", "README.md", "LICENSE", ".gitattributes", "COMPLETE"}


@dataclass(frozen=True)
class Fingerprint:
    key: str
    """Hex digest naming the cache entry."""
    inputs: dict[str, Any]
    """What the digest covers, as recorded in the manifest (to explain a miss)."""
    model_path: str
    """Where the model loads from: a local directory, or the hub id when it is not on this machine."""
    model_resolved: bool
    """False when a hub model is not in the local hub cache yet (its files could not be hashed)."""


def root(cache_dir: Path) -> Path:
    return Path(cache_dir) / "tokenized"


def entry_path(cache_dir: Path, key: str) -> Path:
    return root(cache_dir) / key


def fingerprint(recipe: Recipe, cache_dir: Path) -> Fingerprint:
    """The fingerprint of what `tokenize` would write for `recipe`.

    Builds a built-in tiny model the first time it is named (that needs torch); otherwise reads files only.
    Raises UsageError for a source that names nothing (unknown built-in, missing plugin file, other files).
    """
    from vlmtune_cli.data.sources import source_kind

    data = recipe.data
    kind = source_kind(data.source)
    subset: dict[str, Any] = {
        "max_samples": data.max_samples,
        "split_ratio": data.split_ratio,
        "seed": data.seed,
        "train_split": data.train_split,
        "test_split": data.test_split,
    }
    if kind == "builtin":
        subset["num_samples"] = data.num_samples
    if kind in ("builtin", "plugin", "hub"):  # the only sources that read data.options
        subset["options"] = data.options
    digests = _Digests(cache_dir)
    source = {"kind": kind, "source": data.source, **_source_digest(kind, data, digests)}
    model_path, model_files, resolved = _model_files(recipe, cache_dir, digests)  # may build a model: last
    digests.save()
    inputs = {
        "code_version": CODE_VERSION,
        "packages": {name: _version(name) for name in _PACKAGES},
        "source": source,
        "subset": subset,
        "encoding": {
            "max_length": data.max_length,
            "overlength": data.overlength,
            "min_pixels": data.min_pixels,
            "max_pixels": data.max_pixels,
            "loss_on": recipe.tuning.loss_on,
            "bad_boxes": data.bad_boxes,
            "answer_check": answer_check(recipe),
        },
        "model": {
            "name": recipe.model.name,
            "revision": recipe.model.revision,
            "trust_remote_code": recipe.model.trust_remote_code,
            "files": model_files,
        },
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Fingerprint(key, inputs, model_path, resolved)


def answer_check(recipe: Recipe) -> str:
    """The answer check tokenize applies: `data.answer_check` for detection data from files, else "off"."""
    if recipe.benchmark.task != "detection" or recipe.data.source.startswith("builtin:"):
        return "off"
    return recipe.data.answer_check


def read_entry(path: Path) -> dict[str, Any] | None:
    """The manifest of a complete entry written by this CODE_VERSION, else None."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("code_version") != CODE_VERSION or not (path / STATS).is_file():
        return None
    shards = [path / shard["file"] for split in manifest["splits"].values() for shard in split["shards"]]
    return manifest if all(s.is_file() for s in shards) else None


def explain_miss(cache_dir: Path, inputs: dict[str, Any], most: int = 40) -> str | None:
    """What differs from the most recent entry of the same source, e.g. "encoding.max_length: 512 → 1024"."""
    entries = sorted(root(cache_dir).glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in entries[:most]:
        try:
            old = json.loads(path.read_text()).get("inputs", {})
        except (OSError, ValueError):
            continue
        if old.get("source", {}).get("source") != inputs["source"]["source"]:
            continue
        changed = [f"{key}: {_short(a)} → {_short(b)}" for key, (a, b) in _diff(old, inputs).items()]
        return "; ".join(changed[:4]) + (f"; {len(changed) - 4} more" if len(changed) > 4 else "") or None
    return None


# --- writing an entry ----------------------------------------------------------------------------------


@contextmanager
def locked(cache_dir: Path, key: str) -> Iterator[None]:
    """Hold the build lock of one entry, so concurrent builds of the same fingerprint run one after the other.

    flock is released by the kernel when its holder dies: a killed build never blocks later ones.
    """
    base = root(cache_dir)
    base.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(base / f".{key}.lock"):
        yield


def staging_dir(cache_dir: Path, key: str) -> Path:
    """A fresh hidden directory to build entry `key` in. Call under `locked(cache_dir, key)`.

    First removes what killed builds left behind: staging directories and replaced entries of any fingerprint
    whose build lock nobody holds.
    """
    base = root(cache_dir)
    for leftover in (*base.glob(".*.building-*"), *base.glob(".*.old-*")):
        other = leftover.name[1:].split(".", 1)[0]
        if other == key:
            shutil.rmtree(leftover, ignore_errors=True)
            continue
        try:
            with exclusive_lock(base / f".{other}.lock", wait=False):
                shutil.rmtree(leftover, ignore_errors=True)
        except BlockingIOError:
            continue  # being built right now
    return Path(tempfile.mkdtemp(prefix=f".{key}.building-", dir=base))


def commit(staging: Path, final: Path) -> None:
    """Move a finished staging directory into place, replacing an older entry (`--force`).

    Readers that have the old entry's shards memory-mapped keep reading them until they close them.
    """
    replace_dir(staging, final)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, default=str) + "\n")


# --- what the fingerprint hashes -----------------------------------------------------------------------


def file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


class _Digests:
    """Content digests of files, remembered by (size, mtime, ctime, inode) in `<cache_dir>/tokenized/file-digests.json`.

    Hashing every image again made a cache hit of 1,000 images take 0.6 s (benchmarks/README.md); a file whose
    stat is unchanged is not read again. Rewriting a file in place changes its ctime even when its size and mtime
    are put back. A file changed within the last _SETTLE_NS is not remembered: a second write within the
    filesystem's timestamp granularity would leave the same stat behind.
    """

    FILE = "file-digests.json"

    def __init__(self, cache_dir: Path):
        self.path = root(cache_dir) / self.FILE
        try:
            self.known: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def __call__(self, path: Path) -> str:
        """The digest of a file; "missing or not a regular file" for anything else (the loader names it)."""
        try:
            info = path.stat()
        except OSError:
            return "missing or not a regular file"
        if not stat.S_ISREG(info.st_mode):
            return "missing or not a regular file"
        stamp = _stamp_of(info)
        name = os.path.abspath(path)
        entry = self.known.get(name)
        if entry is not None and entry[:4] == stamp:
            return entry[4]
        try:
            digest = file_digest(path)
        except OSError as exc:
            return f"unreadable: {type(exc).__name__}"
        if time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > _SETTLE_NS:
            self.known[name] = [*stamp, digest]
            self.changed = True
        return digest

    def save(self) -> None:
        """Write the digests back when some were added, leaving out those of files that are gone or changed since
        (so the file does not grow with every dataset ever tokenised); one stat per entry, only after hashing."""
        if not self.changed:
            return
        self.known = {name: entry for name, entry in self.known.items() if _stamp(name) == entry[:4]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=f".{self.FILE}.", dir=self.path.parent)
            with os.fdopen(handle, "w") as out:
                json.dump(self.known, out)
            respect_umask(Path(tmp))
            os.replace(tmp, self.path)
        except OSError:
            pass  # only a cache of digests: the next fingerprint hashes the files again


def _stamp_of(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _stamp(name: str) -> list[int] | None:
    try:
        return _stamp_of(os.stat(name))
    except OSError:
        return None


def _tree_digest(files: list[Path], base: Path, digests: _Digests) -> str:
    """One digest over files' names (relative to `base`) and contents."""
    total = hashlib.blake2b(digest_size=16)
    for file in files:
        name = file.relative_to(base) if file.is_relative_to(base) else file
        total.update(f"{name}\0{digests(file)}\n".encode())
    return total.hexdigest()


def _source_digest(kind: str, data: Any, digests: _Digests) -> dict[str, Any]:
    if kind == "builtin":
        from vlmtune_cli.data import synthetic

        return {"version": synthetic.DATA_VERSION}
    if kind == "plugin":
        from vlmtune_cli.data.sources import plugin_file

        path, _ = plugin_file(data.source)
        return {"code": digests(path)}
    if kind == "jsonl":
        path = Path(data.source).expanduser()
        return {"content": digests(path), "images": _jsonl_images_digest(path, digests)}
    if kind == "folder":
        base = Path(data.source).expanduser()
        return {"content": _tree_digest(sorted(p for p in base.rglob("*") if p.is_file()), base, digests)}
    return {
        "revision": _hub_commit(data.source, data.options.get("hub_revision"), "dataset"),
        "config": data.options.get("hub_config"),
    }


def _jsonl_images_digest(path: Path, digests: _Digests) -> str:
    """Digest of every image file the rows of a `.jsonl` source name (paths relative to the file)."""
    names: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line) if line.strip() else None
            except ValueError:
                continue  # the file's own digest covers it; the loader reports the line
            if isinstance(row, dict):
                names.update(_image_paths(row))
    base = path.parent
    files = sorted({(base / Path(n).expanduser()) for n in names})
    return _tree_digest(files, base, digests)


def _image_paths(row: dict[str, Any]) -> list[str]:
    found: list[Any] = []
    images = row.get("images")
    found += images if isinstance(images, list) else [images]
    for message in row.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image":
                found += [part.get("image"), part.get("path")]
    paths = [f.get("path") if isinstance(f, dict) and f.get("bytes") is None else f for f in found]
    return [p for p in paths if isinstance(p, str) and p and not p.startswith(("http://", "https://"))]


def _model_files(recipe: Recipe, cache_dir: Path, digests: _Digests) -> tuple[str, str, bool]:
    """(where the model loads from, digest of its processor and tokenizer files, whether they were found)."""
    from vlmtune_cli.models.loading import resolve_model_path

    path = resolve_model_path(recipe.model.name, cache_dir)
    local = Path(path).expanduser()
    if local.is_dir():
        files = sorted(
            p
            for p in local.iterdir()
            if p.is_file() and p.name not in _IGNORED_MODEL_FILES and not p.name.endswith(_WEIGHT_SUFFIXES)
        )
        return str(local), _tree_digest(files, local, digests), True
    commit_ = _hub_commit(path, recipe.model.revision, "model")
    snapshot = _hub_snapshot(path, commit_, "model")
    if snapshot is not None:  # a hub commit names every file exactly: no need to read them
        return str(snapshot), f"hub:{commit_}", True
    return path, f"not cached: {commit_}", False


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_commit(repo_id: str, revision: str | None, repo_type: str) -> str:
    """The commit a hub revision points at, as the local hub cache records it (no network)."""
    revision = revision or "main"
    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    ref = _hub_cache() / f"{repo_type}s--{repo_id.replace('/', '--')}" / "refs" / revision
    try:
        return ref.read_text().strip()
    except OSError:
        return f"{repo_id}@{revision}"


def _hub_snapshot(repo_id: str, commit_: str, repo_type: str) -> Path | None:
    snapshot = _hub_cache() / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots" / commit_
    return snapshot if snapshot.is_dir() else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    changed: dict[str, tuple[Any, Any]] = {}
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed.update(_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            changed[f"{prefix}{key}"] = (a, b)
    return changed


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 24 else text[:21] + "..."
