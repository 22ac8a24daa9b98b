"""The plugin's cache folder, in a module light enough for every entry point to import.

The converted backbone, the tokenized content documents, the LM's reading of the item texts and the
shipped datasets live there.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recbole_cllm4rec.checkpoint import replaced_whole

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$RECBOLE_CLLM4REC_CACHE``, else ``$XDG_CACHE_HOME/recbole_cllm4rec``, else ``~/.cache/...``."""
    if os.environ.get("RECBOLE_CLLM4REC_CACHE"):
        return Path(os.environ["RECBOLE_CLLM4REC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "recbole_cllm4rec"


def cached_value(path: Path, build: Callable[[], Any], what: str, check: Callable[[Any], None] | None = None) -> Any:
    """``build()`` (tensors, or a dict of them), stored at ``path`` the first time and loaded from there
    after; written whole (``checkpoint.replaced_whole``). A file that cannot be read back, or whose value
    ``check`` refuses (raises), is built again with a warning."""
    if path.is_file():
        try:
            value = torch.load(path, weights_only=True)
            if check is not None:
                check(value)
            logger.info("%s: loaded from %s", what, path)
            return value
        except Exception as exc:  # noqa: BLE001 (any damage: truncated, not a torch file, refused)
            reason = " ".join(str(exc).split())[:120] or type(exc).__name__
            logger.warning("%s: the cached %s is damaged (%s): building it again", what, path, reason)
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_whole(path) as tmp:
        torch.save(value, tmp)
    logger.info("%s: cached in %s", what, path)
    return value


def digest(*parts: bytes | str) -> str:
    """A short hex digest of ``parts``, a cache file's key."""
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x00")
    return h.hexdigest()
