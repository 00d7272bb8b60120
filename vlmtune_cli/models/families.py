"""Everything vlmtune knows about each supported model family, in one table.

Supporting a new family means adding one `Family` entry to `FAMILIES` (and, if its box syntax is new, one
`BoxFormat` entry, writer and parser, in boxes.py); docs/families.md walks through it. The module prefixes below
were read off real model instances (transformers 5.23 for the first three, 5.24 for Qwen3-VL, Qwen3.5 and
Gemma 3); a parameter that matches none of them is an error, never silently left out of freezing.

Imports nothing heavy: recipe validation and `--help` may use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from vlmtune_cli.errors import UsageError, VlmtuneError

Component = Literal["vision", "projector", "llm"]
COMPONENTS: tuple[Component, ...] = ("vision", "projector", "llm")

# Prefixes wrappers put in front of the model's own parameter names: PEFT (`base_model.model.`),
# DistributedDataParallel (`module.`), torch.compile (`_orig_mod.`).
_WRAPPER_PREFIXES = ("base_model.model.", "module.", "_orig_mod.")
# Segments PEFT puts inside a name when a module becomes `modules_to_save`: the trainable copy
# (`visual.modules_to_save.default.blocks...`) and the kept original (`visual.original_module.blocks...`).
_PEFT_INNER = re.compile(r"\.(?:modules_to_save(?:\.[^.]+)?|original_module)(?=\.|$)")


@dataclass(frozen=True)
class Family:
    name: str
    """Our name for the family, as recipes and messages show it."""
    model_types: tuple[str, ...]
    """`config.model_type` values that belong to this family."""
    vision_prefixes: tuple[str, ...]
    """Parameter-name prefixes of the vision encoder, without the projector."""
    projector_prefixes: tuple[str, ...]
    """Parameter-name prefixes of the vision-to-language projector (Qwen2-VL's merger)."""
    llm_prefixes: tuple[str, ...]
    """Parameter-name prefixes of the language model, its embeddings and its head."""
    image_tokens: tuple[str, ...]
    """Tokens that stand for an image; masked from the loss even under `loss_on = "all"`."""
    assistant_header: str
    """Text that opens an assistant turn in the chat template (not trained)."""
    end_of_turn: str
    """Text that closes a turn; trained as part of an assistant turn."""
    box_format: str
    """How this family writes boxes in text; boxes.py parses and renders each format."""
    image_only_processor: str | None = None
    """`module:Class` of a processor that needs no torchvision, tried when `AutoProcessor` fails."""
    packs: bool = False
    """`training.packing` works: each sample's positions come from the model's own `get_rope_index`, and with
    `position_ids` of shape [4, B, L] and no attention mask transformers builds a block-diagonal mask."""
    fsdp_blocks: tuple[str, ...] = ()
    """Module classes `training.strategy = "fsdp"` shards one by one (FSDP2 `fully_shard` units): the decoder layers,
    the vision blocks and any cross-attention layers. Each unit's weights are gathered just before it runs and freed
    after, so the largest one bounds the extra memory; whatever lies outside them (embeddings, head, projector) is
    sharded as one root unit."""

    def prefixes(self, component: Component) -> tuple[str, ...]:
        return {
            "vision": self.vision_prefixes,
            "projector": self.projector_prefixes,
            "llm": self.llm_prefixes,
        }[component]


_QWEN2_VL = Family(
    name="qwen2-vl",
    model_types=("qwen2_vl",),
    # model.visual holds patch_embed, blocks and the merger; the merger is the projector.
    vision_prefixes=("model.visual.patch_embed.", "model.visual.blocks."),
    projector_prefixes=("model.visual.merger.",),
    llm_prefixes=("model.language_model.", "lm_head."),
    image_tokens=("<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
    assistant_header="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    box_format="qwen2-vl-grid",  # <|box_start|>(x1,y1),(x2,y2)<|box_end|> on a 0-1000 grid
    image_only_processor="vlmtune_cli.models.qwen_processor:Qwen2VLImageOnlyProcessor",
    packs=True,
    fsdp_blocks=("Qwen2VLDecoderLayer", "Qwen2VLVisionBlock"),
)

FAMILIES: tuple[Family, ...] = (
    _QWEN2_VL,
    # Qwen2.5-VL keeps Qwen2-VL's module layout, tokens and chat format; only its boxes and processor differ.
    replace(
        _QWEN2_VL,
        name="qwen2.5-vl",
        model_types=("qwen2_5_vl",),
        box_format="qwen2.5-vl-json",  # {"bbox_2d": [x1, y1, x2, y2]} in pixels of the resized image
        image_only_processor="vlmtune_cli.models.qwen_processor:Qwen2_5_VLImageOnlyProcessor",
        fsdp_blocks=("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"),
    ),
    Family(
        name="mllama",
        model_types=("mllama",),
        vision_prefixes=("model.vision_model.",),
        projector_prefixes=("model.multi_modal_projector.",),
        # The cross-attention layers that read image features live inside the language model: they train
        # (or freeze) with the LLM.
        llm_prefixes=("model.language_model.", "lm_head."),
        image_tokens=("<|image|>",),
        assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        end_of_turn="<|eot_id|>",
        box_format="plain",  # no native box syntax: [x1, y1, x2, y2] in original-image pixels
        fsdp_blocks=("MllamaSelfAttentionDecoderLayer", "MllamaCrossAttentionDecoderLayer", "MllamaVisionEncoderLayer"),
    ),
    replace(
        _QWEN2_VL,
        name="qwen3-vl",
        model_types=("qwen3_vl",),
        # model.visual: patch_embed, a learned position grid (pos_embed), blocks, the merger and the DeepStack
        # mergers (deepstack_merger_list), which project the features of intermediate blocks into the first LLM
        # layers. All mergers map vision features to the LLM width, as Qwen2-VL's merger does: projector.
        vision_prefixes=("model.visual.patch_embed.", "model.visual.pos_embed.", "model.visual.blocks."),
        projector_prefixes=("model.visual.merger.", "model.visual.deepstack_merger_list."),
        box_format="qwen3-vl-json",  # {"bbox_2d": [x1, y1, x2, y2]} on a 0-1000 grid
        image_only_processor="vlmtune_cli.models.qwen_processor:Qwen3VLImageOnlyProcessor",
        fsdp_blocks=("Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"),
    ),
    replace(
        _QWEN2_VL,
        name="qwen3.5",
        model_types=("qwen3_5",),
        # Qwen3-VL's vision tower without DeepStack; the hybrid (linear-attention) layers are all in the LLM.
        vision_prefixes=("model.visual.patch_embed.", "model.visual.pos_embed.", "model.visual.blocks."),
        projector_prefixes=("model.visual.merger.",),
        box_format="qwen3-vl-json",  # Qwen3-VL's grounding format, which Qwen3.5 keeps
        image_only_processor="vlmtune_cli.models.qwen_processor:Qwen3VLImageOnlyProcessor",
        fsdp_blocks=("Qwen3_5DecoderLayer", "Qwen3_5VisionBlock"),
    ),
    Family(
        name="gemma3",
        model_types=("gemma3",),
        vision_prefixes=("model.vision_tower.",),  # SigLIP
        projector_prefixes=("model.multi_modal_projector.",),  # average pooling, RMSNorm, one matrix
        # Gemma 3 ties lm_head to the input embeddings: named_parameters() lists the shared weight once, under
        # model.language_model.embed_tokens; "lm_head." covers checkpoints that untie it.
        llm_prefixes=("model.language_model.", "lm_head."),
        image_tokens=("<start_of_image>", "<image_soft_token>", "<end_of_image>"),
        assistant_header="<start_of_turn>model\n",
        end_of_turn="<end_of_turn>",
        box_format="gemini-json",  # no native box syntax: {"box_2d": [y1, x1, y2, x2]} on a 0-1000 grid
        fsdp_blocks=("Gemma3DecoderLayer", "SiglipEncoderLayer"),
    ),
)
FAMILIES_DOC = "docs/families.md"


def supported_model_types() -> list[str]:
    return sorted(t for family in FAMILIES for t in family.model_types)


def supported_families() -> str:
    """The families and their `config.model_type` values, for messages: "qwen2-vl (qwen2_vl), ..."."""
    return ", ".join(f"{family.name} ({', '.join(family.model_types)})" for family in FAMILIES)


def family_for_model_type(model_type: str, model_name: str | None = None) -> Family:
    """The family a `config.model_type` belongs to. Raises UsageError for an unsupported one.

    `model_name` (the recipe's `model.name`) only makes the message say which checkpoint it is about.
    """
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    subject = f"model.name = {model_name!r} is a {model_type!r} model" if model_name else f"model type {model_type!r}"
    raise UsageError(
        f"{subject}, a family vlmtune does not support; supported families: {supported_families()}",
        hint=f"{FAMILIES_DOC} explains how to add a family (an entry in vlmtune_cli/models/families.py, "
        "a tiny built-in model, a box format)",
    )


def check_packing(family: Family, packing: bool) -> None:
    """Raises UsageError when `training.packing` is on for a family that cannot pack."""
    if packing and not family.packs:
        raise UsageError(
            f"training.packing = true: the {family.name} family cannot pack samples into one row (its attention "
            "takes no per-sample mask from position_ids; Mllama's cross-attention mask is per sample)",
            hint="set training.packing = false, or use a family that packs: "
            + ", ".join(f.name for f in FAMILIES if f.packs),
        )


def strip_wrapper_prefixes(param_name: str) -> str:
    """The parameter's name in the bare model, whatever PEFT/DDP/compile wrappers it sits in (PEFT's
    `modules_to_save` copies included: both the trainable copy and the kept original map to the bare name)."""
    param_name = _PEFT_INNER.sub("", param_name)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if param_name.startswith(prefix):
                param_name = param_name[len(prefix) :]
                stripped = True
    return param_name


def find_component(family: Family, name: str) -> Component | None:
    """The component a parameter or module name lies in, or None (e.g. for a container such as `model`)."""
    name = strip_wrapper_prefixes(name)
    for component in COMPONENTS:
        # A module's own name is its prefix without the trailing dot (e.g. "lm_head" for "lm_head.").
        if any(name.startswith(p) or name == p[:-1] for p in family.prefixes(component)):
            return component
    return None


def component_of(family: Family, param_name: str) -> Component:
    """The component (vision, projector, llm) a parameter belongs to.

    Accepts names from a bare model or one wrapped by PEFT, DDP or torch.compile. Raises VlmtuneError for a
    name outside every component, so that no weight can escape freezing unnoticed.
    """
    component = find_component(family, param_name)
    if component is not None:
        return component
    raise VlmtuneError(
        f"{param_name!r} belongs to none of the {family.name} components (vision, projector, llm)",
        hint="the model's module names differ from what vlmtune_cli/models/families.py expects for this family",
    )
