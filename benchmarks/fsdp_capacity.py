"""How large a model fits, on paper: GiB per GPU for LoRA and full fine-tuning under FSDP2, from the family configs.

    python -m benchmarks.fsdp_capacity                  # from the repository root; prints markdown, ~10 s on CPU
    python -m benchmarks.fsdp_capacity --gpu-gib 40 --headroom 0.25

No GPU, no download: each model below is built from its published dimensions with transformers' own config class
(`AutoConfig.for_model`) and instantiated on the meta device, so the parameter counts are exact for those
dimensions. Parameters are split into vision / projector / language model with vlmtune's own family prefixes
(`vlmtune_cli.models.families.component_of`). Each count is printed next to the one its model card gives (written
into `MODELS` from memory of the hub pages, not fetched): all agree within 0.3%.

Memory model, per GPU, training *state only* (weights, gradients, optimizer state; no activations):

- full fine-tuning (`tuning.vision = projector = llm = "full"`), bf16 mixed precision with fp32 master weights:
  4 (fp32 weight) + 4 (fp32 gradient) + 8 (AdamW m and v, fp32) = 16 bytes per parameter.
- LoRA (vlmtune's default: `tuning.llm = "lora"`, vision and projector frozen, `lora.r = 16`,
  `lora.target_modules = "all-linear"`): the frozen weights in bf16, 2 bytes per parameter, plus 16 bytes per
  LoRA parameter; LoRA parameters are r × (in + out) for every nn.Linear of the language model (lm_head excluded,
  as PEFT's "all-linear" leaves the output layer out; Mllama's cross-attention layers are in the language model).
- FSDP2 over N GPUs divides all of that by N and adds what is gathered unsharded in bf16: two of the largest sharded
  units (the one running and the one prefetched: 2 × 2 bytes × its parameters), where the units are the decoder
  layers, vision blocks and cross-attention layers (each family's `fsdp_blocks` in models/families.py), plus the root
  unit (everything outside them: embeddings, lm_head, final norm, projector, patch embedding). The root stays gathered
  from the forward pass to the end of the backward pass (FSDP2 does not reshard the root after forward by default, and
  lm_head is the first thing the backward pass needs): 2 bytes × its parameters, and for full fine-tuning 2 more for
  its unsharded bf16 gradient, held until the root's reduce-scatter at the end of the backward pass. With large
  vocabularies the root is the biggest gathered item: 2.6B parameters (4.8 GiB) for the 72B Qwen models.
  `training.fsdp.reshard_after_forward = false` keeps every unit gathered instead: not modelled.
- DDP (and one GPU): the same state, unsharded, nothing gathered. DDP's gradient buckets and autocast's bf16
  weight copies are not counted.
- A model "fits" when that state is at most (1 - headroom) of the GPU: 20% (`--headroom`) is left for
  activations (which depend on batch, sequence length and activation checkpointing, not modelled here), the CUDA
  context, NCCL buffers and fragmentation. The state figures are lower bounds of what a run needs.

Models left out, because their dimensions are not known here with confidence: Qwen3.5 (the hybrid Gated DeltaNet
layers' head counts of Qwen3.5-27B) and the MoE variants vlmtune does not support. Qwen2.5-VL-32B/72B: their vision
MLP width is taken as the 3B/7B's 3420 (some copies of the config say 3456; 4.4M parameters either way).
Dimensions that hold no parameters (rope settings, context length, token ids) are left at the class defaults.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

GIB = 2**30
GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)
GPUS_PER_NODE = 8
LORA_R = 16

FULL_BYTES = 4 + 4 + 8  # fp32 weight, fp32 gradient, AdamW m and v in fp32
FROZEN_BYTES = 2  # bf16 weight that does not train
GATHERED_BYTES = 2  # FSDP2 gathers (and computes gradients) in bf16
PREFETCHED_UNITS = 2  # the unit running and the next one, all-gathered ahead

Mode = Literal["lora", "full"]


@dataclass(frozen=True)
class Published:
    """A published checkpoint's dimensions: the parameter-bearing fields of its config.json."""

    name: str
    model_type: str
    text: dict[str, Any]
    vision: dict[str, Any]
    card_billions: float
    """The parameter count the model card or hub page gives (what the name rounds), to check the build against."""
    top: dict[str, Any] = field(default_factory=dict)


