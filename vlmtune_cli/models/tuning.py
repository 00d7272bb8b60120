"""Which parameters train: a recipe's `[tuning]` (frozen / lora / full per component) and `[lora]` applied to a loaded
model, LoRA adapters on the `lora` components only, trainable weights kept in float32, and the table `train` prints.

Imports torch and PEFT inside the functions only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from vlmtune_cli.config.schema import LoraSection, TuningSection
from vlmtune_cli.errors import UsageError, VlmtuneError
from vlmtune_cli.models.families import COMPONENTS, Family, component_of, find_component
from vlmtune_cli.models.loading import family_of


def lora_target_modules(model, family: Family, components: Iterable[str], targets: list[str] | str) -> list[str]:
    """Full names of the modules that get LoRA adapters, all inside `components`.

    `targets` is "all-linear" (every linear layer there, except the output head, as PEFT does) or a list of
    module names matched by suffix. Raises UsageError if a listed name matches nothing in those components.
    """
    import torch

    components = set(components)
    head = model.get_output_embeddings()
    modules = [(n, m) for n, m in model.named_modules() if n and find_component(family, n) in components]
    if targets == "all-linear":
        found = [n for n, m in modules if isinstance(m, torch.nn.Linear) and m is not head]
    else:
        found = [n for n, _ in modules if any(n == t or n.endswith(f".{t}") for t in targets)]
        unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in found)]
        if unmatched:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in modules if isinstance(m, torch.nn.Linear)})
            raise UsageError(
                f"lora.target_modules {unmatched} match no module of the components set to 'lora' "
                f"({', '.join(sorted(components))})",
                hint=f"linear layers there: {', '.join(linear)}",
            )
    if not found:
        raise UsageError(f"the components set to 'lora' ({', '.join(sorted(components))}) have no linear layer")
    return found


def _modules_to_save(model, family: Family, components: set[str]) -> list[str]:
    """The largest modules lying wholly inside `components`, which PEFT can wrap as modules_to_save."""
    import torch

    chosen: list[str] = []

    def visit(prefix: str, module) -> None:
        inside = {component_of(family, prefix + n) for n, _ in module.named_parameters()}
        if not inside & components:
            return
        # A ModuleList is iterated, never called, so PEFT's wrapper must sit on its items instead.
        if prefix and inside <= components and not isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            chosen.append(prefix[:-1])
            return
        own = [prefix + n for n, _ in module.named_parameters(recurse=False)]
        if any(component_of(family, n) in components for n in own):
            raise VlmtuneError(f"cannot train {own} fully alongside LoRA: they sit in a module shared by components")
        for name, child in module.named_children():
            visit(f"{prefix}{name}.", child)

    visit("", model)
    return chosen


def apply_tuning(model, tuning: TuningSection, lora: LoraSection, *, seed: int | None = None):
    """Freeze, add LoRA adapters to, or fully train each component as `tuning` says.

    Returns the model, wrapped in a PEFT model when any component is set to `lora`, with every trainable weight in
    float32 (frozen ones keep the load dtype). `seed` makes the adapter initialisation reproducible without
    touching the global random state. Raises UsageError for an unsupported family, `lora.target_modules` that
    match nothing, or nothing to train; VlmtuneError if a parameter belongs to no component.
    """
    import torch

    family = family_of(model)
    modes = {"vision": tuning.vision, "projector": tuning.projector, "llm": tuning.llm}
    lora_parts = {c for c, mode in modes.items() if mode == "lora"}
    if lora.target_modules == "all-linear":
        for component in sorted(lora_parts - _components_with_linear_layers(model, family)):
            # Gemma 3's projector is one bare matrix: LoRA has nothing to adapt there, and a silent no-op would
            # leave it frozen although the recipe asks it to train. It trains fully instead (saved with the
            # adapter, as `full` components are), and the user is told.
            modes[component] = "full"
            size = sum(p.numel() for n, p in model.named_parameters() if component_of(family, n) == component)
            from vlmtune_cli.console import err_console

            err_console.print(
                f"[yellow]{family.name}'s {component} has no linear layer for LoRA: it trains fully instead "
                f"({size:,} parameters, saved with the adapter)[/]"
            )
    lora_parts = {c for c, mode in modes.items() if mode == "lora"}
    full_parts = {c for c, mode in modes.items() if mode == "full"}
    for name, param in model.named_parameters():
        param.requires_grad_(component_of(family, name) in full_parts and not lora_parts)
    if lora_parts:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora_target_modules(model, family, lora_parts, lora.target_modules),
            modules_to_save=_modules_to_save(model, family, full_parts) or None,
            task_type="CAUSAL_LM",
        )
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            try:
                model = get_peft_model(model, config)
            except ValueError as error:
                raise UsageError(f"cannot add LoRA adapters as [lora] asks: {error}") from error
    leaked = [n for n, p in model.named_parameters() if p.requires_grad and modes[component_of(family, n)] == "frozen"]
    if leaked:
        raise VlmtuneError(f"{len(leaked)} parameters of frozen components would train, e.g. {leaked[0]}")
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError(
            "nothing to train: vision, projector and llm are all 'frozen'",
            hint='set at least one of tuning.vision, tuning.projector, tuning.llm to "lora" or "full"',
        )
    _keep_trainable_in_float32(model)
    return model


def _components_with_linear_layers(model, family: Family) -> set[str]:
    import torch

    head = model.get_output_embeddings()
    return {
        component
        for name, module in model.named_modules()
        if name and isinstance(module, torch.nn.Linear) and module is not head
        for component in [find_component(family, name)]
        if component is not None
    }


def _keep_trainable_in_float32(model) -> None:
    """Trainable weights (full components, PEFT's `modules_to_save` copies, LoRA adapters) in float32; frozen ones
    stay in the load dtype. AdamW's small updates vanish when rounded into bf16 weights (10 steps at lr 2e-5
    changed 24-32% of a vision weight's elements, 0% of its norms); bf16 autocast does the compute in bf16 all
    the same, and fp16's GradScaler refuses half-precision trainable weights outright."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()


class TrainableRow(NamedTuple):
    component: str
    trainable: int
    """Parameters that train (LoRA adapters and PEFT's trainable copies of `full` components included)."""
    total: int
    """All parameters the forward pass uses: PEFT's kept originals of `modules_to_save` are not counted twice."""
    trains_in: str
    """dtype(s) of the trainable parameters, "-" when none train."""
    frozen_in: str
    """dtype(s) of the frozen parameters, "-" when none are frozen."""


def trainable_table(model, family: Family) -> list[TrainableRow]:
    """One row per component (vision, projector, llm, in that order): what trains, out of what, in which dtype."""
    counts = {c: [0, 0] for c in COMPONENTS}
    dtypes: dict[str, tuple[set[str], set[str]]] = {c: (set(), set()) for c in COMPONENTS}
    for name, param in model.named_parameters():
        if ".original_module." in name:  # PEFT's untouched original of a modules_to_save copy: unused while training
            continue
        component = component_of(family, name)
        counts[component][1] += param.numel()
        dtype = str(param.dtype).removeprefix("torch.")
        if param.requires_grad:
            counts[component][0] += param.numel()
        dtypes[component][0 if param.requires_grad else 1].add(dtype)
    return [
        TrainableRow(
            c, trainable, total, ", ".join(sorted(dtypes[c][0])) or "-", ", ".join(sorted(dtypes[c][1])) or "-"
        )
        for c, (trainable, total) in counts.items()
    ]
