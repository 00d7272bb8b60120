"""One row of any source → a sample in the standard form (see sources.py): messages checked, images opened upright.

Raises UsageError naming the sample (`where`: file and line, or dataset and row) for anything malformed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vlmtune_cli.data.answers import BOXES_PART
from vlmtune_cli.data.images import open_image, upright
from vlmtune_cli.errors import UsageError

ROLES = ("system", "user", "assistant")


def _open_image(value: Any, base: Path | None, where: str) -> Image.Image:
    if isinstance(value, Image.Image):  # datasets' Image feature opens lazily: decoding can still fail
        label, opener = getattr(value, "filename", "") or "in-memory image", None
    elif isinstance(value, dict) and value.get("bytes") is not None:
        label, opener = f"{value.get('path') or 'embedded image'}", lambda: io.BytesIO(value["bytes"])
    else:
        path = value.get("path") if isinstance(value, dict) else value
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise UsageError(f"{where}: {value!r} is not an image, image path or {{'bytes': ...}}"[:300])
        if str(path).startswith(("http://", "https://")):
            raise UsageError(f"{where}: image {path} is a URL; vlmtune never downloads, save it locally")
        full = Path(path).expanduser()
        full = full if full.is_absolute() or base is None else base / full
        label, opener = str(full), lambda: full
    try:
        # Upright (EXIF orientation applied) and decoded now, so a corrupt file fails here with the sample's name.
        if opener is None:
            assert isinstance(value, Image.Image)  # only the first branch above leaves no opener
            return upright(value)
        return open_image(opener())
    except FileNotFoundError:
        raise UsageError(f"{where}: image {label} does not exist") from None
    except UnidentifiedImageError:
        raise UsageError(f"{where}: image {label} cannot be read (corrupt, or not an image)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UsageError(f"{where}: image {label} cannot be read ({exc})") from None


def _text(parts: list[dict]) -> str:
    return "".join(p.get("text") or "" for p in parts if p["type"] == "text")


def to_sample(row: Any, sample_id: str, where: str, base: Path | None = None) -> dict[str, Any]:
    """One user row (messages + images, see the module docstring) as a sample; UsageError if malformed."""
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise UsageError(
            f"{where}: a sample needs a non-empty 'messages' list",
            hint='e.g. {"messages": [{"role": "user", "content": "..."}], "images": [...]}',
        )
    sample_id = str(row["id"]) if row.get("id") is not None else sample_id
    where = where if row.get("id") is None else f"{where} (id {sample_id})"
    images = row.get("images")
    images = [] if images is None else images if isinstance(images, list) else [images]
    messages, inline, placeholders = [], [], 0
    for msg in row["messages"]:
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ROLES:
            raise UsageError(f"{where}: message role {role!r} is not one of {', '.join(ROLES)}")
        content = msg.get("content")
        raw = [content] if isinstance(content, str) else content if isinstance(content, list) else None
        if raw is None:
            raise UsageError(f"{where}: message content must be a string or a list of parts")
        parts = []
        for part in raw:
            kind = "text" if isinstance(part, str) else part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = part if isinstance(part, str) else part.get("text") or ""
                parts.append({"type": "text", "text": text})
            elif kind == BOXES_PART:
                if role != "assistant":
                    raise UsageError(f'{where}: a {{"type": "boxes"}} part belongs in an assistant turn, not {role}')
                if set(part) != {"type"}:
                    raise UsageError(
                        f'{where}: a {{"type": "boxes"}} part takes no other keys (got {", ".join(sorted(part))})',
                        hint='put the boxes in "target": {"boxes": [[x1, y1, x2, y2]], "labels": [...]}',
                    )
                parts.append({"type": BOXES_PART})
            elif kind == "image":
                assert isinstance(part, dict)  # only a dict part has the kind "image"
                placeholders += 1
                if part.get("image") is not None or part.get("path") is not None:
                    inline.append(part.get("image") if part.get("image") is not None else part["path"])
                parts.append({"type": "image"})
            else:
                raise UsageError(f"{where}: content part {part!r} is neither text, image nor boxes"[:300])
        messages.append({"role": role, "content": parts})
    if inline:
        if images or len(inline) != placeholders:
            raise UsageError(f"{where}: give every image inside its part, or all in 'images', not both")
        images = inline
    if images and not placeholders:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise UsageError(f"{where}: images but no user turn to attach them to")
        first_user["content"][:0] = [{"type": "image"} for _ in images]
    elif placeholders != len(images):
        raise UsageError(f"{where}: {placeholders} image parts in the messages but {len(images)} images")
    target = row.get("target")
    if target is None:
        answers = [m for m in messages if m["role"] == "assistant"]
        target = {"answer": _text(answers[-1]["content"])} if answers else {}
    elif isinstance(target, dict):
        # Arrow fills the keys a row lacks (but another row has) with None.
        target = {k: v for k, v in target.items() if v is not None}
    else:
        raise UsageError(f"{where}: 'target' must be an object, got {type(target).__name__}")
    return {
        "id": sample_id,
        "messages": messages,
        "images": [_open_image(img, base, where) for img in images],
        "target": target,
        "where": where,
    }
