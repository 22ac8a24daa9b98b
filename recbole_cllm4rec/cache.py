"""The plugin's cache folder, in a module light enough for every entry point to import.

The converted backbone, the tokenized content documents and the shipped datasets live there.
"""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$RECBOLE_CLLM4REC_CACHE``, else ``$XDG_CACHE_HOME/recbole_cllm4rec``, else ``~/.cache/...``."""
    if os.environ.get("RECBOLE_CLLM4REC_CACHE"):
        return Path(os.environ["RECBOLE_CLLM4REC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "recbole_cllm4rec"
