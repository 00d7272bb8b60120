"""The core of `vlmtune predict`: a run's answers to a few images, boxes parsed and drawn onto copies.

`predict` reads top to bottom: the images (checked first: a bad path fails before any weights load) → the
run's processor (saved with its weights, with the recipe's pixel bounds) → the prompt → the run's weights →
greedy generation in left-padded batches, as `benchmark` does → boxes parsed with the family's box format
(Qwen2.5-VL's JSON boxes mapped back from the processor's resized image) → copies of the images with the
boxes drawn in red (report.draw_boxes) and predict.jsonl in the output folder (predictions.jsonl is
`benchmark`'s, so even `--out <run>` overwrites nothing of a benchmark).

The default prompt is the recipe's task prompt: the user text of the first training sample of the recipe's
data (for `builtin:synthetic-detection` one of its "Detect the nutrition table." prompts), with that sample's
system turn if it has one. Each image is asked on its own, as the only image of a one-turn conversation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmtune_cli.errors import UsageError, VlmtuneError
from vlmtune_cli.runs import Target

DEFAULT_OUT = "predictions-images"


@dataclass
class Prediction:
    image: Path
    output: str
    boxes: list[list[float]]
    labels: list[str]
    ok: bool
    reason: str | None
    drawn: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": str(self.image),
            "output": self.output,
            "boxes": self.boxes,
            "labels": self.labels,
            "parsed_ok": self.ok,
            "reason": self.reason,
            "drawn": str(self.drawn) if self.drawn else None,
        }


@dataclass
class PredictResult:
    target: Target
    prompt: str
    prompt_source: str
    out: Path
    box_format: str
    predictions: list[Prediction] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": str(self.target.run_dir),
            "checkpoint": self.target.checkpoint,
            "prompt": self.prompt,
            "prompt_source": self.prompt_source,
            "box_format": self.box_format,
            "out": str(self.out),
            "predictions": [p.as_dict() for p in self.predictions],
        }


def open_images(paths: Sequence[Path]) -> list[Any]:
    """Every image decoded, as RGB. Raises UsageError naming the first one that is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    from vlmtune_cli.data.images import open_image

    images = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise UsageError(f"image {path} does not exist")
        if path.is_dir():
            raise UsageError(f"image {path} is a folder", hint="name the image files, e.g. photos/*.jpg")
        try:
            images.append(open_image(path))  # upright: EXIF orientation applied, as training saw its images
        except UnidentifiedImageError:
            raise UsageError(f"image {path} cannot be read (corrupt, or not an image)") from None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UsageError(f"image {path} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    return images


def default_prompt(target: Target, family: Any, processor: Any) -> tuple[list[dict[str, Any]], str, str]:
    """(system turns, user text, where it came from): the first training sample's, as the module docstring says.

    Raises UsageError when the data cannot be read or its first sample has no user text (pass --prompt).
    """
    from vlmtune_cli.data.sources import lazy_splits

    data = target.recipe.data
    hint = "pass the question yourself: --prompt 'Detect the nutrition table.'"
    try:
        first = lazy_splits(data, box_format=family.box_format, processor=processor)[data.train_split][0]
    except VlmtuneError as exc:
        raise UsageError(
            f"no --prompt given, and the recipe's data ({data.source}) to take one from cannot be read: {exc.message}",
            hint=hint,
        ) from None
    system = [m for m in first["messages"] if m["role"] == "system"]
    user = next((m for m in first["messages"] if m["role"] == "user"), None)
    text = "".join(p.get("text") or "" for p in user["content"] if p["type"] == "text").strip() if user else ""
    if not text:
        raise UsageError(f"no --prompt given, and the first sample of {data.source} has no user text", hint=hint)
    return system, text, f"first training sample of {data.source} ({first['id']})"


def _messages(system: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [*system, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _drawn_names(paths: Sequence[Path]) -> list[str]:
    """`<stem>.png` per image, `<stem>-2.png` ... where two images share a stem."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = Path(path).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


def predict(
    target: Target,
    cache_dir: Path,
    image_paths: Sequence[Path],
    *,
    prompt: str | None = None,
    out: Path | None = None,
    max_new_tokens: int | None = None,
) -> PredictResult:
    """Generate an answer per image, parse and draw its boxes, write them to `out` (default `<run>/predictions-images`).

    Raises UsageError for a missing or unreadable image, an unwritable `out`, weights of another family, or no
    prompt to use; VlmtuneError when generation fails.
    """
    from vlmtune_cli.eval import benchmark
    from vlmtune_cli.eval.report import draw_boxes
    from vlmtune_cli.models.boxes import parse_boxes, processor_resized_size
    from vlmtune_cli.models.weights import load_model, load_processor_and_family
    from vlmtune_cli.runs import write_atomic

    images = open_images(image_paths)
    out = Path(out) if out is not None else target.run_dir / DEFAULT_OUT
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror or exc}", hint="choose another --out") from None
    processor, family = load_processor_and_family(target, cache_dir)
    if prompt is not None:
        system, text, source = [], prompt, "--prompt"
    else:
        system, text, source = default_prompt(target, family, processor)
    samples = [
        {"id": str(path), "messages": _messages(system, text), "images": [image]}
        for path, image in zip(image_paths, images, strict=True)
    ]
    model = load_model(target, cache_dir)
    section = target.recipe.benchmark
    try:
        _, outputs = benchmark.generate(
            model,
            processor,
            samples,
            batch_size=section.batch_size,
            max_new_tokens=max_new_tokens or section.max_new_tokens,
        )
    except (RuntimeError, ValueError) as exc:
        raise VlmtuneError(
            f"generation failed for {target.name}: {exc}", hint="set VLMTUNE_DEBUG=1 for the traceback"
        ) from exc

    data = target.recipe.data
    result = PredictResult(target, text, source, out, family.box_format)
    for path, image, output, name in zip(image_paths, images, outputs, _drawn_names(image_paths), strict=True):
        resized = processor_resized_size(processor, image.size, data.min_pixels, data.max_pixels)
        parsed = parse_boxes(family.box_format, output, image.size, resized)
        boxes = [[round(float(v), 2) for v in box] for box in parsed.boxes]
        drawn = out / name
        draw_boxes(image, parsed.boxes, [], drawn)
        result.predictions.append(
            Prediction(Path(path), output, boxes, list(parsed.labels), parsed.ok, parsed.reason, drawn)
        )
    lines = "".join(json.dumps({"prompt": text, **p.as_dict()}, ensure_ascii=False) + "\n" for p in result.predictions)
    write_atomic(out / "predict.jsonl", lines)
    return result
