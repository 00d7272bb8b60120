"""Restoring a full fine-tune's weights from a checkpoint, in place (the resume of a run with no LoRA component).

torch, safetensors and transformers are imported inside the function.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmtune_cli.errors import VlmtuneError


def restore_full_weights(model: Any, checkpoint: Path) -> None:
    """Copy a full fine-tune's checkpoint weights into `model`, in place, one tensor at a time, strictly.

    transformers' own resume loads full-model checkpoints with `strict=False` under the checkpoint's legacy key
    names and silently keeps the fresh weights. Loading a second model through `from_pretrained` would map the
    names but costs a second full copy per rank (and casts every weight to one dtype, where trainable weights are
    float32 beside frozen half-precision ones). Instead the safetensors shards are read tensor by tensor, each name
    mapped as `from_pretrained` maps it (written against transformers 5.24's conversion mapping), and every
    weight of the model must arrive with its shape (in the model's dtype: a run saves trainable weights in
    float32 and frozen ones as loaded, so a resume copies them bit for bit). Raises VlmtuneError otherwise.
    """
    import torch
    from safetensors import safe_open
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    targets = model.state_dict(keep_vars=True)
    conversions = get_model_conversion_mapping(model)
    if any(isinstance(c, WeightConverter) for c in conversions):
        # A converter merges or splits tensors (fused experts, ...): no family vlmtune supports has one today.
        raise VlmtuneError(f"cannot restore {type(model).__name__} in place: its checkpoints need weight conversion")
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    restored: dict[str, Any] = {}
    with torch.no_grad():
        for shard in shards:
            with safe_open(str(checkpoint / shard), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                    name = rename_source_key(key, renamings, [], model.base_model_prefix, targets)[0]
                    target = targets.get(name)
                    if target is None:
                        raise VlmtuneError(f"{checkpoint / shard}: {key} (as {name}) is no weight of the model")
                    tensor = handle.get_tensor(key)
                    if tensor.shape != target.shape:
                        raise VlmtuneError(
                            f"{checkpoint / shard}: {key} has shape {tuple(tensor.shape)}, "
                            f"the model's {name} {tuple(target.shape)}"
                        )
                    target.copy_(tensor)
                    restored[name] = target
    # Tied weights are saved once: a key absent from the checkpoint is fine if it shares storage with one restored.
    pointers = {t.data_ptr() for t in restored.values()}
    missing = [n for n, t in targets.items() if n not in restored and t.data_ptr() not in pointers]
    if missing:
        raise VlmtuneError(f"{checkpoint} lacks {len(missing)} weights of the model, e.g. {missing[0]}")
