"""patchify.py: Qwen-VL pixel values by table lookup must equal the real image processor's, bit for bit."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmtune_cli.config.schema import DataSection, ModelSection
from vlmtune_cli.encode.inputs import ModelInputs
from vlmtune_cli.encode.patchify import Patchifier
from vlmtune_cli.models.loading import load_processor

QWEN = ["builtin:tiny-qwen2-vl", "builtin:tiny-qwen2.5-vl"]
WIDE = DataSection(min_pixels=28 * 28 * 4, max_pixels=448 * 448)


def processor(cache_dir: Path, name: str, data: DataSection = WIDE):
    return load_processor(ModelSection(name=name, dtype="float32"), data, cache_dir)


def random_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", QWEN)
def test_lookup_equals_the_image_processor_bit_for_bit(cache_dir: Path, name: str) -> None:
    image_processor = processor(cache_dir, name).image_processor
    fast = Patchifier.verified(image_processor)
    assert fast is not None
    rng = np.random.default_rng(7)
    for width, height in [(448, 448), (56, 420), (336, 112), (84, 56)]:
        image = random_image(rng, width, height)
        image[0, 0], image[-1, -1] = 0, 255  # both ends of the table
        expected = image_processor(images=[Image.fromarray(image)], return_tensors="np")["pixel_values"]
        got = fast(image)
        assert got.dtype == expected.dtype == np.float32 and got.shape == expected.shape
        assert np.array_equal(got, expected), (width, height)


def test_sizes_the_processor_would_resize_are_left_to_it(cache_dir: Path) -> None:
    fast = Patchifier.verified(processor(cache_dir, QWEN[0]).image_processor)
    assert fast.applies(448, 224)
    assert not fast.applies(450, 224), "not a multiple of 28"
    assert not fast.applies(896, 896), "over max_pixels"


def test_a_processor_whose_output_differs_gets_no_lookup(cache_dir: Path) -> None:
    real = processor(cache_dir, QWEN[0]).image_processor

    class Shifted(type(real)):
        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            out["pixel_values"] = out["pixel_values"] + np.float32(1e-6)
            return out

    shifted = copy.copy(real)
    shifted.__class__ = Shifted
    assert Patchifier.verified(real) is not None
    assert Patchifier.verified(shifted) is None


def test_mllama_has_no_lookup(cache_dir: Path) -> None:
    mllama = load_processor(ModelSection(name="builtin:tiny-mllama", dtype="float32"), DataSection(), cache_dir)
    assert Patchifier.verified(mllama.image_processor) is None


def test_loader_rows_are_the_same_with_and_without_the_lookup(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image_processor = processor(cache_dir, QWEN[0]).image_processor
    rng = np.random.default_rng(3)
    sizes = [[448, 224], [56, 84]]
    batch = {
        "input_ids": [[1, 2, 3]],
        "labels": [[-100, 2, 3]],
        "images": [[random_image(rng, w, h).tobytes() for w, h in sizes]],
        "image_sizes": [sizes],
    }
    with_lookup = ModelInputs(image_processor, {})
    assert with_lookup.patchifier is not None
    without = ModelInputs(image_processor, {}, pixels="processor")
    assert without.patchifier is None
    a, b = with_lookup(dict(batch))["pixel_values"][0], without(dict(batch))["pixel_values"][0]
    assert a.shape == b.shape == ((448 * 224 + 56 * 84) // 14**2, 1176) and np.array_equal(a, b)


def test_batches_made_in_worker_processes_equal_the_processor_output(cache_dir: Path) -> None:
    import torch

    from vlmtune_cli.encode.labels import VisionCollator

    image_processor = processor(cache_dir, QWEN[0]).image_processor
    rng = np.random.default_rng(5)
    sizes = [[[448, 224]], [], [[56, 84], [112, 112]], [[224, 224]]]  # a text-only sample among them
    rows = [
        {
            "input_ids": [1, 2, 3],
            "labels": [-100, 2, 3],
            "image_sizes": s,
            "images": [random_image(rng, w, h).tobytes() for w, h in s],
        }
        for s in sizes
    ]
    to_inputs = ModelInputs(image_processor, {})

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, k: int) -> dict:
            return {key: values[0] for key, values in to_inputs({key: [v] for key, v in rows[k].items()}).items()}

    collate = VisionCollator(pad_id=0)
    for workers in (0, 1):
        batches = list(torch.utils.data.DataLoader(Rows(), batch_size=2, collate_fn=collate, num_workers=workers))
        for batch, chunk in zip(batches, (sizes[:2], sizes[2:]), strict=True):
            images = [
                Image.frombuffer("RGB", (w, h), rows[sizes.index(s)]["images"][i], "raw", "RGB", 0, 1)
                for s in chunk
                for i, (w, h) in enumerate(s)
            ]
            expected = image_processor(images=images, return_tensors="np")["pixel_values"]
            assert batch["pixel_values"].dtype == torch.float32
            assert np.array_equal(batch["pixel_values"].numpy(), expected), workers
