"""Conversations → input ids and labels, and the collator that batches them.

vlmtune builds `labels` itself rather than leaving it to TRL: TRL's VLM collator masks padding only (image
tokens stay in the loss) and refuses assistant-only loss for VLMs. Here:
  loss_on = "all"        every token except image tokens (and padding, added by the collator);
  loss_on = "assistant"  only assistant turns: the tokens after each assistant header up to and including the
                         end-of-turn token. An answer that merely contains the word "assistant" is not a header:
                         headers start with a special token the text cannot produce.
Assistant turns are found in the rendered text, not among the token ids: real Qwen and Llama tokenizers merge
`\n\n`, so an answer that starts with a newline fuses with the header's last newline and the header's token ids
never occur. The header and end-of-turn strings are located in the chat template's text, the text is tokenised
with offsets, and a token trains when its characters overlap an answer (the fused `\n\n` token holds the
answer's first character, so it trains). Those tokens are then lined up with the processor's ids, which differ
only by the image tokens the processor expands (never trained).
Samples are never truncated: one longer than `max_length` is reported as overlength, since cutting inside an
image's tokens crashes the model ("image features and image tokens do not match").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from vlmtune_cli.models.families import Family

from vlmtune_cli.errors import VlmtuneError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class LabelSpec:
    """The token ids and strings label building needs, looked up once per tokenizer."""

    image_ids: frozenset[int]
    header_ids: tuple[int, ...]
    end_id: int
    pad_id: int
    header: str = ""
    """The assistant header as text (`<|im_start|>assistant\n`); turns are found by it, not by `header_ids`."""
    end: str = ""
    """The end-of-turn token as text (`<|im_end|>`)."""

    @classmethod
    def for_family(cls, tokenizer: Any, family: Family) -> LabelSpec:
        header = tuple(tokenizer.encode(family.assistant_header, add_special_tokens=False))
        end = tokenizer.convert_tokens_to_ids(family.end_of_turn)
        images = frozenset(tokenizer.convert_tokens_to_ids(t) for t in family.image_tokens)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
        return cls(
            image_ids=images,
            header_ids=header,
            end_id=end,
            pad_id=pad,
            header=family.assistant_header,
            end=family.end_of_turn,
        )


def assistant_spans(text: str, spec: LabelSpec) -> list[tuple[int, int]]:
    """Character spans [start, end) of the assistant answers in a rendered conversation: from the end of each
    header through its end-of-turn token (to the end of the text when the last turn is unterminated)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while (found := text.find(spec.header, pos)) >= 0:
        start = found + len(spec.header)
        close = text.find(spec.end, start)
        end = len(text) if close < 0 else close + len(spec.end)
        spans.append((start, end))
        pos = end
    return spans


def answer_tokens(text: str, input_ids: list[int], tokenizer: Any, spec: LabelSpec) -> list[bool]:
    """Per token of `input_ids` (the processor's ids for `text`): does it lie in an assistant answer?

    Raises VlmtuneError when the ids are not `text` tokenised with only image tokens inserted (a processor that
    rewrites the text some other way), since the answers could then not be located.
    """
    spans = assistant_spans(text, spec)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the `tokenizers` object itself: 10x less overhead than the Python wrapper's call
        encoding = backend.encode(text, add_special_tokens=False)
        ids, offsets = encoding.ids, encoding.offsets
    else:
        try:
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError as exc:  # slow tokenizers have no offsets
            raise VlmtuneError(
                f"{type(tokenizer).__name__} gives no character offsets, which assistant-only labels need",
                hint='use the model\'s fast tokenizer (tokenizer.json), or set tuning.loss_on = "all"',
            ) from exc
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    # A token with empty offsets (rare, e.g. trimmed whitespace) counts as covering its first character.
    inside = [any(a < end and max(b, a + 1) > start for start, end in spans) for a, b in offsets]
    # `input_ids` is `ids` with the processor's image expansion inserted: Qwen's and Mllama's image pads, Gemma 3's
    # soft tokens with the `<end_of_image>` and newlines it wraps them in. Walk both: a token that is the next of
    # `ids` takes its flag, any other is inserted and never in an answer (images sit in user turns). If the
    # processor dropped or rewrote text instead, `ids` is not used up and the answers cannot be located.
    flags: list[bool] = []
    j = 0
    for token in input_ids:
        if j < len(ids) and token == ids[j]:
            flags.append(inside[j])
            j += 1
        else:
            flags.append(False)
    if j != len(ids):
        raise VlmtuneError(
            f"the processor's token ids differ from the tokenised chat text beyond inserted image tokens (token "
            f"{j} of {len(ids)} of the text is missing from them), so the assistant answers cannot be located",
            hint='set tuning.loss_on = "all", or report the model family',
        )
    return flags


