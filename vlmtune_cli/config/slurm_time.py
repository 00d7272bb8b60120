"""SLURM time limits: the one parser the recipe schema and the `--time` flags share.

sbatch accepts `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M` and `D-H:M:S`. Two of those surprise: `2:00` is two
*minutes* and `120` is two hours, so `describe` says how a limit was read, and the submit commands print it.
"""

from __future__ import annotations

import re

_TIME_RE = re.compile(r"^(?:(?P<days>\d+)-)?(?P<rest>\d+(?::\d{1,2}){0,2})$")
FORMS = "M, M:S, H:M:S, D-H, D-H:M or D-H:M:S (e.g. 04:00:00 or 2-00)"


def slurm_time_seconds(text: str) -> int:
    """A SLURM time limit in seconds, read as sbatch reads it. Raises ValueError for anything else."""
    match = _TIME_RE.match(text.strip())
    if not match or (match.group("days") is None and text.count(":") > 2):
        raise ValueError(f"{text!r} is not a SLURM time limit; write {FORMS}")
    parts = [int(p) for p in match.group("rest").split(":")]
    if match.group("days") is not None:
        hours, minutes, seconds = (parts + [0, 0])[:3]
        total = int(match.group("days")) * 86400 + hours * 3600 + minutes * 60 + seconds
    elif len(parts) == 1:
        total = parts[0] * 60
    elif len(parts) == 2:
        total = parts[0] * 60 + parts[1]
    else:
        total = parts[0] * 3600 + parts[1] * 60 + parts[2]
    if total <= 0:
        raise ValueError(f"{text!r}: a time limit must be positive")
    return total


def describe(text: str) -> str:
    """How SLURM reads a time limit, e.g. `2:00 = 2 min (SLURM reads M:S; write 2:00:00 for hours)`.

    Raises ValueError when `text` is not a time limit.
    """
    seconds = slurm_time_seconds(text)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    units = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    read = " ".join(f"{value} {unit}" for value, unit in units if value)
    stripped = text.strip()
    if "-" not in stripped and stripped.count(":") == 1:
        return f"{stripped} = {read} (SLURM reads M:S; write {stripped}:00 for hours)"
    if "-" not in stripped and ":" not in stripped:
        return f"{stripped} = {read} (SLURM reads a bare number as minutes)"
    return f"{stripped} = {read}"
