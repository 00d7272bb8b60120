"""The tiny built-in Llama-3.2-Vision (Mllama): 112-px tiles, up to 4 per image, one cross-attention layer."""

from __future__ import annotations

from pathlib import Path

from vlmtune_cli.models.builtin_parts import _build_tokenizer

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


def write_tiny_mllama(directory: Path, seed: int) -> None:
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
