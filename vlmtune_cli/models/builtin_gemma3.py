"""The tiny random Gemma 3 (`gemma3`) that `builtin:tiny-gemma3` names; builtin.py builds it into the cache.

Shape of the real `google/gemma-3-4b-it` kept where it matters to vlmtune: the turn format
(`<start_of_turn>user` / `<start_of_turn>model` ... `<end_of_turn>`, the system text folded into the first user
turn), the image block the processor expands `<start_of_image>` into (`\\n\\n<start_of_image>` + soft tokens +
`<end_of_image>\\n\\n`), `token_type_ids` marking the soft tokens, sliding and global attention layers, tied word
embeddings, a SigLIP vision tower and the average-pooling projector. Scaled down: 56-px images in 14-px patches
(4×4) pooled to 4 soft tokens per image (the real model: 896 px, 64×64 patches, 256 tokens).

Imports transformers inside the function only.
"""

from __future__ import annotations

from pathlib import Path

from vlmtune_cli.models.builtin_parts import _build_tokenizer

GEMMA3_SPECIAL_TOKENS = (
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
    "<start_of_image>", "<end_of_image>", "<image_soft_token>",
)  # fmt: skip
# Gemma's tokenizer splits digits one per token, like Qwen2's; words keep their leading space.
_GEMMA_SPLIT = r" ?[^\s\p{N}]+|\p{N}|\s+(?!\S)|\s+"
# google/gemma-3-4b-it's template without tool handling: `<bos>` once; a system message becomes the start of the
# first user turn; the assistant's role is written `model`; text is trimmed; an image item is `<start_of_image>`.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}{{ '<start_of_image>' }}"
    "{%- elif 'text' in item -%}{{ item['text'] | trim }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
IMAGE_SIZE, PATCH_SIZE, TOKENS_PER_IMAGE = 56, 14, 4


def build_tokenizer():
    return _build_tokenizer(
        GEMMA3_SPECIAL_TOKENS,
        _GEMMA_SPLIT,
        extra_corpus=["model"] * 12,  # the role name in `<start_of_turn>model`, as one token
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        # Gemma3Processor reads these three from the tokenizer, as from the real one.
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )


def build_config(tokenizer):
    from transformers import Gemma3Config

    ids = tokenizer.convert_tokens_to_ids
    return Gemma3Config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "max_position_embeddings": 4096,
            # One local (sliding-window) and one global layer, as the real 5:1 pattern has both kinds; a window
            # shorter than a training sample, so the sliding mask really cuts.
            "layer_types": ["sliding_attention", "full_attention"],
            "sliding_window": 32,
            "bos_token_id": ids("<bos>"),
            "eos_token_id": [ids("<eos>"), ids("<end_of_turn>")],
            "pad_token_id": ids("<pad>"),
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "vision_use_head": False,
        },
        mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
        tie_word_embeddings=True,
    )


def write_tiny_gemma3(directory: Path, seed: int) -> None:
    import torch
    from transformers import Gemma3ForConditionalGeneration, Gemma3Processor, Gemma3TextConfig, GenerationConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    # Gemma 3's init zeroes the projector's matrix (a trained checkpoint's is not): the image would then add
    # nothing and no gradient would reach the vision tower.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.02)
    text = config.text_config
    assert isinstance(text, Gemma3TextConfig)  # Gemma3Config builds it from the dict given above
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id, do_sample=False
    )
    model.save_pretrained(directory)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=2,  # bilinear, as google/gemma-3-4b-it's preprocessor_config.json
        rescale_factor=1 / 255,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=TOKENS_PER_IMAGE,
    )
    processor.save_pretrained(directory)
