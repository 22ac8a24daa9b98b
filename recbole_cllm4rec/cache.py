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

import torch

from recbole_cllm4rec.checkpoint import replaced_whole

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$RECBOLE_CLLM4REC_CACHE``, else ``$XDG_CACHE_HOME/recbole_cllm4rec``, else ``~/.cache/...``."""
    if os.environ.get("RECBOLE_CLLM4REC_CACHE"):
        return Path(os.environ["RECBOLE_CLLM4REC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "recbole_cllm4rec"


def cached_tensor(path: Path, build: Callable[[], torch.Tensor], what: str) -> torch.Tensor:
    """``build()``, stored at ``path`` the first time and loaded from there after; written whole
    (``checkpoint.replaced_whole``), and a file that cannot be read back is built again."""
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 (any damage: truncated, not a torch file)
            logger.warning("%s: %s cannot be read (%s): building it again", what, path, type(exc).__name__)
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
