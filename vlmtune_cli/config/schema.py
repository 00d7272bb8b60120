"""The recipe schema: every table and key a recipe may hold, with the docstring that documents it.

Every model derives from `StrictModel`, because `extra="forbid"` on a root model does not reach nested
ones: without it a typo inside `[lora]` would pass silently. Keys passed through to TRL/PEFT keep their
upstream names where a user would look them up there (`lora.r`, `lora.target_modules`, `training.extra`).

This module imports nothing heavy: recipe validation and `--help` must never load torch.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vlmtune_cli.config.slurm_time import slurm_time_seconds

# The tiny, randomly initialised models vlmtune builds itself (no download). Listed here so a recipe
# naming an unknown one fails at validation, before anything heavy is imported.
BUILTIN_MODELS = (
    "builtin:tiny-qwen2-vl",
    "builtin:tiny-qwen2.5-vl",
    "builtin:tiny-mllama",
    "builtin:tiny-qwen3-vl",
    "builtin:tiny-gemma3",
    "builtin:tiny-qwen3.5",
)
BUILTIN_DATASETS = ("builtin:synthetic-detection", "builtin:synthetic-vqa")

ComponentMode = Literal["frozen", "lora", "full"]

_VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelSection(StrictModel):
    name: str = "Qwen/Qwen2-VL-2B-Instruct"
    """Hub id, local checkpoint directory, or a built-in tiny model such as `builtin:tiny-qwen2-vl`. A local
    directory is found relative to the recipe file's folder (like `data.source`) and stored absolute."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load; ignored for local paths."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype at load time; trainable weights are kept in float32 whatever it is. `auto`: for training, the
    dtype of the training precision (bf16 → bfloat16, fp16 → float16, fp32 → float32); for inference, bfloat16 on
    GPUs with native bf16 (compute capability ≥ 8.0), float16 on older GPUs, float32 without CUDA."""
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    """Attention kernel passed to `from_pretrained`; unset lets transformers choose (sdpa where available)."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """Load the base model quantised with bitsandbytes (QLoRA). Needs a CUDA GPU and bitsandbytes; refused with
    a component set to `full` (quantised weights do not train). Each process loads onto its own GPU (`LOCAL_RANK`)."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub checkpoint. Off unless you trust the repository."""

    @field_validator("name")
    @classmethod
    def _known_builtin(cls, name: str) -> str:
        if name.startswith("builtin:") and name not in BUILTIN_MODELS:
            raise ValueError(f"unknown built-in model {name!r}; built-in models: {', '.join(BUILTIN_MODELS)}")
        return name


