"""The tiny random Qwen3-VL (`qwen3_vl`) and Qwen3.5 (`qwen3_5`) that `builtin:tiny-qwen3-vl` and
`builtin:tiny-qwen3.5` name; builtin.py builds them into the cache.

Shape of the real `Qwen/Qwen3-VL-8B-Instruct` kept where it matters to vlmtune: Qwen2's tokens and ChatML turns
without a default system turn, 16-px patches merged 2×2 (32 px per image token) by `Qwen2VLImageProcessor` with
Qwen3-VL's pixel bounds and mean/std, a learned position grid in the vision tower, interleaved M-RoPE, and DeepStack:
mergers that feed features of intermediate vision blocks into the first LLM layers (here blocks 0 and 1 into
layers 0 and 1 of 3; the real model: blocks 8, 16, 24 into layers 0-2 of 36).

Qwen3.5 is natively multimodal with the same vision tower minus DeepStack, and a hybrid language model: three
Gated DeltaNet (linear attention) layers to one full-attention layer, as the real 3:1 pattern. On a CPU without
`causal_conv1d` and `flash-linear-attention` transformers runs those layers through its reference PyTorch code.

Imports transformers inside the functions only.
"""

from __future__ import annotations

from pathlib import Path

from vlmtune_cli.models.builtin_parts import (
    SPECIAL_TOKENS,
    _build_tokenizer,
    _qwen_text_config,
    _qwen_token_ids,
    save_qwen,
)

# Qwen3-VL-Instruct's template, minus videos, tools and `add_vision_id`: unlike Qwen2-VL's it writes no system
# turn unless the conversation has one.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
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
# Qwen3-VL's preprocessor_config.json: 16-px patches, 2×2 merge, at least 256×256 pixels, mean/std 0.5.
PATCH_SIZE = 16
MIN_PIXELS, MAX_PIXELS = 65536, 16777216


def _qwen3_text_config(tokenizer) -> dict:
    text = _qwen_text_config(tokenizer, 64)
    text["head_dim"] = 16
    # Three layers for two DeepStack mergers: features added after the LAST layer would reach only the logits of
    # image positions, which carry no loss, so that merger would never learn (the real model has 36 layers, 3
    # mergers).
    text["num_hidden_layers"] = 3
    # Qwen3-VL interleaves the temporal/height/width rotary frequencies (mrope_interleaved); head_dim/2 = 8 of them.
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    }
    return text


def _qwen3_vision_config() -> dict:
    return {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,  # the mergers project vision features to the LLM width
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 64,  # an 8×8 learned grid, interpolated to each image's patch grid
        "deepstack_visual_indexes": [0, 1],
    }


def image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    )


def write_tiny_qwen3_vl(directory: Path, seed: int) -> None:
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from vlmtune_cli.models import qwen_processor

    tokenizer = _build_tokenizer()
    config = Qwen3VLConfig(
        text_config=_qwen3_text_config(tokenizer),
        vision_config=_qwen3_vision_config(),
        **_qwen_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    processor_class = qwen_processor.Qwen3VLImageOnlyProcessor
    save_qwen(directory, model, tokenizer, processor_class, image_processor(), QWEN3_VL_CHAT_TEMPLATE)


# --- Qwen3.5 ------------------------------------------------------------------------------------------------

QWEN3_5_SPECIAL_TOKENS = (*SPECIAL_TOKENS, "<think>", "</think>")
# Qwen3.5's tokenizer (transformers' Qwen3_5Tokenizer): Qwen2's split with combining marks kept in words.
_QWEN3_5_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3.5 thinks by default. Following the Qwen3 templates' convention: the assistant turns after the last user
# message carry a think block, empty when the message has no `reasoning_content` (so training on a plain answer
# teaches the model to answer without thinking); the generation prompt opens `<think>\n` unless
# `enable_thinking=False`. Earlier assistant turns carry none. No system turn unless given; no tools or videos.
QWEN3_5_CHAT_TEMPLATE = (
    "{% set ns = namespace(last_user=-1) %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{% set ns.last_user = loop.index0 %}"
    "{% endif %}{% endfor %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' and loop.index0 > ns.last_user %}"
    "{{ '<think>\n' + (message.get('reasoning_content') or '').strip('\n') + '\n</think>\n\n' }}"
    "{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}{{ '<think>\n\n</think>\n\n' }}"
    "{% else %}{{ '<think>\n' }}{% endif %}{% endif %}"
)


def write_tiny_qwen3_5(directory: Path, seed: int) -> None:
    import torch
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    from vlmtune_cli.models import qwen_processor

    tokenizer = _build_tokenizer(QWEN3_5_SPECIAL_TOKENS, _QWEN3_5_SPLIT, extra_corpus=["think"] * 8)
    text = _qwen3_text_config(tokenizer)
    text.update(
        num_hidden_layers=4,
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
        linear_conv_kernel_dim=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    )
    vision = _qwen3_vision_config()
    del vision["deepstack_visual_indexes"]  # Qwen3.5 has no DeepStack
    config = Qwen3_5Config(
        text_config=text, vision_config=vision, **_qwen_token_ids(tokenizer), tie_word_embeddings=False
    )
    torch.manual_seed(seed)
    model = Qwen3_5ForConditionalGeneration(config).eval()
    processor_class = qwen_processor.Qwen3VLImageOnlyProcessor
    save_qwen(directory, model, tokenizer, processor_class, image_processor(), QWEN3_5_CHAT_TEMPLATE)
