"""The pieces the tiny built-in models are made of: a byte-level BPE tokenizer trained on a small corpus (with each
family's special tokens and pre-tokenizer split) and the Qwen text config most of them share.

Shared by builtin.py (Qwen2-VL, Qwen2.5-VL), builtin_mllama.py, builtin_qwen3.py and builtin_gemma3.py; imports
nothing heavy at module level.
"""

from __future__ import annotations

from pathlib import Path

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


def save_qwen(directory: Path, model, tokenizer, processor_class, image_processor, chat_template: str) -> None:
    """Save a tiny Qwen-family model with greedy generation defaults, and its processor (registered so that
    `AutoProcessor` finds the torchvision-free one)."""
    from transformers import GenerationConfig

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
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)
    processor.save_pretrained(directory)
