"""Tiny, randomly initialised models of real architectures, built locally (no download).

They exist so the tests and the smoke recipe exercise the exact code path of a real checkpoint: the model,
tokenizer, processor and chat template are written with `save_pretrained` and read back with the Auto classes'
`from_pretrained`. Their weights are noise; only shapes, token ids and plumbing are meaningful.

Heavy libraries are imported inside the builder so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

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
    lines += [
        f"({x},{y}),({x + 123},{y + 245})"
        for x, y in zip(range(0, 1000, 37), range(999, 0, -41), strict=False)
    ]
    lines += [f"x1={n}, y1={n // 2}, x2={n + 10}, y2={n // 3}; [{n}, {n + 5}]" for n in range(0, 1000, 53)]
    return lines


def _build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        # The full byte alphabet means any text, however foreign, still encodes (no unknown token needed).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        # Right padding for training; generation code switches the loaded tokenizer to left.
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )


def _build_config(tokenizer):
    from transformers import Qwen2VLConfig

    ids = tokenizer.convert_tokens_to_ids
    hidden = 64
    return Qwen2VLConfig(
        text_config={
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
        },
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
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def _write_tiny_qwen2_vl(directory: Path, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmtune_cli import qwen2_vl_processor

    tokenizer = _build_tokenizer()
    config = _build_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.bos_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(directory)
    qwen2_vl_processor.register()
    processor = qwen2_vl_processor.Qwen2VLImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(directory)
    info = {"builder": "tiny-qwen2-vl", "builder_version": BUILDER_VERSION, "seed": seed}
    (directory / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def build_tiny_qwen2_vl(out_dir: Path, seed: int = 0) -> None:
    """Write a tiny random Qwen2-VL (about 240k parameters) with tokenizer, processor and chat template.

    Deterministic for a given seed. Written into a temporary sibling directory and renamed into place, so
    `out_dir` either does not exist or is complete, even if the build is killed. An existing `out_dir` is
    replaced. Raises OSError if the directory cannot be written.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        _write_tiny_qwen2_vl(tmp, seed)
        if out_dir.exists():
            # A directory cannot be renamed over a non-empty one: move the old copy aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "model")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


BUILDERS = {"builtin:tiny-qwen2-vl": ("tiny-qwen2-vl", build_tiny_qwen2_vl)}
"""Built-in model name -> (cache directory name, builder). Names must match `schema.BUILTIN_MODELS`."""