def build_labels(
    input_ids: list[int],
    loss_on: Literal["all", "assistant"],
    spec: LabelSpec,
    in_answer: list[bool] | None = None,
) -> list[int]:
    """Labels for one unpadded sample: the token id where the loss applies, IGNORE_INDEX elsewhere.

    `in_answer` (from `answer_tokens`) says which tokens lie in assistant answers; `loss_on = "assistant"`
    needs it.
    """
    if loss_on == "all":
        return [IGNORE_INDEX if t in spec.image_ids else t for t in input_ids]
    if in_answer is None or len(in_answer) != len(input_ids):
        raise ValueError("loss_on='assistant' needs one in_answer flag per token (answer_tokens)")
    return [t if inside else IGNORE_INDEX for t, inside in zip(input_ids, in_answer, strict=True)]


class Overlength(Exception):
    def __init__(self, length: int):
        super().__init__(length)
        self.length = length


def encode_sample(
    processor: Any,
    spec: LabelSpec,
    sample: dict[str, Any],
    loss_on: str,
    max_length: int,
) -> dict[str, Any]:
    """One conversation → tensors for the model, with labels. Raises Overlength when it does not fit."""
    text = processor.apply_chat_template(sample["messages"], tokenize=False, add_generation_prompt=False)
    images = sample.get("images") or None
    # The chat template already wrote every special token; a Llama tokenizer would add a second BOS.
    encoded = processor(text=[text], images=images, return_tensors="pt", add_special_tokens=False)
    input_ids = encoded["input_ids"][0]
    if len(input_ids) > max_length:
        raise Overlength(len(input_ids))
    ids = input_ids.tolist()
    in_answer = answer_tokens(text, ids, processor.tokenizer, spec) if loss_on == "assistant" else None
    labels = build_labels(ids, loss_on, spec, in_answer)  # type: ignore[arg-type]
    item: dict[str, Any] = {"input_ids": input_ids, "labels": labels}
    for key, value in encoded.items():
        if key in ("input_ids", "attention_mask"):
            continue
        # Per-token extras (Qwen's `mm_token_type_ids` (1, L), Mllama's `cross_attention_mask` (1, L, images,
        # tiles)) lose their batch axis so the collator can pad them along the tokens.
        item[key] = value[0] if is_per_token(key, value.shape, len(input_ids)) else value
    return item


# Processor outputs with one entry per token on more than one axis: they are padded along the tokens, never
# concatenated. (A 1-D value of a sample is per token whatever its name.)
PER_TOKEN_INPUTS = frozenset({"cross_attention_mask"})


def is_per_token(key: str, shape: tuple[int, ...], length: int) -> bool:
    """True if a processor output of `shape` (with its batch axis of 1) has one entry per token of the sample."""
    if len(shape) < 2 or shape[0] != 1 or shape[1] != length:
        return False
    return len(shape) == 2 or key in PER_TOKEN_INPUTS


def count_trained(labels: list[int]) -> int:
    return sum(1 for t in labels if t != IGNORE_INDEX)