def _qwen2_text(hidden: int, intermediate: int, layers: int, heads: int, kv: int, vocab: int, tie: bool):
    return dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        tie_word_embeddings=tie,
    )


def _qwen3_text(hidden: int, intermediate: int, layers: int, heads: int, tie: bool):
    return dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=tie,
    )


_QWEN2_VL_VISION = dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, patch_size=14)  # + hidden_size (LLM)
_QWEN2_5_VL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14)
# Qwen3-VL: two towers with 16-px patches and a 48×48 learned position grid; the 2B and 4B use the smaller one.
_QWEN3_VL = dict(num_heads=16, patch_size=16, num_position_embeddings=2304)
_QWEN3_VL_VISION_S: dict[str, Any] = dict(_QWEN3_VL, depth=24, hidden_size=1024, intermediate_size=4096)
_QWEN3_VL_VISION_S["deepstack_visual_indexes"] = [5, 11, 17]
_QWEN3_VL_VISION_L: dict[str, Any] = dict(_QWEN3_VL, depth=27, hidden_size=1152, intermediate_size=4304)
_QWEN3_VL_VISION_L["deepstack_visual_indexes"] = [8, 16, 24]
_MLLAMA_VISION = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_global_layers=8,
    attention_heads=16,
    image_size=560,
    patch_size=14,
    max_num_tiles=4,
    vision_output_dim=7680,
    intermediate_layers_indices=[3, 7, 15, 23, 30],
)
_MLLAMA_TEXT = dict(vocab_size=128256, num_key_value_heads=8, tie_word_embeddings=False)
# Gemma 3's SigLIP (so400m, 896-px images, no pooling head) is the same in 4B, 12B and 27B.
_GEMMA3_VISION = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=896,
    patch_size=14,
    vision_use_head=False,
)
_GEMMA3_TEXT = dict(vocab_size=262208, tie_word_embeddings=True)

