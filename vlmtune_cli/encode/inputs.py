"""What of a processor's output the tokenised-data cache keeps, and how the data loader rebuilds the rest.

Kept: token ids, the processor's small outputs (`image_grid_thw`, `mm_token_type_ids`; Mllama's `aspect_ratio_ids`,
`aspect_ratio_mask` and per-token `cross_attention_mask`) and each image, as raw RGB bytes: already resized to the
model's resolution (Qwen-VL), or as it came (Mllama, whose tiling resize is not mirrored here). Rebuilt in the
loader: `pixel_values`, from the stored image: by the model's own image processor, or for Qwen-VL by its arithmetic
tabulated (patchify.py, checked bit for bit against the processor); resizing an image to the size it already has
is a copy, so the values are bit-identical to those the processor makes from the original. Storing
float32 patches instead would be 8× larger and no faster to read back (benchmarks/README.md).

Two shortcuts keep `tokenize` fast, each used only when probe images show it gives exactly what the processor
gives (`probe_layout`), and a slower exact path otherwise:
- images are resized the way the processor resizes them (Qwen-VL's smart_resize), or else stored as they came;
- the token ids are computed without the pixel work: Qwen-VL's image tokens depend only on the resized image's
  size, so the text is expanded and tokenised directly (the processor would normalise and patchify every image
  only for `tokenize` to throw the pixels away).

Imports numpy and PIL inside functions only.
"""

from __future__ import annotations

from typing import Any, Literal

from vlmtune_cli.encode.labels import is_per_token
from vlmtune_cli.encode.patchify import Patchifier, StoredImages  # numpy only, imported inside its functions
from vlmtune_cli.models.boxes import smart_resize

PixelMode = Literal["table", "processor"]
_MAX_ASPECT = 200  # Qwen-VL's processors refuse images more elongated than this


def probe_layout(processor: Any, *, ids_without_pixels: bool = True) -> dict[str, Any]:
    """How this processor's outputs are cached, checked on probe images (random pixels, odd sizes, 1 and 2 images).

    `ids_without_pixels=False` never takes the token-id shortcut: every sample goes through the full processor call.

    Raises VlmtuneError if not even the original images reproduce the processor's `pixel_values` when the
    image processor is called alone.
    """
    import numpy as np
    from PIL import Image

    from vlmtune_cli.errors import VlmtuneError

    image_processor = processor.image_processor
    layout: dict[str, Any] = {**_resize_settings(image_processor), "expand": False}
    token = getattr(processor, "image_token", None)
    layout["image_token"] = token
    layout["image_token_id"] = processor.tokenizer.convert_tokens_to_ids(token) if token else None
    # The tokens that carry image features, for the statistics. Usually the placeholder itself; Gemma 3's
    # placeholder `<start_of_image>` expands into soft tokens, which its processor names in `image_token_ids`.
    named = [i for i in getattr(processor, "image_token_ids", None) or [] if i is not None]
    layout["visual_token_ids"] = named or [layout["image_token_id"]]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((97, 131), (97, 97))]
    probes = [(_prompt(processor, n), images[:n]) for n in (1, 2)]
    full = [processor(text=[text], images=imgs, return_tensors="np", add_special_tokens=False) for text, imgs in probes]

    def pixels_reproduced(mode: str, nested: bool = False) -> bool:
        layout["images"], layout["nested"] = mode, nested
        for (_, imgs), out in zip(probes, full, strict=True):
            stored = [resize_for_cache(image, layout)[0] for image in imgs]
            again = pixel_values(image_processor, stored, nested)
            if again.shape != out["pixel_values"].shape or not np.array_equal(again, out["pixel_values"]):
                return False
        return True

    # Qwen-VL: one flat list of images, resized by smart_resize. Mllama: one list per sample (its pixel_values
    # keep a batch axis: 1 x images x tiles x 3 x H x W), original images (its tiling resize is not mirrored).
    reproduced = (
        (layout["factor"] is not None and pixels_reproduced("resized"))
        or pixels_reproduced("original")
        or pixels_reproduced("original", nested=True)
    )
    if not reproduced:
        raise VlmtuneError(
            f"{type(image_processor).__name__} gives other pixel values when called alone than inside "
            f"{type(processor).__name__}, so vlmtune cannot recompute them from cached images",
            hint="this model family needs support in vlmtune_cli/cached_inputs.py",
        )
    plain = processor(text=["?"], return_tensors="np", add_special_tokens=False)
    extras: dict[str, tuple[bool, int, str]] = {}
    for encoded in (*full, plain):
        for key, value in encoded.items():
            if key in ("input_ids", "attention_mask", "pixel_values") or key in extras:
                continue
            value = np.asarray(value)
            per_token = is_per_token(key, value.shape, encoded["input_ids"].shape[1])
            extras[key] = (per_token, value.ndim - 1 if per_token else value.ndim, str(value.dtype))
    layout["extras"] = extras
    if ids_without_pixels and layout["factor"] is not None and token:
        layout["expand"] = True
        for (text, imgs), out in zip(probes, full, strict=True):
            fast = processor_outputs(processor, text, imgs, layout)[0]
            same = fast.keys() == out.keys() - {"pixel_values"} and all(
                np.array_equal(np.asarray(fast[k]), np.asarray(out[k])) for k in fast
            )
            layout["expand"] = layout["expand"] and same
    return layout


