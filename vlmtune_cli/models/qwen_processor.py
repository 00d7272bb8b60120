"""Image-only Qwen2-VL, Qwen2.5-VL and Qwen3-VL processors, for machines without torchvision.

In transformers 5.23 the stock `Qwen2VLProcessor` always wants a video processor, and every video processor
needs torchvision: building it fails (`VIDEO_PROCESSOR_MAPPING ... _extra_content`) and so does loading it
(`Can't load video processor`). On a CPU machine torchvision cannot be installed at all (the only reachable
wheel is a CUDA build that breaks `import transformers.AutoProcessor`). vlmtune never feeds videos, so this
subclass simply drops the video processor: `ProcessorMixin` derives a processor's parts from the parameter
names of `__init__`, hence the narrower signature. transformers 5.24's `Qwen3VLProcessor` (used by Qwen3-VL and
Qwen3.5) has the same three parts and the same problem.

This module imports transformers at import time: import it lazily (models.py and builtin_models.py do).
"""

from __future__ import annotations

from transformers import (
    AutoProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLProcessor,
    Qwen3_5Config,
    Qwen3VLConfig,
    Qwen3VLProcessor,
)


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The parent passes video_processor=None positionally; ProcessorMixin zips it away since this class
        # declares only two parts.
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """The same for Qwen2.5-VL, whose processor differs from Qwen2-VL's only for videos (timing) and in
    returning `mm_token_type_ids`, which its model's rotary position code reads."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """The same for Qwen3-VL (and Qwen3.5, whose checkpoints name `Qwen3VLProcessor` too); it returns
    `mm_token_type_ids` like Qwen2.5-VL's."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def register() -> None:
    """Let `AutoProcessor` resolve checkpoints naming these classes (the built-in tiny models) or no class."""
    AutoProcessor.register(Qwen2VLConfig, Qwen2VLImageOnlyProcessor, exist_ok=True)
    AutoProcessor.register(Qwen2_5_VLConfig, Qwen2_5_VLImageOnlyProcessor, exist_ok=True)
    AutoProcessor.register(Qwen3VLConfig, Qwen3VLImageOnlyProcessor, exist_ok=True)
    AutoProcessor.register(Qwen3_5Config, Qwen3VLImageOnlyProcessor, exist_ok=True)