MODELS: tuple[Published, ...] = (
    # Qwen/Qwen2-VL-2B-Instruct
    Published(
        "Qwen/Qwen2-VL-2B-Instruct",
        "qwen2_vl",
        _qwen2_text(1536, 8960, 28, 12, 2, 151936, tie=True),
        dict(_QWEN2_VL_VISION, hidden_size=1536),
        2.21,
        dict(tie_word_embeddings=True),
    ),
    # Qwen/Qwen2-VL-7B-Instruct
    Published(
        "Qwen/Qwen2-VL-7B-Instruct",
        "qwen2_vl",
        _qwen2_text(3584, 18944, 28, 28, 4, 152064, tie=False),
        dict(_QWEN2_VL_VISION, hidden_size=3584),
        8.29,
    ),
    # Qwen/Qwen2-VL-72B-Instruct
    Published(
        "Qwen/Qwen2-VL-72B-Instruct",
        "qwen2_vl",
        _qwen2_text(8192, 29568, 80, 64, 8, 152064, tie=False),
        dict(_QWEN2_VL_VISION, hidden_size=8192),
        73.4,
    ),
    # Qwen/Qwen2.5-VL-3B-Instruct
    Published(
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "qwen2_5_vl",
        _qwen2_text(2048, 11008, 36, 16, 2, 151936, tie=True),
        dict(_QWEN2_5_VL_VISION, out_hidden_size=2048),
        3.75,
        dict(tie_word_embeddings=True),
    ),
    # Qwen/Qwen2.5-VL-7B-Instruct
    Published(
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "qwen2_5_vl",
        _qwen2_text(3584, 18944, 28, 28, 4, 152064, tie=False),
        dict(_QWEN2_5_VL_VISION, out_hidden_size=3584),
        8.29,
    ),
    # Qwen/Qwen2.5-VL-32B-Instruct
    Published(
        "Qwen/Qwen2.5-VL-32B-Instruct",
        "qwen2_5_vl",
        _qwen2_text(5120, 27648, 64, 40, 8, 152064, tie=False),
        dict(_QWEN2_5_VL_VISION, out_hidden_size=5120),
        33.5,
    ),
    # Qwen/Qwen2.5-VL-72B-Instruct
    Published(
        "Qwen/Qwen2.5-VL-72B-Instruct",
        "qwen2_5_vl",
        _qwen2_text(8192, 29568, 80, 64, 8, 152064, tie=False),
        dict(_QWEN2_5_VL_VISION, out_hidden_size=8192),
        73.4,
    ),
    # Qwen/Qwen3-VL-2B-Instruct (Qwen3-1.7B's text model)
    Published(
        "Qwen/Qwen3-VL-2B-Instruct",
        "qwen3_vl",
        _qwen3_text(2048, 6144, 28, 16, tie=True),
        dict(_QWEN3_VL_VISION_S, out_hidden_size=2048),
        2.13,
        dict(tie_word_embeddings=True),
    ),
    # Qwen/Qwen3-VL-4B-Instruct (Qwen3-4B's text model)
    Published(
        "Qwen/Qwen3-VL-4B-Instruct",
        "qwen3_vl",
        _qwen3_text(2560, 9728, 36, 32, tie=True),
        dict(_QWEN3_VL_VISION_S, out_hidden_size=2560),
        4.44,
        dict(tie_word_embeddings=True),
    ),
    # Qwen/Qwen3-VL-8B-Instruct (Qwen3-8B's text model)
    Published(
        "Qwen/Qwen3-VL-8B-Instruct",
        "qwen3_vl",
        _qwen3_text(4096, 12288, 36, 32, tie=False),
        dict(_QWEN3_VL_VISION_L, out_hidden_size=4096),
        8.77,
    ),
    # Qwen/Qwen3-VL-32B-Instruct (Qwen3-32B's text model)
    Published(
        "Qwen/Qwen3-VL-32B-Instruct",
        "qwen3_vl",
        _qwen3_text(5120, 25600, 64, 64, tie=False),
        dict(_QWEN3_VL_VISION_L, out_hidden_size=5120),
        33.4,
    ),
    # meta-llama/Llama-3.2-11B-Vision-Instruct: Llama-3.1-8B's 32 layers + 8 gated cross-attention layers
    Published(
        "meta-llama/Llama-3.2-11B-Vision-Instruct",
        "mllama",
        dict(
            _MLLAMA_TEXT,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=40,
            num_attention_heads=32,
            cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38],
        ),
        _MLLAMA_VISION,
        10.7,
    ),
    # meta-llama/Llama-3.2-90B-Vision-Instruct: Llama-3.1-70B's 80 layers + 20 cross-attention layers
    Published(
        "meta-llama/Llama-3.2-90B-Vision-Instruct",
        "mllama",
        dict(
            _MLLAMA_TEXT,
            hidden_size=8192,
            intermediate_size=28672,
            num_hidden_layers=100,
            num_attention_heads=64,
            cross_attention_layers=list(range(3, 100, 5)),
        ),
        _MLLAMA_VISION,
        88.6,
    ),
    # google/gemma-3-4b-it
    Published(
        "google/gemma-3-4b-it",
        "gemma3",
        dict(
            _GEMMA3_TEXT,
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=34,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
        ),
        _GEMMA3_VISION,
        4.30,
        dict(tie_word_embeddings=True),
    ),
    # google/gemma-3-12b-it
    Published(
        "google/gemma-3-12b-it",
        "gemma3",
        dict(
            _GEMMA3_TEXT,
            hidden_size=3840,
            intermediate_size=15360,
            num_hidden_layers=48,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=256,
        ),
        _GEMMA3_VISION,
        12.2,
        dict(tie_word_embeddings=True),
    ),
    # google/gemma-3-27b-it
    Published(
        "google/gemma-3-27b-it",
        "gemma3",
        dict(
            _GEMMA3_TEXT,
            hidden_size=5376,
            intermediate_size=21504,
            num_hidden_layers=62,
            num_attention_heads=32,
            num_key_value_heads=16,
            head_dim=128,
            query_pre_attn_scalar=168,
        ),
        _GEMMA3_VISION,
        27.4,
        dict(tie_word_embeddings=True),
    ),
)


