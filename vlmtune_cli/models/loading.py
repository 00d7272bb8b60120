"""Loading models and processors by name, and deciding which of their weights train.

torch, transformers and peft are imported inside the functions: light code (recipe checks, `--help`) may
import this module.

Freezing works per component (vision encoder, projector, language model), each `frozen`, `lora` or `full`:
- no component on `lora`: no PEFT at all, `full` components simply get `requires_grad`;
- some on `lora`: adapters go on explicitly named modules of those components only (PEFT's `all-linear` would
  also hit the vision tower and merger), and `full` components become PEFT `modules_to_save`, so that the
  adapter checkpoint carries them too (parameters merely set to `requires_grad` would train but not be saved);
- a component on `lora` (with `all-linear` targets) that has no linear layer at all, such as Gemma 3's projector
  (one bare matrix), trains as `full`, with a warning: LoRA could not touch it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from vlmtune_cli.config.schema import DataSection, ModelSection
from vlmtune_cli.errors import UsageError, VlmtuneError
from vlmtune_cli.fsutil import exclusive_lock
from vlmtune_cli.models.builtin import BUILDERS, is_current_build, remove_leftovers
from vlmtune_cli.models.families import Family, family_for_model_type
from vlmtune_cli.models.placement import LOAD_DTYPE, local_device_map, machine_precision


def resolve_model_path(name: str, cache_dir: Path) -> str:
    """Where `from_pretrained` should load `name` from.

    A built-in name is built once into `<cache_dir>/models/<name>` and reused afterwards; concurrent callers
    wait on a lock instead of building twice, and a killed build leaves no directory that looks complete.
    Hub ids and local paths are returned unchanged. Raises UsageError for an unknown built-in name.
    """
    if not name.startswith("builtin:"):
        return name
    if name not in BUILDERS:
        raise UsageError(f"unknown built-in model {name!r}; built-in models: {', '.join(BUILDERS)}")
    dirname, build = BUILDERS[name]
    target = Path(cache_dir) / "models" / dirname
    if is_current_build(target):
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.parent / f".{dirname}.lock"):  # a killed build never blocks later ones
        if not is_current_build(target):
            remove_leftovers(target)
            build(target)
    return str(target)


def _not_found(section: ModelSection, path: str, error: Exception) -> VlmtuneError:
    if Path(path).exists():
        return VlmtuneError(f"cannot load model.name = {section.name!r} from {path}: {error}")
    return UsageError(
        f"model.name = {section.name!r} is neither a local directory nor a hub model this machine can reach",
        hint="without network, copy the checkpoint here and set model.name to its directory "
        "(HF_HUB_OFFLINE=1 skips the hub's retries)",
    )


def _import_object(spec: str) -> Any:
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def load_processor(
    model_section: ModelSection, data_section: DataSection, cache_dir: Path, *, from_dir: Path | None = None
):
    """The model's processor (tokenizer + image processor + chat template), with the recipe's pixel bounds.

    `from_dir` loads the processor a run saved (its final/ or a checkpoint) instead of the model's own.
    Where `AutoProcessor` fails (Qwen2-VL without torchvision), falls back to the family's image-only
    processor. Raises UsageError for a model that cannot be found or pixel bounds the processor cannot take,
    VlmtuneError if no processor loads.
    """
    from transformers import AutoConfig, AutoProcessor

    from vlmtune_cli.models import qwen_processor

    path = resolve_model_path(model_section.name, cache_dir)
    kwargs = {"revision": model_section.revision, "trust_remote_code": model_section.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except OSError as error:
        raise _not_found(model_section, path, error) from error
    # An unsupported family is a usage error (exit 2) whatever its processor does: say so before trying to load
    # a processor that may need torchvision or remote code.
    family_for_model_type(config.model_type, model_section.name)
    qwen_processor.register()
    if from_dir is not None:
        path = str(from_dir)
    try:
        processor = AutoProcessor.from_pretrained(path, **kwargs)
    except Exception as error:
        fallback = _fallback_processor(config.model_type)
        if fallback is None:
            raise VlmtuneError(f"cannot load the processor of {model_section.name!r}: {error}") from error
        try:
            processor = _import_object(fallback).from_pretrained(path, **kwargs)
        except Exception as fallback_error:
            raise VlmtuneError(
                f"cannot load the processor of {model_section.name!r}: {error}",
                hint=f"the torchvision-free {fallback} failed too: {fallback_error}",
            ) from error
    _apply_pixel_bounds(processor, data_section)
    return processor


def _fallback_processor(model_type: str) -> str | None:
    try:
        return family_for_model_type(model_type).image_only_processor
    except UsageError:
        return None


def _apply_pixel_bounds(processor, data: DataSection) -> None:
    if data.min_pixels is None and data.max_pixels is None:
        return
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    if size is None or size.get("shortest_edge") is None or size.get("longest_edge") is None:
        raise UsageError(
            f"data.min_pixels/max_pixels need a processor that resizes by pixel area (Qwen-VL); "
            f"this model's is {type(image_processor).__name__}",
            hint="remove data.min_pixels and data.max_pixels from the recipe; inherited from a parent, drop them "
            'with `unset = ["data.min_pixels", "data.max_pixels"]` in the recipe or '
            "`--unset data.min_pixels --unset data.max_pixels`",
        )
    assert image_processor is not None  # else its size would be None, refused above
    # Qwen's processors keep the pixel bounds as size.shortest_edge/longest_edge (area, not edge length).
    bounds = {k: v for k, v in dict(size).items() if v is not None}  # SizeDict iterates as (key, value)
    if data.min_pixels is not None:
        bounds["shortest_edge"] = data.min_pixels
    if data.max_pixels is not None:
        bounds["longest_edge"] = data.max_pixels
    image_processor.size = type(size)(**bounds)


def _torch_dtype(name: str):
    import torch

    if name == "auto":  # bfloat16 only where the GPU computes it natively (placement.auto_precision)
        name = LOAD_DTYPE[machine_precision()]
    return getattr(torch, name)


def _quantization_config(quantization: str, dtype):
    import torch

    if quantization == "none":
        return None
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(
            f"model.quantization = {quantization!r} needs a CUDA GPU and the bitsandbytes package",
            hint='set model.quantization = "none" on this machine',
        )
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def load_model(model_section: ModelSection, cache_dir: Path, *, dtype: str | None = None, on_gpu: bool = False):
    """Load `model_section.name` with `AutoModelForImageTextToText`.

    `dtype` overrides `model_section.dtype` ("auto": bfloat16 on a GPU with native bf16, float16 on older GPUs,
    float32 without CUDA). With CUDA, a quantised model (always) or any model with `on_gpu` (training) loads
    straight onto this process's GPU (`LOCAL_RANK`), not through host memory, rather than on GPU 0 for every
    rank. Without `on_gpu` others load to host memory (export merges there: it may not fit the GPU).
    Raises UsageError for a model that cannot be found, is not an image-text-to-text model, or asks for
    quantization without CUDA and bitsandbytes; VlmtuneError if an existing checkpoint fails to load.
    """
    from transformers import AutoModelForImageTextToText

    path = resolve_model_path(model_section.name, cache_dir)
    torch_dtype = _torch_dtype(dtype or model_section.dtype)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "revision": model_section.revision,
        "trust_remote_code": model_section.trust_remote_code,
    }
    if model_section.attn_implementation:
        kwargs["attn_implementation"] = model_section.attn_implementation
    quantization = _quantization_config(model_section.quantization, torch_dtype)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    import torch

    device_map = local_device_map(torch.cuda.is_available(), os.environ)
    if device_map is not None and (on_gpu or quantization is not None):
        kwargs["device_map"] = device_map
    try:
        return AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except OSError as error:
        raise _not_found(model_section, path, error) from error
    except ValueError as error:
        raise UsageError(f"cannot load model.name = {model_section.name!r}: {error}") from error


def load_trained_model(model_section: ModelSection, weights_dir: Path, cache_dir: Path, *, dtype: str | None = None):
    """The weights a run saved in `weights_dir` (its final/ or a checkpoint), ready for inference.

    A PEFT adapter is put on the recipe's base model and merged into it (unless the base is quantised); a
    directory without one holds a whole model (full fine-tuning) and is loaded as such. Raises what
    `load_model` raises, and VlmtuneError when the adapter does not fit the base model.
    """
    weights_dir = Path(weights_dir)
    if not (weights_dir / "adapter_config.json").is_file():
        return load_model(
            model_section.model_copy(update={"name": str(weights_dir), "revision": None}), cache_dir, dtype=dtype
        )
    from peft import PeftModel

    base = load_model(model_section, cache_dir, dtype=dtype)
    try:
        model = PeftModel.from_pretrained(base, weights_dir)
    except (ValueError, KeyError, RuntimeError) as error:
        raise VlmtuneError(f"cannot put the adapter in {weights_dir} on {model_section.name!r}: {error}") from error
    return model.merge_and_unload() if model_section.quantization == "none" else model


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def load_family(model_section: ModelSection, cache_dir: Path) -> Family:
    """The family of `model.name`, read from its config alone (cheap: no weights are loaded).

    Raises UsageError for a model that cannot be found or whose family vlmtune does not support.
    """
    from transformers import AutoConfig

    path = resolve_model_path(model_section.name, cache_dir)
    try:
        config = AutoConfig.from_pretrained(
            path, revision=model_section.revision, trust_remote_code=model_section.trust_remote_code
        )
    except OSError as error:
        raise _not_found(model_section, path, error) from error
    return family_for_model_type(config.model_type, model_section.name)


def rope_index(model):
    """The model's own `get_rope_index` (Qwen-VL's mRoPE positions of one sample), which packing calls per sample.

    Raises UsageError for a model whose family does not pack (see `families.check_packing`).
    """
    family = family_of(model)
    base = _unwrap(model)
    inner = getattr(base, "model", None)
    get_rope_index = getattr(inner, "get_rope_index", None)
    if not family.packs or get_rope_index is None:
        raise UsageError(f"training.packing: the {family.name} family has no per-sample positions to pack with")
    return get_rope_index


def family_of(model) -> Family:
    """The family of a loaded (possibly PEFT-wrapped) model. Raises UsageError for an unsupported one."""
    return family_for_model_type(_unwrap(model).config.model_type)
