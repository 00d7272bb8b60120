"""Labels, token by token, on conversations written here, through the tiny model's real processor."""

from __future__ import annotations

import pytest
from PIL import Image

from vlmtune_cli.config.schema import DataSection, ModelSection
from vlmtune_cli.encode.labels import (
    IGNORE_INDEX,
    LabelSpec,
    VisionCollator,
    assistant_spans,
    build_labels,
    encode_sample,
)

SYSTEM = {"role": "system", "content": [{"type": "text", "text": "You find tables."}]}


def user(text: str, images: int = 1) -> dict:
    return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def image(color: str = "white", size: int = 224) -> Image.Image:
    return Image.new("RGB", (size, size), color)


@pytest.fixture(scope="module")
def processor_and_spec(tmp_path_factory: pytest.TempPathFactory):
    from vlmtune_cli.models import loading

    cache = tmp_path_factory.mktemp("labels-cache")
    section = ModelSection(name="builtin:tiny-qwen2-vl")
    processor = loading.load_processor(section, DataSection(min_pixels=224 * 224, max_pixels=224 * 224), cache)
    family = loading.load_family(section, cache)
    return processor, LabelSpec.for_family(processor.tokenizer, family)


CONVERSATIONS = {
    "multi-turn": (
        [
            SYSTEM,
            user("Detect the nutrition table."),
            assistant("(10,20),(30,40)"),
            {"role": "user", "content": [{"type": "text", "text": "And the energy row?"}]},
            assistant("(12,22),(28,30)"),
        ],
        1,
    ),
    "answer says assistant": (
        [user("Who are you?"), assistant("I am the assistant of the user; assistant is my name.")],
        1,
    ),
    "two images": ([user("Which image has the table?", images=2), assistant("the second")], 2),
}


def _answers(messages: list[dict]) -> list[str]:
    return [m["content"][0]["text"] for m in messages if m["role"] == "assistant"]


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_assistant_only_labels_are_exactly_the_answers_and_their_end_tokens(processor_and_spec, name: str) -> None:
    processor, spec = processor_and_spec
    messages, n_images = CONVERSATIONS[name]
    item = encode_sample(processor, spec, {"messages": messages, "images": [image()] * n_images}, "assistant", 4096)
    ids, labels = item["input_ids"].tolist(), item["labels"]
    tokenizer = processor.tokenizer
    expected: list[int] = []
    for answer in _answers(messages):
        expected += tokenizer.encode(answer, add_special_tokens=False) + [spec.end_id]
    assert [t for t in labels if t != IGNORE_INDEX] == expected
    # Each trained run starts right after an assistant header and ends on the end-of-turn token.
    runs = _runs(labels)
    assert len(runs) == len(_answers(messages))
    for start, end in runs:
        assert tuple(ids[start - len(spec.header_ids) : start]) == spec.header_ids
        assert ids[end - 1] == spec.end_id
        assert labels[start:end] == ids[start:end]
    # Image tokens never train.
    assert all(labels[i] == IGNORE_INDEX for i, t in enumerate(ids) if t in spec.image_ids)
    assert sum(t == tokenizer.convert_tokens_to_ids("<|image_pad|>") for t in ids) == 64 * n_images


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_all_tokens_labels_mask_image_tokens_only(processor_and_spec, name: str) -> None:
    processor, spec = processor_and_spec
    messages, n_images = CONVERSATIONS[name]
    item = encode_sample(processor, spec, {"messages": messages, "images": [image()] * n_images}, "all", 4096)
    ids, labels = item["input_ids"].tolist(), item["labels"]
    for token, label in zip(ids, labels, strict=True):
        assert label == (IGNORE_INDEX if token in spec.image_ids else token)
    assert sum(1 for t in ids if t in spec.image_ids) == (64 + 2) * n_images  # pads + vision start/end