@dataclass(frozen=True)
class Counts:
    """Parameter counts of one model, as the memory model needs them."""

    name: str
    total: int
    vision: int
    projector: int
    llm: int
    lora: int
    """Trainable LoRA parameters at r = LORA_R on every linear layer of the language model."""
    largest_unit: int
    """Parameters of the largest FSDP2 unit (decoder layer, vision block, cross-attention layer)."""
    root: int
    """Parameters outside every unit (embeddings, lm_head, norms, projector, patch embedding): the root unit."""


def build_config(spec: Published) -> Any:
    """The model's config, built by transformers' own class for its model type."""
    from transformers import AutoConfig

    return AutoConfig.for_model(spec.model_type, text_config=spec.text, vision_config=spec.vision, **spec.top)


def lora_parameters(module: nn.Module, r: int = LORA_R) -> int:
    """r × (in + out) summed over the nn.Linear layers inside `module` (PEFT's A and B matrices, no bias)."""
    from torch import nn

    return sum(r * (m.in_features + m.out_features) for m in module.modules() if isinstance(m, nn.Linear))


def count(spec: Published) -> Counts:
    """Instantiates the model on the meta device (no memory, no weights) and counts its parameters."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmtune_cli.models.families import component_of, family_for_model_type

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(build_config(spec))
    family = family_for_model_type(spec.model_type, spec.name)
    by_component = {"vision": 0, "projector": 0, "llm": 0}
    for name, param in model.named_parameters():  # a tied weight is listed once
        by_component[component_of(family, name)] += param.numel()
    from vlmtune_cli.models.families import family_for_model_type

    blocks = family_for_model_type(spec.model_type).fsdp_blocks  # the units `training.strategy = "fsdp"` shards
    units = [m for m in model.modules() if type(m).__name__ in blocks]
    unit_sizes = [sum(p.numel() for p in unit.parameters()) for unit in units]
    total = sum(by_component.values())
    return Counts(
        name=spec.name,
        total=total,
        vision=by_component["vision"],
        projector=by_component["projector"],
        llm=by_component["llm"],
        lora=lora_parameters(model.get_submodule("model.language_model")),
        largest_unit=max(unit_sizes),
        root=total - sum(unit_sizes),
    )


def state_bytes(counts: Counts, mode: Mode, gpus: int, sharded: bool = True) -> float:
    """Bytes of training state on each GPU (see the module docstring). `sharded=False`: DDP, any GPU count."""
    if mode == "full":
        state = FULL_BYTES * counts.total
        root_gathered = 2 * GATHERED_BYTES * counts.root  # weights and their unsharded gradient
    else:
        state = FROZEN_BYTES * counts.total + FULL_BYTES * counts.lora
        root_gathered = GATHERED_BYTES * counts.root  # frozen: no gradient
    if not sharded or gpus == 1:
        return float(state)
    return state / gpus + PREFETCHED_UNITS * GATHERED_BYTES * counts.largest_unit + root_gathered


def fits(counts: Counts, mode: Mode, gpus: int, gpu_gib: float, headroom: float) -> bool:
    return state_bytes(counts, mode, gpus) <= (1 - headroom) * gpu_gib * GIB


def largest_fitting(models: list[Counts], mode: Mode, gpus: int, gpu_gib: float, headroom: float) -> Counts | None:
    fitting = [c for c in models if fits(c, mode, gpus, gpu_gib, headroom)]
    return max(fitting, key=lambda c: c.total, default=None)


def short(name: str) -> str:
    return name.split("/", 1)[-1]


def billions(n: int) -> str:
    return f"{n / 1e9:.2f}"


def millions(n: int) -> str:
    return f"{n / 1e6:,.0f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(models: list[Counts], gpu_gib: float, headroom: float) -> str:
    rows = []
    for gpus in GPU_COUNTS:
        nodes = f"{gpus // GPUS_PER_NODE} × {GPUS_PER_NODE}" if gpus >= GPUS_PER_NODE else "1"
        row = [str(gpus), nodes]
        for mode in ("lora", "full"):
            best = largest_fitting(models, mode, gpus, gpu_gib, headroom)
            if best is None:
                row.append("none listed")
            else:
                gib = state_bytes(best, mode, gpus) / GIB
                row.append(f"{short(best.name)} ({billions(best.total)}B, {gib:.1f} GiB)")
        rows.append(row)
    header = ["GPUs", "nodes", "LoRA r=16: largest that fits (state/GPU)", "full: largest that fits (state/GPU)"]
    return table(header, rows)


def counts_table(models: list[Counts], specs: list[Published]) -> str:
    rows = []
    for c, spec in zip(models, specs, strict=True):
        ratio = c.total / (spec.card_billions * 1e9)
        rows.append(
            [
                short(c.name),
                billions(c.total),
                f"{spec.card_billions:g}",
                f"{ratio:.3f}",
                billions(c.vision),
                millions(c.projector),
                billions(c.llm),
                millions(c.lora),
                millions(c.largest_unit),
                billions(c.root),
            ]
        )
    header = [
        "model",
        "params (B)",
        "card (B)",
        "built / card",
        "vision (B)",
        "projector (M)",
        "LLM (B)",
        "LoRA r=16 (M)",
        "largest unit (M)",
        "root unit (B)",
    ]
    return table(header, rows)


def gib_table(models: list[Counts], mode: Mode, gpu_gib: float, headroom: float) -> str:
    rows = []
    for c in models:
        row = [short(c.name)]
        for gpus in GPU_COUNTS:  # 1 GPU: nothing sharded, the same state as DDP on any number
            gib = state_bytes(c, mode, gpus) / GIB
            row.append(f"{gib:.1f}" + ("" if fits(c, mode, gpus, gpu_gib, headroom) else " ✗"))
        rows.append(row)
    header = ["model", "1 GPU (= DDP)"] + [f"FSDP2 × {gpus}" for gpus in GPU_COUNTS[1:]]
    return table(header, rows)


def report(specs: list[Published], gpu_gib: float, headroom: float) -> str:
    models = [count(spec) for spec in specs]
    budget = (1 - headroom) * gpu_gib
    parts = [
        f"Training state per GPU (no activations) against a budget of {budget:g} GiB per GPU: {gpu_gib:g} GiB "
        f"less {headroom:.0%} headroom; {GPUS_PER_NODE} GPUs per node.",
        "",
        summary_table(models, gpu_gib, headroom),
        "",
        "Parameters (meta-device build of the published config; card = the count the model card gives):",
        "",
        counts_table(models, specs),
        "",
        f"LoRA (r={LORA_R}, all linear layers of the LLM), GiB per GPU (✗: over {budget:g} GiB):",
        "",
        gib_table(models, "lora", gpu_gib, headroom),
        "",
        f"Full fine-tuning (bf16 mixed precision, fp32 master weights, AdamW), GiB per GPU (✗: over {budget:g} GiB):",
        "",
        gib_table(models, "full", gpu_gib, headroom),
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU in GiB (default 80)")
    parser.add_argument(
        "--headroom", type=float, default=0.2, help="share of the GPU kept for activations etc. (default 0.2)"
    )
    args = parser.parse_args(argv)
    print(report(list(MODELS), args.gpu_gib, args.headroom))


if __name__ == "__main__":
    main()
