"""Tiny, randomly initialised models of real architectures, built locally (no download).

They exist so the tests and the smoke recipe exercise the exact code path of a real checkpoint: the model,
tokenizer, processor and chat template are written with `save_pretrained` and read back with the Auto classes'
`from_pretrained`. Their weights are noise; only shapes, token ids and plumbing are meaningful.

Heavy libraries are imported inside the builder so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from vlmtune_cli.fsutil import replace_dir
from vlmtune_cli.models.builtin_mllama import write_tiny_mllama
from vlmtune_cli.models.builtin_parts import (
    CHAT_TEMPLATE,
    _build_tokenizer,
    _qwen_text_config,
    _qwen_token_ids,
    save_qwen,
)

BUILD_INFO_FILE = "vlmtune_builtin.json"
# Bump whenever the builder's output changes, so cached copies built by an older vlmtune are rebuilt.
BUILDER_VERSION = 1


def _build_config(tokenizer):
    from transformers import Qwen2VLConfig

    hidden = 64
    return Qwen2VLConfig(
        text_config=_qwen_text_config(tokenizer, hidden),
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": hidden,  # the merger projects vision features to the LLM width
            "num_heads": 2,
            "mlp_ratio": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **_qwen_token_ids(tokenizer),
        tie_word_embeddings=False,
    )


def _build_qwen2_5_config(tokenizer):
    from transformers import Qwen2_5_VLConfig

    hidden = 64
    return Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tokenizer, hidden),
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": hidden,  # the merger projects vision features to the LLM width
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,  # windowed attention in block 0, full attention in block 1, as in the real model
            "fullatt_block_indexes": [1],
        },
        **_qwen_token_ids(tokenizer),
        tie_word_embeddings=False,
    )


def _write_tiny_qwen2_vl(directory: Path, seed: int) -> None:
    import torch
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmtune_cli.models import qwen_processor

    tokenizer = _build_tokenizer()
    config = _build_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    save_qwen(
        directory, model, tokenizer, qwen_processor.Qwen2VLImageOnlyProcessor, Qwen2VLImageProcessorPil(), CHAT_TEMPLATE
    )


def _write_tiny_qwen2_5_vl(directory: Path, seed: int) -> None:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmtune_cli.models import qwen_processor

    tokenizer = _build_tokenizer()
    config = _build_qwen2_5_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    save_qwen(
        directory,
        model,
        tokenizer,
        qwen_processor.Qwen2_5_VLImageOnlyProcessor,
        Qwen2VLImageProcessorPil(),
        CHAT_TEMPLATE,
    )


# --- building into the cache ------------------------------------------------------------------------------


def _atomic_build(out_dir: Path, name: str, write, seed: int) -> None:
    """Run `write(directory, seed)` into a temporary sibling of `out_dir` and rename it into place.

    `out_dir` therefore either does not exist or is complete, even if the build is killed. An existing
    `out_dir` is replaced. Raises OSError if the directory cannot be written.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        write(tmp, seed)
        info = {"builder": name, "builder_version": BUILDER_VERSION, "seed": seed}
        (tmp / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_tiny_qwen2_vl(out_dir: Path, seed: int = 0) -> None:
    """Write a tiny random Qwen2-VL (about 230k parameters) with tokenizer, processor and ChatML template.

    Deterministic for a given seed; atomic (see `_atomic_build`).
    """
    _atomic_build(out_dir, "tiny-qwen2-vl", _write_tiny_qwen2_vl, seed)


def build_tiny_qwen2_5_vl(out_dir: Path, seed: int = 0) -> None:
    """Write a tiny random Qwen2.5-VL (about 235k parameters; window attention, RMSNorm/SwiGLU vision blocks)
    with the same tokenizer, processor and ChatML template as the tiny Qwen2-VL. Deterministic and atomic."""
    _atomic_build(out_dir, "tiny-qwen2.5-vl", _write_tiny_qwen2_5_vl, seed)


def build_tiny_mllama(out_dir: Path, seed: int = 0) -> None:
    """Write a tiny random Llama-3.2-Vision (Mllama, about 320k parameters: 112-px tiles, up to 4 per image,
    one cross-attention layer) with a Llama-3-style tokenizer and chat template. Deterministic and atomic."""
    _atomic_build(out_dir, "tiny-mllama", write_tiny_mllama, seed)


def build_tiny_qwen3_vl(out_dir: Path, seed: int = 0) -> None:
    """Write a tiny random Qwen3-VL (about 331k parameters; DeepStack mergers, 16-px patches) with the Qwen2
    tokenizer and Qwen3-VL's ChatML template (builtin_qwen3.py). Deterministic and atomic."""
    from vlmtune_cli.models.builtin_qwen3 import write_tiny_qwen3_vl

    _atomic_build(out_dir, "tiny-qwen3-vl", write_tiny_qwen3_vl, seed)


def build_tiny_gemma3(out_dir: Path, seed: int = 0) -> None:
    """Write a tiny random Gemma 3 (about 150k parameters; SigLIP tower, pooled soft tokens, sliding and global
    layers) with a Gemma-style tokenizer and chat template (builtin_gemma3.py). Deterministic and atomic."""
    from vlmtune_cli.models.builtin_gemma3 import write_tiny_gemma3

    _atomic_build(out_dir, "tiny-gemma3", write_tiny_gemma3, seed)


def build_tiny_qwen3_5(out_dir: Path, seed: int = 0) -> None:
    """Write a tiny random Qwen3.5 (about 340k parameters; 3 linear-attention layers to 1 full-attention layer)
    with a Qwen3.5-style tokenizer and thinking chat template (builtin_qwen3.py). Deterministic and atomic."""
    from vlmtune_cli.models.builtin_qwen3 import write_tiny_qwen3_5

    _atomic_build(out_dir, "tiny-qwen3.5", write_tiny_qwen3_5, seed)


def remove_leftovers(out_dir: Path) -> None:
    """Delete what killed builds of `out_dir` left behind. Call only while no build of it runs."""
    out_dir = Path(out_dir)
    for kind in ("building", "old"):
        for path in out_dir.parent.glob(f".{out_dir.name}.{kind}-*"):
            shutil.rmtree(path, ignore_errors=True)


def is_current_build(directory: Path) -> bool:
    """True if `directory` holds a complete built-in model written by this builder version."""
    try:
        info = json.loads((Path(directory) / BUILD_INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    return info.get("builder_version") == BUILDER_VERSION


BUILDERS = {
    "builtin:tiny-qwen2-vl": ("tiny-qwen2-vl", build_tiny_qwen2_vl),
    "builtin:tiny-qwen2.5-vl": ("tiny-qwen2.5-vl", build_tiny_qwen2_5_vl),
    "builtin:tiny-mllama": ("tiny-mllama", build_tiny_mllama),
    "builtin:tiny-qwen3-vl": ("tiny-qwen3-vl", build_tiny_qwen3_vl),
    "builtin:tiny-gemma3": ("tiny-gemma3", build_tiny_gemma3),
    "builtin:tiny-qwen3.5": ("tiny-qwen3.5", build_tiny_qwen3_5),
}
"""Built-in model name -> (cache directory name, builder). Names must match `schema.BUILTIN_MODELS`."""