def _prompt(processor: Any, n_images: int) -> str:
    parts = [{"type": "image"}] * n_images + [{"type": "text", "text": "Which?"}]
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": "A"}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def _resize_settings(image_processor: Any) -> dict[str, Any]:
    size = getattr(image_processor, "size", None)
    lookup = (lambda k: getattr(size, k, None)) if not isinstance(size, dict) else size.get
    patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
    low, high = (lookup("shortest_edge"), lookup("longest_edge")) if size is not None else (None, None)
    known = all(isinstance(v, int) for v in (patch, merge, low, high))
    return {
        "factor": patch * merge if known else None,  # pyright: ignore[reportOptionalOperand] known: both are ints
        "patch": patch,
        "merge": merge or 1,
        "min_pixels": low,
        "max_pixels": high,
        "resample": int(getattr(image_processor, "resample", 3) or 3),
    }


def resize_for_cache(image: Any, layout: dict[str, Any]) -> tuple[Any, tuple[int, int] | None]:
    """(the image to store, the (width, height) the processor works at, or None if unknown)."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    if layout["factor"] is None:
        return image, None
    bounds = layout["factor"], layout["min_pixels"], layout["max_pixels"]
    size = smart_resize(image.width, image.height, *bounds)
    if layout["images"] != "resized" or size == image.size:
        return image, size
    # With min_pixels close to max_pixels, rounding up can overshoot max_pixels, and the processor would resize
    # the resized image once more: keep the original then, so the loader's resize is the processor's own.
    if smart_resize(*size, *bounds) != size:
        return image, size
    return image.resize(size, resample=layout["resample"]), size


def processor_outputs(
    processor: Any, text: str, images: list[Any], layout: dict[str, Any]
) -> tuple[dict[str, Any], list[Any]]:
    """What `processor(text=[text], images=images)` gives, but `pixel_values`, and the images to store.

    Raises what the processor raises (ValueError, ...) for an input it refuses.
    """
    import numpy as np

    resized = [resize_for_cache(image, layout) for image in images]
    stored = [image for image, _ in resized]
    if not layout["expand"]:
        outputs = processor(text=[text], images=stored or None, return_tensors="np", add_special_tokens=False)
        return {k: v for k, v in outputs.items() if k != "pixel_values"}, stored
    sizes = [size for _, size in resized if size is not None]
    assert len(sizes) == len(resized), "layout['expand'] is only set with a known resize factor, so every size is"
    for image in images:
        if max(image.size) / min(image.size) > _MAX_ASPECT:
            raise ValueError(
                f"absolute aspect ratio must be smaller than {_MAX_ASPECT}, got {max(image.size) / min(image.size)}"
            )
    token, pieces = layout["image_token"], text.split(layout["image_token"])
    if len(pieces) - 1 != len(images):
        raise ValueError(f"{len(pieces) - 1} {token} tokens in the text but {len(images)} images")
    per_image = [(h // layout["patch"]) * (w // layout["patch"]) // layout["merge"] ** 2 for w, h in sizes]
    expanded = pieces[0] + "".join(token * n + piece for n, piece in zip(per_image, pieces[1:], strict=True))
    outputs = dict(processor.tokenizer([expanded], return_tensors="np", add_special_tokens=False))
    if "mm_token_type_ids" in layout["extras"]:
        outputs["mm_token_type_ids"] = np.asarray(processor.create_mm_token_type_ids(outputs["input_ids"].tolist()))
    if images:
        patches = [[1, h // layout["patch"], w // layout["patch"]] for w, h in sizes]
        outputs["image_grid_thw"] = np.asarray(patches, dtype=np.int64)
    return outputs, stored


class ModelInputs:
    """A datasets transform: cached rows → the model's inputs, with `pixel_values` computed here, in the loader.

    `pixels="table"` uses the processor's arithmetic tabulated (patchify.py) where it is verified to give identical
    values, `"processor"` calls the image processor for every image (the benchmark compares both).
    """

    def __init__(
        self, image_processor: Any, extras: dict[str, Any], nested: bool = False, *, pixels: PixelMode = "table"
    ):
        self.image_processor = image_processor
        self.nested = nested
        self.extras = {key: dtype for key, (_, _, dtype) in extras.items()}
        # The processor's own arithmetic, tabulated (patchify.py); None where it would not give identical values.
        use_table = pixels == "table" and not nested
        self.patchifier = Patchifier.verified(image_processor) if use_table else None

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        import numpy as np

        out: dict[str, list] = {
            key: [np.asarray(v, dtype=np.int64) for v in batch[key]] for key in ("input_ids", "labels")
        }
        for key, dtype in self.extras.items():
            out[key] = [None if v is None else np.asarray(v, dtype=dtype) for v in batch[key]]
        out["pixel_values"] = [
            self.pixels(images, sizes) for images, sizes in zip(batch["images"], batch["image_sizes"], strict=True)
        ]
        return out

    def pixels(self, images: list[bytes], sizes: list[list[int]]) -> Any:
        import numpy as np
        from PIL import Image

        if not images:
            return None
        fast = self.patchifier
        if fast is not None and all(fast.applies(w, h) for w, h in sizes):
            return StoredImages(
                [
                    np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
                    for raw, (w, h) in zip(images, sizes, strict=True)
                ],
                fast,
            )
        pil = [
            Image.frombuffer("RGB", (w, h), raw, "raw", "RGB", 0, 1) for raw, (w, h) in zip(images, sizes, strict=True)
        ]
        return pixel_values(self.image_processor, pil, self.nested)


def pixel_values(image_processor: Any, images: list[Any], nested: bool) -> Any:
    """The image processor's `pixel_values` for one sample's images (`nested`: passed as one sample's list)."""
    return image_processor(images=[images] if nested else images, return_tensors="np")["pixel_values"]
