"""Hub datasets: loading one by id, and failing fast with a clear message when the hub cannot be reached.

Without a probe, `datasets` retries an unreachable hub for about 24 s before failing; offline mode is turned on
for the one `load_dataset` call only, so the rest of the process keeps the user's settings.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from vlmtune_cli.config.schema import DataSection
from vlmtune_cli.errors import UsageError, VlmtuneError

_TRUE = {"1", "true", "yes", "on"}


def _offline() -> bool:
    import datasets.config

    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return datasets.config.HF_HUB_OFFLINE or any(os.environ.get(f, "").lower() in _TRUE for f in flags)


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url, reached = urlparse(constants.ENDPOINT), []

    def probe() -> None:  # in a thread because name resolution ignores socket timeouts
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
            reached.append(True)
        except OSError:
            pass

    (thread := threading.Thread(target=probe, daemon=True)).start()
    thread.join(timeout + 0.5)
    return bool(reached)


def load_hub(data: DataSection) -> Any:
    import datasets.config
    from huggingface_hub import constants

    offline = _offline() or not _hub_reachable()
    kwargs: dict[str, Any] = {"name": data.options.get("hub_config"), "revision": data.options.get("hub_revision")}
    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    if offline:
        # Offline mode makes datasets answer from its cache at once instead of retrying for half a minute.
        datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        return datasets.load_dataset(data.source, **kwargs)
    except Exception as exc:
        if offline:
            raise VlmtuneError(
                f"{data.source!r} is not a local file or folder, and the Hugging Face Hub is unreachable "
                "(offline) with no cached copy of it",
                hint="use a local source: a .jsonl file, a folder saved with save_to_disk or of parquet "
                "files, a plugin 'file.py:function', or builtin:synthetic-detection",
            ) from exc
        raise UsageError(f"cannot load hub dataset {data.source!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved
