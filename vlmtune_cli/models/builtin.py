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

BUILD_INFO_FILE = "vlmtune_builtin.json"
# Bump whenever the builder's output changes, so cached copies built by an older vlmtune are rebuilt.
BUILDER_VERSION = 1

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
VOCAB_SIZE = 600

# Same shape as Qwen2-VL-Instruct's template (default system turn, one vision block per image item, string or
# list content), minus videos and `add_vision_id`. No `{% generation %}` markers: real Qwen2-VL templates have
# none, and labels must not depend on something only the tiny model offers.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenizer split: one digit per token, so box coordinates tokenise as in the real model.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _corpus() -> list[str]:
    """Text the tiny tokenizer learns merges from: chat scaffolding and the built-in detection/VQA tasks."""
    lines = [
        "system", "user", "assistant", "You are a helpful assistant.",
        "Detect the nutrition table in this image.", "detect the nutrition table", "Detect the label.",
        "Find the bounding box of the nutrition facts table.", "Output the box as (x1,y1),(x2,y2).",
        "nutrition facts table label box boxes object region image picture photo",
        "calories energy protein fat sugar sugars salt sodium fibre fiber carbohydrate",
        "per serving 100 g kcal kj",
        "What is the colour of the shape? What color is the square? How many circles are there?",
        "red green blue yellow black white orange purple grey gray square circle triangle rectangle",
        "The answer is yes. No, there is none. There are two.",
        "one two three four five six seven eight nine ten",
        "left right top bottom center centre upper lower corner of the at in on a an is are this that which",
        "Answer with a single word. Answer the question about the image. Describe the image.",
        "Where is the table? Locate every object and give its coordinates. There is no table in the image.",
        "The text says: ingredients, water, milk, wheat flour,",
        "vitamins, minerals, iron, calcium, total, daily value.",
        "Please read the heading. Which one is bigger, smaller, larger, the first, the second, the last?",
        "small large big tiny wide tall short long dark light bright background foreground text number digit",
    ]  # fmt: skip
    lines += ["system", "user", "assistant"] * 4  # whole-word tokens for the role names
    lines += [f"({x},{y}),({x + 123},{y + 245})" for x, y in zip(range(0, 1000, 37), range(999, 0, -41), strict=False)]
    lines += [f"x1={n}, y1={n // 2}, x2={n + 10}, y2={n // 3}; [{n}, {n + 5}]" for n in range(0, 1000, 53)]
    return lines


def _build_tokenizer(
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS,
    split: str | None = None,
    extra_corpus: list[str] | None = None,
    **kwargs,
):
    """A byte-level BPE of VOCAB_SIZE tokens trained on `_corpus()`, plus `special_tokens` (ids after the merges).

    `split` is the pre-tokenizer regex (Qwen2's by default); `extra_corpus` adds lines to learn from (a family's
    own words; the default corpus stays as it is, so the existing tiny models do not change); `kwargs` name the
    eos/pad/bos tokens.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split or _QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(special_tokens),
        # The full byte alphabet means any text, however foreign, still encodes (no unknown token needed).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus() + list(extra_corpus or []), trainer=trainer)
    tok.add_special_tokens(list(special_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **(kwargs or {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
        # Right padding for training; generation code switches the loaded tokenizer to left.
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )


def _qwen_text_config(tokenizer, hidden: int) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        # mrope_section splits head_dim/2 = 8 rotary frequencies over (temporal, height, width).
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }


def _qwen_token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


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


def _save_qwen(directory: Path, model, tokenizer, processor_class) -> None:
    from transformers import GenerationConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmtune_cli.models import qwen_processor

    text = model.config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=[text.eos_token_id, text.bos_token_id],
        pad_token_id=text.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(directory)
    qwen_processor.register()
    processor = processor_class(
        image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(directory)


def _write_tiny_qwen2_vl(directory: Path, seed: int) -> None:
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from vlmtune_cli.models import qwen_processor

    tokenizer = _build_tokenizer()
    config = _build_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    _save_qwen(directory, model, tokenizer, qwen_processor.Qwen2VLImageOnlyProcessor)


def _write_tiny_qwen2_5_vl(directory: Path, seed: int) -> None:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vlmtune_cli.models import qwen_processor

    tokenizer = _build_tokenizer()
    config = _build_qwen2_5_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    _save_qwen(directory, model, tokenizer, qwen_processor.Qwen2_5_VLImageOnlyProcessor)


# --- Llama 3.2 Vision (Mllama) ---------------------------------------------------------------------------

MLLAMA_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>",
)  # fmt: skip
# Llama 3's pre-tokenizer split: digits in groups of up to three.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# Llama-3.2-Vision-Instruct's turn format: `<|begin_of_text|>` once, then per turn
# `<|start_header_id|>role<|end_header_id|>\n\n` + content + `<|eot_id|>`; an image item is `<|image|>`. The real
# template also adds a dated system turn to text-only conversations and handles tools; neither matters here.
MLLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}<|image|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MLLAMA_IMAGE_SIZE = 112  # tile side; the vision config's image_size must equal the processor's


def _build_mllama_config(tokenizer):
    from transformers import MllamaConfig

    ids = tokenizer.convert_tokens_to_ids
    vision_hidden, indices = 32, [0, 1]
    return MllamaConfig(
        vision_config={
            "hidden_size": vision_hidden,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "intermediate_size": 64,
            "intermediate_layers_indices": indices,
            # The projector reads the last hidden state concatenated with the intermediate layers' outputs.
            "vision_output_dim": vision_hidden * (len(indices) + 1),
            "image_size": MLLAMA_IMAGE_SIZE,
            "patch_size": 14,
            "max_num_tiles": 4,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "cross_attention_layers": [1],  # layer 1 of 3 reads the image through cross-attention
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "bos_token_id": ids("<|begin_of_text|>"),
            "eos_token_id": ids("<|eot_id|>"),
            "pad_token_id": ids("<|finetune_right_pad_id|>"),
        },
        image_token_index=ids("<|image|>"),
        tie_word_embeddings=False,  # pyright: ignore[reportCallIssue] MllamaConfig takes it through **kwargs
    )


def _write_tiny_mllama(directory: Path, seed: int) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        MllamaForConditionalGeneration,
        MllamaProcessor,
        MllamaTextConfig,
        MllamaVisionConfig,
    )
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    tokenizer = _build_tokenizer(
        MLLAMA_SPECIAL_TOKENS,
        _LLAMA3_SPLIT,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    config = _build_mllama_config(tokenizer)
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config).eval()
    # Mllama's init sets its tanh gates to zero (a trained checkpoint's are not): the cross-attention would then
    # add nothing and no gradient would reach the vision tower or projector.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gate") and not param.any():
                param.fill_(0.5)
    text = config.text_config
    # MllamaConfig's __post_init__ builds both sub-configs from the dicts given above.
    assert isinstance(text, MllamaTextConfig) and isinstance(config.vision_config, MllamaVisionConfig)
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=[text.eos_token_id, tokenizer.convert_tokens_to_ids("<|end_of_text|>")],
        pad_token_id=text.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(directory)
    image_processor = MllamaImageProcessorPil(
        size={"height": MLLAMA_IMAGE_SIZE, "width": MLLAMA_IMAGE_SIZE},
        max_image_tiles=config.vision_config.max_num_tiles,
    )
    processor = MllamaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=MLLAMA_CHAT_TEMPLATE
    )
    processor.save_pretrained(directory)


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
    _atomic_build(out_dir, "tiny-mllama", _write_tiny_mllama, seed)


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