class VisionCollator:
    """Pads a list of encoded samples into one batch (right padding, labels padded with IGNORE_INDEX).

    Vision inputs are concatenated along the first axis, the layout Qwen-VL models expect for
    `pixel_values` (patches of all images) and `image_grid_thw` (one row per image), and Mllama's for its
    per-sample `pixel_values` (1, images, tiles, 3, H, W) and aspect-ratio inputs (padded when the image or
    tile counts differ). Per-token inputs are padded along the tokens (`PER_TOKEN_INPUTS`). Mllama needs
    every sample of a batch to have images (the synthetic sets always do).
    """

    def __init__(self, pad_id: int | None):
        if pad_id is None:  # torch.full would fail at the first batch with a message about `fill_value`
            raise ValueError("VisionCollator needs a pad token id; use VisionCollator.for_family")
        self.pad_id = pad_id

    @classmethod
    def for_family(cls, tokenizer: Any, family: Any) -> VisionCollator:
        """The collator for `tokenizer`: pads with its pad token, or with the end-of-turn token where it has none
        (Llama 3's tokenizers), as `LabelSpec` does; padded positions are masked from attention and loss anyway."""
        return cls(pad_id=LabelSpec.for_family(tokenizer, family).pad_id)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        import numpy as np
        import torch

        longest = max(len(s["input_ids"]) for s in samples)
        batch: dict[str, Any] = {
            "input_ids": torch.full((len(samples), longest), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(samples), longest), dtype=torch.long),
            "labels": torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long),
        }
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            batch["input_ids"][row, :n] = _tensor(sample["input_ids"])
            batch["attention_mask"][row, :n] = 1
            batch["labels"][row, :n] = _tensor(sample["labels"])
        for key in sorted({k for s in samples for k in s if k not in ("input_ids", "labels")}):
            # A text-only sample has no vision inputs: the key is absent, or None where a dataset row holds it.
            present = [s[key] for s in samples if s.get(key) is not None]
            if present and all(hasattr(v, "write") for v in present):
                batch[key] = _written(present)  # pixel values computed straight into the batch (patchify.py)
                continue
            values = [(row, _tensor(s[key])) for row, s in enumerate(samples) if s.get(key) is not None]
            if not values:
                continue
            if values[0][1].dim() == 1 or key in PER_TOKEN_INPUTS:
                # Per token (Qwen's mm_token_type_ids; Mllama's cross_attention_mask, whose image and tile axes
                # are padded to the batch's largest too): zeros where a row is padding, like attention_mask.
                shape = [max(v.shape[d] for _, v in values) for d in range(1, values[0][1].dim())]
                batch[key] = torch.zeros((len(samples), longest, *shape), dtype=values[0][1].dtype)
                for row, value in values:
                    batch[key][(row, *(slice(0, n) for n in value.shape))] = value
            elif (
                values[0][1].dim() >= 2
                and all(v.shape[0] == 1 for _, v in values)
                and len(values) > 1
                and (len({v.shape[1:] for _, v in values}) > 1)
            ):
                # Per-sample vision inputs with a batch axis (Mllama's pixel_values, aspect_ratio_ids/mask) whose
                # image or tile counts differ: zero-padded to the largest, as Mllama's processor pads a batch.
                shape = [max(v.shape[d] for _, v in values) for d in range(1, values[0][1].dim())]
                padded = torch.zeros((len(values), *shape), dtype=values[0][1].dtype)
                for k, (_, value) in enumerate(values):
                    padded[(k, *(slice(0, n) for n in value.shape[1:]))] = value[0]
                batch[key] = padded
            else:  # vision inputs: a text-only sample has none, so concatenate over those that do
                # numpy's concatenate: torch.cat took 2-6× longer on 38 MB of pixel_values (benchmarks/README.md).
                tensors = [value for _, value in values]
                batch[key] = (
                    torch.cat(tensors, dim=0)
                    if tensors[0].dtype == torch.bfloat16
                    else torch.from_numpy(np.concatenate([t.numpy() for t in tensors], axis=0))
                )
        return batch


def _written(deferred: list[Any]) -> Any:
    """One float32 tensor of the deferred values' rows, each written into its slice; in a DataLoader worker the
    tensor lives in shared memory from the start (as torch's default_collate does), so it is not copied there.
    Otherwise numpy allocates it: numpy asks the kernel for huge pages, and filling 38 MB of fresh torch.empty
    memory took 31 ms against numpy's 8 (4 KB page faults)."""
    import numpy as np
    import torch

    rows, width = sum(v.shape[0] for v in deferred), deferred[0].shape[1]
    if torch.utils.data.get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(rows * width * 4)
        out = torch.empty(0, dtype=torch.float32).set_(storage).view(rows, width)
    else:
        out = torch.from_numpy(np.empty((rows, width), dtype=np.float32))
    array, row = out.numpy(), 0
    for value in deferred:
        value.write(array[row : row + value.shape[0]])
        row += value.shape[0]
    return out


def _tensor(value: Any) -> Any:
    """A tensor from a list, numpy array (possibly read-only, as datasets serves them) or tensor."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)  # no copy of a writable array (the loader's pixel_values); read-only ones are copied
    return torch.from_numpy(array if array.flags.writeable else array.copy())
