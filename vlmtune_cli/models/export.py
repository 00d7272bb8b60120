"""The core of `vlmtune export`: a run's weights as a folder plain transformers loads, without vlmtune.

What goes into the export folder:
  --merge, LoRA run   the adapter merged into the base model: config.json, model*.safetensors,
                      generation_config.json (`AutoModelForImageTextToText.from_pretrained(out)`)
  no --merge, LoRA    adapter_config.json + adapter_model.safetensors, the adapter's
                      `base_model_name_or_path` pointing at the base model (its hub id, or the absolute path of a
                      local or built-in model); transformers loads it when peft is installed
  full fine-tune      the saved model, copied (there is nothing to merge; --merge changes nothing)
  always              the processor files, with the run's pixel bounds (data.min_pixels/max_pixels), naming the
                      stock transformers processor class, plus recipe.toml and vlmtune-export.json (provenance)

Processor class. Without torchvision vlmtune saves Qwen-VL processors under its own image-only class
(`Qwen2VLImageOnlyProcessor`), which plain transformers does not know. The export names the class a hub
checkpoint of the family names (`Qwen2VLProcessor`, `Qwen2_5_VLProcessor`), so the folder behaves exactly like
the base model's hub checkpoint: `AutoProcessor.from_pretrained(out)` needs torchvision there (transformers 5's
Qwen-VL processors always build a video processor); `AutoTokenizer` and `AutoImageProcessor` load without it.

The folder is built in a hidden staging directory next to `out` and renamed into place when complete: an
interrupted export leaves no half-written folder under the final name. An existing, non-empty `out` is refused
unless `force`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vlmtune_cli import __version__
from vlmtune_cli.errors import UsageError, VlmtuneError
from vlmtune_cli.fsutil import replace_dir
from vlmtune_cli.runs import Target, run_target

# Files of a trainer checkpoint that are no part of a model.
_TRAINING_STATE = {
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "training_args.bin",
    "trainer_state.json",
    "COMPLETE",
    "README.md",
    "scaler.pt",
}
# Files the processor's save_pretrained writes (and that the exported copy takes from there, not from the run).
_PROCESSOR_FILES = {
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "video_preprocessor_config.json",
    "tokenizer.model",
}
EXPORT_INFO = "vlmtune-export.json"


@dataclass(frozen=True)
class ExportResult:
    out: Path
    kind: str
    """"merged", "adapter" or "full"."""
    run_dir: Path
    checkpoint: str
    base_model: str
    processor_class: str
    files: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "kind": self.kind,
            "run_dir": str(self.run_dir),
            "checkpoint": self.checkpoint,
            "base_model": self.base_model,
            "processor_class": self.processor_class,
            "files": self.files,
        }


# --- which run, which weights (shared with `predict`) -------------------------------------------------------


def find_run(run: Path, runs_dir: Path) -> Path:
    """`run` as a run directory: a path, or a variant name inside `runs_dir`. Raises UsageError."""
    path = Path(run)
    if path.is_dir():
        return path
    named = Path(runs_dir) / str(run)
    if len(path.parts) == 1 and named.is_dir():
        return named
    known = (
        sorted(p.name for p in Path(runs_dir).iterdir() if (p / "recipe.toml").is_file())
        if Path(runs_dir).is_dir()
        else []
    )
    hint = (
        f"runs in {runs_dir}: {', '.join(known)}"
        if known
        else f"no runs in {runs_dir} yet; train one: vlmtune train recipes/smoke.toml"
    )
    raise UsageError(f"{run}: no such run directory (nor a run named so in {runs_dir})", hint=hint)


def run_weights(path: Path, checkpoint: str | None, command: str, args: str = "") -> Target:
    """The run's final/ weights, or the complete checkpoint `checkpoint`; see `runs.run_target`."""
    return run_target(path, checkpoint, command, args)


# --- the export ------------------------------------------------------------------------------------------------


def default_out(target: Target, merge: bool) -> Path:
    """`<run>/export/merged` (or `adapter`, `full`), with `-checkpoint-N` for a checkpoint."""
    kind = _kind(target, merge)
    return target.run_dir / "export" / (kind if target.checkpoint == "final" else f"{kind}-{target.checkpoint}")


def _kind(target: Target, merge: bool) -> str:
    assert target.weights is not None, "only a run's weights are exported, never a base model"
    if not (target.weights / "adapter_config.json").is_file():
        return "full"
    return "merged" if merge else "adapter"


def check_out(out: Path, force: bool, target: Target | None = None) -> None:
    """Refuse an `out` that is a file, a non-empty folder without `force`, or holds or lies inside the run's
    weights (replacing it would delete what is exported). Raises UsageError."""
    if target is not None:
        assert target.weights is not None, "only a run's weights are exported, never a base model"
        where = out.resolve()
        run, weights = target.run_dir.resolve(), target.weights.resolve()
        if (
            where == run
            or run.is_relative_to(where)
            or where.is_relative_to(weights)
            or where.is_relative_to(run / "checkpoints")
        ):
            raise UsageError(
                f"--out {out} would replace or sit inside the run's own files",
                hint=f"choose a new folder, e.g. {default_out(target, True)}",
            )
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(
            f"{out} already exists and is not empty", hint="pass --force to replace it, or choose another --out"
        )