def test_collator_pads_a_batch_of_three(processor_and_spec) -> None:
    import torch

    processor, spec = processor_and_spec
    samples = [
        {"messages": [user("Detect the table."), assistant("(1,2),(3,4)")], "images": [image("red")]},
        {
            "messages": [user("Detect the nutrition table please, quickly."), assistant("(100,200),(300,400)")],
            "images": [image("blue")],
        },
        {"messages": CONVERSATIONS["two images"][0], "images": [image(), image("green")]},
    ]
    encoded = [encode_sample(processor, spec, s, "assistant", 4096) for s in samples]
    batch = VisionCollator(pad_id=spec.pad_id)(encoded)
    lengths = [len(e["input_ids"]) for e in encoded]
    assert batch["input_ids"].shape == (3, max(lengths))
    for row, (item, n) in enumerate(zip(encoded, lengths, strict=True)):
        assert batch["input_ids"][row, :n].tolist() == item["input_ids"].tolist()
        assert batch["labels"][row, :n].tolist() == item["labels"]
        assert (batch["input_ids"][row, n:] == spec.pad_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
    assert batch["image_grid_thw"].shape == (4, 3)
    assert batch["pixel_values"].shape[0] == int(torch.prod(batch["image_grid_thw"], dim=1).sum())


def test_build_labels_on_plain_ids_and_turn_spans() -> None:
    spec = LabelSpec(image_ids=frozenset({9}), header_ids=(1, 2), end_id=3, pad_id=0, header="<A>", end="<E>")
    ids = [5, 9, 9, 6, 1, 2, 7, 8, 3, 4, 1, 5, 2, 1, 2, 7]
    assert build_labels(ids, "all", spec) == [5, -100, -100, 6, 1, 2, 7, 8, 3, 4, 1, 5, 2, 1, 2, 7]
    inside = [i in (6, 7, 8, 15) for i in range(len(ids))]
    assert build_labels(ids, "assistant", spec, inside) == [-100] * 6 + [7, 8, 3] + [-100] * 6 + [7]
    with pytest.raises(ValueError, match="in_answer"):
        build_labels(ids, "assistant", spec)
    # Answers run from the end of a header through its end token; an unterminated last turn runs to the end.
    text = "u<A>ab<E>x<A>\ncd"
    assert assistant_spans(text, spec) == [(4, 9), (13, 16)]
    assert [text[a:b] for a, b in assistant_spans(text, spec)] == ["ab<E>", "\ncd"]


@pytest.fixture(scope="module")
def merging_processor():
    """A tiny Qwen2-VL processor whose BPE merges `\n\n` into one token, as the real Qwen2 tokenizers do."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlmtune_cli.models import builtin_parts
    from vlmtune_cli.models.qwen_processor import Qwen2VLImageOnlyProcessor

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(builtin_parts._QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    corpus = ["assistant\n\nThe table", "user\n\nsystem\n", "(10,20),(30,40) Detect the table."] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens(list(builtin_parts.SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    image_processor = Qwen2VLImageProcessorPil(min_pixels=224 * 224, max_pixels=224 * 224)
    processor = Qwen2VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=builtin_parts.CHAT_TEMPLATE
    )
    from vlmtune_cli.models.families import FAMILIES

    return processor, LabelSpec.for_family(tokenizer, FAMILIES[0])


def test_an_answer_starting_with_a_newline_still_trains_under_a_merging_tokenizer(merging_processor) -> None:
    processor, spec = merging_processor
    tokenizer = processor.tokenizer
    merged = tokenizer.convert_tokens_to_ids("ĊĊ")  # byte-level spelling of "\n\n"
    assert merged != tokenizer.unk_token_id and tokenizer.encode("\n\n", add_special_tokens=False) == [merged]
    answer = "\nThe table (10,20),(30,40)"
    messages = [user("Detect the table."), assistant(answer)]
    item = encode_sample(processor, spec, {"messages": messages, "images": [image()]}, "assistant", 4096)
    ids, labels = item["input_ids"].tolist(), item["labels"]
    # The merge hides the header's token ids: matching them would leave this answer without a trained token.
    n = len(spec.header_ids)
    assert not any(tuple(ids[i : i + n]) == spec.header_ids for i in range(len(ids)))
    trained = [t for t in labels if t != IGNORE_INDEX]
    # The fused "\n\n" carries the answer's first character, so it trains; then the answer and <|im_end|>.
    assert trained == tokenizer.encode("\n" + answer, add_special_tokens=False) + [spec.end_id]
    assert trained[0] == merged
    assert tokenizer.decode(trained) == "\n" + answer + "<|im_end|>"
    assert _runs(labels) == [(len(ids) - len(trained) - 1, len(ids) - 1)]  # the template's final "\n" is masked
    # Without a leading newline the header stays whole and only the answer and end token train, as before.
    plain = encode_sample(
        processor, spec, {"messages": [user("Detect."), assistant("(10,20)")], "images": [image()]}, "assistant", 4096
    )
    assert [t for t in plain["labels"] if t != IGNORE_INDEX] == tokenizer.encode(
        "(10,20)", add_special_tokens=False
    ) + [spec.end_id]


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_collator_of_a_tokenizer_without_pad_token_pads_with_the_end_of_turn_token(processor_and_spec) -> None:
    """Llama 3 tokenizers have no pad token: the trainer's collator pads as the label builder does."""
    import copy

    from vlmtune_cli.models.families import family_for_model_type

    processor, _ = processor_and_spec
    tokenizer = copy.deepcopy(processor.tokenizer)
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    family = family_for_model_type("qwen2_vl")
    spec = LabelSpec.for_family(tokenizer, family)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert spec.pad_id == end
    samples = [
        {"messages": [user("Detect."), assistant("(1,2),(3,4)")], "images": [image("red")]},
        {"messages": [user("Detect the nutrition table please."), assistant("none")], "images": [image("blue")]},
    ]
    encoded = [encode_sample(processor, spec, s, "assistant", 4096) for s in samples]
    batch = VisionCollator.for_family(tokenizer, family)(encoded)
    short = min(range(2), key=lambda r: len(encoded[r]["input_ids"]))
    n = len(encoded[short]["input_ids"])
    assert n < batch["input_ids"].shape[1]
    assert set(batch["input_ids"][short, n:].tolist()) == {end}
    assert set(batch["labels"][short, n:].tolist()) == {IGNORE_INDEX}
    with pytest.raises(ValueError, match="needs a pad token id"):
        VisionCollator(pad_id=tokenizer.pad_token_id)