class DataSection(StrictModel):
    source: str = "builtin:synthetic-detection"
    """Where conversations come from: a built-in set (`builtin:synthetic-detection`, `builtin:synthetic-vqa`),
    a `.jsonl` file, a folder `datasets` can load, a hub dataset id, or `path/to/file.py:function`. A relative
    path is relative to the folder of the recipe file that sets it (like `extends`); in `--set` or
    `VLMTUNE_DATA__SOURCE`, to the current directory. It is stored absolute in the resolved recipe."""
    num_samples: int = Field(200, ge=1)
    """Size of a built-in synthetic dataset (ignored by other sources)."""
    max_samples: int | None = Field(None, ge=1)
    """Keep at most this many samples of the source (taken after a seeded shuffle) before splitting."""
    split_ratio: float = Field(0.8, gt=0.0, le=1.0)
    """Fraction of samples in the train split when the source has no splits of its own; the rest is test."""
    seed: int = 42
    """Seed of the shuffle behind `max_samples` and `split_ratio`, and of synthetic data."""
    train_split: str = "train"
    """Split name used for training."""
    test_split: str = "test"
    """Split name used for evaluation and the benchmark."""
    max_length: int = Field(2048, ge=16)
    """Longest tokenised sample in tokens, image tokens included. Samples are never cut inside an image."""
    overlength: Literal["drop", "error"] = "drop"
    """What to do with a sample longer than `max_length`: drop it (counted and listed) or stop with an error."""
    min_pixels: int | None = Field(None, ge=1)
    """Smallest image area the processor resizes to (Qwen-VL); fewer pixels means fewer visual tokens."""
    max_pixels: int | None = Field(None, ge=1)
    """Largest image area the processor resizes to (Qwen-VL). Qwen2-VL's default allows 16,384 visual tokens
    per image: set this to bound memory (e.g. 448*448 gives at most 256 visual tokens)."""
    bad_boxes: Literal["error", "drop", "clip"] = "error"
    """What to do with a `target.boxes` box that is inverted (x2 < x1 or y2 < y1), has zero area or leaves its
    image (checked against the upright image at tokenize time): `error` names the file, line and sample;
    `drop` leaves the sample out (counted and listed); `clip` orders and clamps the corners into the image,
    removing boxes left without area (counted and listed). Training and the benchmark see the same result."""
    answer_check: Literal["error", "warn", "off"] = "error"
    """Answers you wrote yourself (not `{"type": "boxes"}` parts) are parsed at tokenize time with the family's
    box parser when `benchmark.task = "detection"`: `error` stops on any that does not parse (count and first
    ids), `warn` trains anyway and reports them, `off` skips the check. Answers without a digit ("There is no
    table.") stand for "nothing found" and pass; built-in datasets are not checked (vlmtune wrote them)."""
    options: dict[str, Any] = {}
    """Free-form settings handed to built-in and plugin sources (the `dataset_config` of a plugin)."""

    @model_validator(mode="after")
    def _pixels_ordered(self) -> DataSection:
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels})")
        return self


class TuningSection(StrictModel):
    loss_on: Literal["all", "assistant"] = "assistant"
    """Tokens that carry the loss: `all` = every token except image and padding tokens; `assistant` = only
    the assistant turns, including their end-of-turn token."""
    vision: ComponentMode = "frozen"
    """Vision encoder: `frozen`, `lora` (adapters on its linear layers) or `full` (every weight trains)."""
    projector: ComponentMode = "frozen"
    """Vision-to-language projector (Qwen2-VL's merger): `frozen`, `lora` or `full`."""
    llm: ComponentMode = "lora"
    """Language model (incl. its embeddings and head when `full`): `frozen`, `lora` or `full`."""

    @model_validator(mode="after")
    def _something_trains(self) -> TuningSection:
        if self.vision == self.projector == self.llm == "frozen":
            raise ValueError("vision, projector and llm are all 'frozen': nothing would train")
        return self


class LoraSection(StrictModel):
    r: int = Field(16, ge=1)
    """LoRA rank. Higher: more capacity, more memory."""
    alpha: int = Field(32, ge=1)
    """LoRA scaling numerator (`lora_alpha` in PEFT); the update is scaled by alpha / r."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch (`lora_dropout` in PEFT)."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names that get adapters, restricted to the components set to `lora` in `[tuning]`.
    `all-linear`: every linear layer of those components."""


class FsdpSection(StrictModel):
    """Knobs of `training.strategy = "fsdp"`. What is sharded is not one of them: each family's decoder layers,
    vision blocks and cross-attention layers (models/families.py `fsdp_blocks`), then the rest as one unit."""

    reshard_after_forward: bool = True
    """Free each layer's gathered weights after its forward pass and gather them again for the backward pass
    (FSDP2's default, ZeRO-3-like: least memory). `false` keeps them gathered from forward to backward: one
    all-gather less per layer and step, for the memory of the whole unsharded model in the gathered dtype."""
    cpu_offload: bool = False
    """Keep the sharded parameters, gradients and optimizer state in CPU memory (FSDP2's CPUOffloadPolicy): the GPU
    then holds only the layers being computed, and the optimizer step runs on the CPU (much slower). Needs CUDA."""
    activation_checkpointing: bool = False
    """Recompute each sharded layer's activations in the backward pass instead of keeping them (FSDP's own
    checkpoint wrapper around the same layers). Use this, not `training.gradient_checkpointing`, under FSDP: the
    two together are refused."""