def export(target: Target, cache_dir: Path, out: Path, *, merge: bool, force: bool = False) -> ExportResult:
    """Write the target's weights and processor to `out` (see the module docstring). Returns what was written.

    Raises UsageError for an `out` that exists (without `force`) or weights of another family, VlmtuneError when
    loading, merging or writing fails.
    """
    from vlmtune_cli.models import loading
    from vlmtune_cli.models.weights import load_processor_and_family

    out = Path(out)
    check_out(out, force, target)
    kind = _kind(target, merge)
    assert target.weights is not None  # _kind checked it
    recipe = target.recipe
    processor, family = load_processor_and_family(target, cache_dir)
    base = loading.resolve_model_path(recipe.model.name, cache_dir)
    base_ref = base if not Path(base).exists() else str(Path(base).resolve())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    except OSError as exc:
        raise UsageError(f"cannot write to {out.parent}: {exc.strerror or exc}", hint="choose another --out") from None
    try:
        if kind == "merged":
            _save_merged(target, cache_dir, staging)
        elif kind == "adapter":
            _copy_adapter(target.weights, staging, base_ref, recipe.model.revision)
        else:
            _copy_model(target.weights, staging)
        processor_class = _save_processor(processor, staging, _stock_processor_class(base, processor))
        shutil.copyfile(target.run_dir / "recipe.toml", staging / "recipe.toml")
        info = {
            "kind": kind,
            "run_dir": str(target.run_dir.resolve()),
            "checkpoint": target.checkpoint,
            "base_model": recipe.model.name,
            "base_model_path": base_ref,
            "family": family.name,
            "box_format": family.box_format,
            "processor_class": processor_class,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "vlmtune_version": __version__,
        }
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        files = sorted(p.name for p in staging.iterdir())
        replace_dir(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise VlmtuneError(f"cannot write the export to {out}: {exc}") from exc
        raise
    return ExportResult(out, kind, target.run_dir, target.checkpoint, base_ref, processor_class, files)


def _save_merged(target: Target, cache_dir: Path, staging: Path) -> None:
    """Base model + adapter, merged, saved as a plain model in the base model's dtype (or the recipe's)."""
    from vlmtune_cli.models import loading

    assert target.weights is not None, "only a run's weights are exported, never a base model"
    section = target.recipe.model
    # Merging into quantised weights would round the adapter away: merge into full-precision weights instead.
    section = section.model_copy(update={"quantization": "none"})
    dtype = (
        section.dtype
        if section.dtype != "auto"
        else _checkpoint_dtype(loading.resolve_model_path(section.name, cache_dir))
    )
    model = loading.load_trained_model(section, target.weights, cache_dir, dtype=dtype)
    if hasattr(model, "merge_and_unload"):  # load_trained_model merges already; never save a PEFT wrapper
        model = model.merge_and_unload()  # pyright: ignore[reportCallIssue] nn.Module's __getattr__ says Tensor
    try:
        model.save_pretrained(staging)  # pyright: ignore[reportArgumentType] a PathLike works as well as a str
    except (RuntimeError, ValueError) as exc:
        raise VlmtuneError(f"cannot save the merged model: {exc}") from exc


def _checkpoint_dtype(path: str) -> str:
    """The dtype the base checkpoint's config.json records ("float32" when it records none)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path).to_dict()
    value = config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
    return str(value).removeprefix("torch.") if value else "float32"


def _copy_adapter(weights: Path, staging: Path, base_ref: str, revision: str | None) -> None:
    for path in weights.iterdir():
        if path.is_file() and path.name.startswith("adapter_"):
            shutil.copyfile(path, staging / path.name)
    config = json.loads((staging / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_ref
    if revision:
        config["revision"] = revision
    (staging / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _copy_model(weights: Path, staging: Path) -> None:
    for path in weights.iterdir():
        if path.is_file() and path.name not in _TRAINING_STATE and path.name not in _PROCESSOR_FILES:
            shutil.copyfile(path, staging / path.name)


def _stock_processor_class(base: str, processor: Any) -> str:
    """The transformers class a hub checkpoint of this model names (`Qwen2VLProcessor` for Qwen2-VL)."""
    cls = type(processor)
    if cls.__module__.startswith("transformers."):
        return cls.__name__
    try:
        from transformers import AutoConfig
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

        name = PROCESSOR_MAPPING_NAMES.get(AutoConfig.from_pretrained(base).model_type)
    except Exception:  # noqa: BLE001 - fall back to the class ours derives from
        name = None
    if isinstance(name, str):
        return name
    return next(c.__name__ for c in cls.__mro__ if c.__module__.startswith("transformers."))


def _save_processor(processor: Any, staging: Path, stock: str) -> str:
    """Save the processor, then name the stock class wherever vlmtune's own class is named. Returns the class."""
    ours = type(processor).__name__
    processor.save_pretrained(staging)
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = staging / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        if _rename_class(data, ours, stock):
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return stock


def _rename_class(data: Any, ours: str, stock: str) -> bool:
    changed = False
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "processor_class" and value == ours:
                data[key] = stock
                changed = True
            else:
                changed |= _rename_class(value, ours, stock)
    return changed