class TrainingSection(StrictModel):
    epochs: int = Field(3, ge=1)
    """Epochs of the whole run. A chain plans `chain.total_jobs * chain.epochs_per_job` epochs instead."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides `epochs`); handy for quick checks."""
    lr: float = Field(2e-5, gt=0.0)
    """Peak learning rate."""
    lr_scheduler: str = "cosine"
    """Learning-rate schedule (`lr_scheduler_type` in transformers): cosine, linear, constant, ..."""
    warmup_steps: int = Field(100, ge=0)
    """Linear warm-up steps before the schedule starts."""
    batch_size: int = Field(1, ge=1)
    """Samples per device per forward pass."""
    eval_batch_size: int = Field(1, ge=1)
    """Samples per device per evaluation pass."""
    grad_accum: int = Field(8, ge=1)
    """Gradient accumulation steps: effective batch = batch_size * grad_accum * devices."""
    weight_decay: float = Field(0.01, ge=0.0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, gt=0.0)
    """Gradient clipping norm."""
    optim: str = "adamw_torch"
    """Optimizer name as transformers spells it."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Mixed precision (autocast; trainable weights stay float32). `auto`: bf16 on GPUs with native bf16 (compute
    capability ≥ 8.0), fp16 with loss scaling on older ones (V100, T4), fp32 without CUDA; an explicit half
    `model.dtype` picks its own precision. A half `model.dtype` with `fp32` is refused."""
    gradient_checkpointing: bool = False
    """Trade compute for memory by recomputing activations in the backward pass."""
    save_steps: int = Field(300, ge=1)
    """Save a checkpoint every this many optimizer steps (and always at the end)."""
    save_total_limit: int | None = Field(3, ge=1)
    """Keep at most this many checkpoints; older ones are deleted."""
    eval_steps: int | None = Field(50, ge=1)
    """Evaluate on the test split every this many steps; unset disables evaluation during training."""
    logging_steps: int = Field(10, ge=1)
    """Log loss and learning rate every this many steps."""
    seed: int = 42
    """Seed of model initialisation of adapters, data order and dropout."""
    report_to: list[Literal["tensorboard", "wandb", "none"]] = ["tensorboard"]
    """Where metrics go. TensorBoard logs land in the run directory under `logs/`."""
    dataloader_num_workers: int = Field(0, ge=0)
    """Worker processes that prepare batches."""
    group_by_length: bool = False
    """Batch samples of similar token counts together so less of each batch is padding (transformers'
    length-grouped sampler: shuffled, then sorted by length within mega-batches of up to 50 batches). Lengths come
    from the tokenised-data cache (no sample is loaded to find them); the order depends on the seed and the epoch
    only, so a resumed run sees the same batches."""
    packing: bool = False
    """Pack several samples into each row of at most `packing_length` tokens, so a batch holds no padding (Qwen-VL
    families; Mllama refuses). Each sample keeps its own positions and images and attends only to itself; the loss
    is the mean over the batch's trained tokens, as without packing. `batch_size` then counts rows. Rows are made
    once per run (first-fit decreasing over shuffled windows of the seed) and shuffled per epoch, so a resumed run
    sees the same rows. On sdpa, attention still runs over whole rows; flash-attention skips the masked blocks."""
    packing_length: int | None = Field(None, ge=16)
    """Tokens per packed row; never above `data.max_length`, and at least the longest sample (a sample is never
    split). Unset: the longest training sample, the fastest on sdpa and no more memory per row than that sample
    alone; longer rows fill a little better, which only flash-attention turns into speed (`vlmtune tokenize` shows
    the rows a length gives)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """How several ranks (torchrun, a SLURM job's tasks) share the work; a single process ignores it. `ddp`: every
    rank holds the whole model, its gradients and its optimizer state. `fsdp`: PyTorch's FSDP2 shards all three
    across the ranks (each holds about 1/N), so models that do not fit one GPU train; the results are DDP's.
    Checkpoints are then sharded (each rank writes its part); `final/` is ordinary safetensors."""
    fsdp: FsdpSection = FsdpSection()
    """Settings of `strategy = "fsdp"`; setting any of them with `strategy = "ddp"` is refused."""
    extra: dict[str, Any] = {}
    """Further `SFTConfig`/`TrainingArguments` keys passed through unchanged (upstream names)."""

    @model_validator(mode="after")
    def _fsdp_settings_agree(self) -> TrainingSection:
        # Compared with the defaults, not `model_fields_set`: a run's recipe.toml writes every key out.
        changed = [key for key, field in FsdpSection.model_fields.items() if getattr(self.fsdp, key) != field.default]
        if self.strategy != "fsdp" and changed:
            raise ValueError(
                f"training.fsdp.{changed[0]} is set but training.strategy = {self.strategy!r}: FSDP settings apply "
                'only to sharded training; set training.strategy = "fsdp", or remove the [training.fsdp] settings'
            )
        if self.fsdp.activation_checkpointing and self.gradient_checkpointing:
            raise ValueError(
                "training.fsdp.activation_checkpointing and training.gradient_checkpointing both recompute "
                "activations; under FSDP keep training.fsdp.activation_checkpointing = true and set "
                "training.gradient_checkpointing = false"
            )
        passed = sorted(key for key in self.extra if key in ("fsdp", "fsdp_config", "deepspeed"))
        if passed:
            raise ValueError(
                f"training.extra.{passed[0]}: vlmtune sets up distributed training itself; "
                'use training.strategy = "fsdp" and [training.fsdp] instead'
            )
        return self

    @model_validator(mode="after")
    def _packing_alone(self) -> TrainingSection:
        if self.packing and self.group_by_length:
            raise ValueError(
                "packing and group_by_length exclude each other (packed rows hold no padding to group away); "
                "set one of them to false"
            )
        return self


class ChainSection(StrictModel):
    total_jobs: int = Field(1, ge=1)
    """Number of SLURM jobs in a chain (`vlmtune submit --chain` overrides it)."""
    epochs_per_job: int = Field(1, ge=1)
    """Epochs each job of a chain trains before the next one takes over."""
    benchmark_at_end: bool = False
    """The last link benchmarks final/ with `[benchmark]` once training ends (metrics.json in the run directory)."""


class SlurmSection(StrictModel):
    partition: str | None = None
    """SLURM partition; unset uses the workspace default, then the cluster's."""
    account: str | None = None
    """SLURM account to charge."""
    qos: str | None = None
    """SLURM quality of service."""
    time: str = "04:00:00"
    """Time limit of one job as sbatch reads it: `HH:MM:SS`, `D-HH[:MM[:SS]]`, `M:S` or `M` (careful: `2:00` is two
    minutes; `vlmtune submit` prints how it read the limit). A job reaching it checkpoints and requeues itself."""
    nodes: int = Field(1, ge=1)
    """Nodes per job."""
    gpus_per_node: int = Field(0, ge=0)
    """GPUs per node; one SLURM task runs per GPU."""
    cpus_per_task: int | None = Field(None, ge=1)
    """CPU cores per task (data loading workers live here)."""
    mem: str | None = None
    """Memory per node, e.g. `64G`."""
    constraint: str | None = None
    """Node feature constraint."""
    extra: dict[str, str | int | bool] = {}
    """Further sbatch parameters, passed to submitit's `slurm_additional_parameters`."""

    @field_validator("time", mode="before")
    @classmethod
    def _time_format(cls, value: Any) -> Any:
        if isinstance(value, datetime.time):  # `time = 02:00:00` unquoted in TOML is a time of day
            value = value.isoformat()
        if isinstance(value, str):
            slurm_time_seconds(value)  # the parser `--time` uses: both accept what sbatch accepts
        return value


class BenchmarkSection(StrictModel):
    task: Literal["detection", "vqa"] = "detection"
    """Which metrics apply: boxes (IoU, precision/recall/F1, mAP) or short text answers (exact match)."""
    split: str = "test"
    """Split to evaluate."""
    batch_size: int = Field(8, ge=1)
    """Samples per generation batch."""
    max_new_tokens: int = Field(128, ge=1)
    """Longest generated answer."""
    limit: int | None = Field(None, ge=1)
    """Evaluate at most this many samples."""


class Recipe(StrictModel):
    variant: str = "base"
    """Name of the run: outputs go to `<runs_dir>/<variant>/`."""
    description: str = ""
    """One line that says what this recipe is for."""
    # pyright takes pydantic's positional `Field(8, ge=1)` for a field without a default (dataclass_transform knows
    # only `default=`), so it sees required arguments in these calls; every field has a default.
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()  # pyright: ignore[reportCallIssue]
    tuning: TuningSection = TuningSection()
    lora: LoraSection = LoraSection()  # pyright: ignore[reportCallIssue]
    training: TrainingSection = TrainingSection()  # pyright: ignore[reportCallIssue]
    chain: ChainSection = ChainSection()  # pyright: ignore[reportCallIssue]
    slurm: SlurmSection = SlurmSection()  # pyright: ignore[reportCallIssue]
    benchmark: BenchmarkSection = BenchmarkSection()  # pyright: ignore[reportCallIssue]

    @field_validator("variant")
    @classmethod
    def _safe_directory_name(cls, value: str) -> str:
        if not _VARIANT_RE.match(value):
            raise ValueError(f"{value!r} cannot name a run directory; use letters, digits, '.', '_' and '-' only")
        return value

    @model_validator(mode="after")
    def _packing_fits(self) -> Recipe:
        length = self.training.packing_length
        if length is not None and length > self.data.max_length:
            raise ValueError(
                f"training.packing_length ({length}) is above data.max_length ({self.data.max_length}); "
                "a row cannot be longer than the longest sample the data may hold: lower it or raise data.max_length"
            )
        return self

    @model_validator(mode="after")
    def _sections_agree(self) -> Recipe:
        full = [c for c in ("vision", "projector", "llm") if getattr(self.tuning, c) == "full"]
        if self.model.quantization != "none" and full:
            raise ValueError(
                f"model.quantization = {self.model.quantization!r} cannot train tuning.{full[0]} = 'full': quantised "
                'weights do not train; set model.quantization = "none", or that component to "lora" or "frozen"'
            )
        if self.model.quantization != "none" and self.training.strategy == "fsdp":
            raise ValueError(
                f"model.quantization = {self.model.quantization!r} with training.strategy = 'fsdp': vlmtune does not "
                "shard bitsandbytes-quantised weights (FSDP2 needs them stored in a float dtype, which vlmtune does "
                'not set up); use training.strategy = "ddp" for QLoRA, or model.quantization = "none" to shard'
            )
        if self.model.dtype in ("bfloat16", "float16") and self.training.precision == "fp32":
            raise ValueError(
                f"model.dtype = {self.model.dtype!r} with training.precision = 'fp32': trainable weights are kept in "
                "float32 and need autocast beside half-precision frozen ones; set training.precision = "
                f'"{"bf16" if self.model.dtype == "bfloat16" else "fp16"}" (or "auto"), or model.dtype = "float32"'
            )
        return self

    @property
    def uses_lora(self) -> bool:
        return "lora" in (self.tuning.vision, self.tuning.projector, self.tuning.llm)


TABLES = tuple(name for name, field in Recipe.model_fields.items() if isinstance(field.default, BaseModel))
