"""Datasets that need no ``data_path``: the CLLM4Rec paper's Amazon-Beauty split packaged with the
plugin, RecBole's own ml-100k, and the cold-item splits of both (``properties/dataset/<name>.yaml``).

RecBole points ``ml-100k`` at the copy inside its wheel; the plugin's :class:`~recbole_cllm4rec.registry.Config`
asks :func:`shipped_folder` for the others. A packaged dataset is decompressed, a cold split built,
on first use into ``<cache>/datasets/<name>-<key>/`` (``<cache>``: ``llm_cache_dir``, else
:func:`~recbole_cllm4rec.cache.default_cache_dir`) through a temporary folder renamed into place.
The key digests what the folder is made of (the packaged files; the source files, the share, the
seed and the split's code), so a changed source or protocol never reuses an old folder.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import shutil
from pathlib import Path

import recbole

from recbole_cllm4rec.cache import default_cache_dir
from recbole_cllm4rec.datasets import split
from recbole_cllm4rec.datasets.split import PARTS, SIDE_FILES, atomic_folder, cold_item_split, interaction_files

logger = logging.getLogger(__name__)

PACKAGED = Path(__file__).resolve().parent / "data"  # <name>/<name>.<suffix>.gz, see datasets/README.md
RECBOLE_ML_100K = Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k"  # where RecBole reads it
COLD_PRESETS = {  # name: (source, share of cold items, seed)
    "ml-100k-cold": ("ml-100k", 0.2, 0),
    "amazon-beauty-paper-cold": ("amazon-beauty-paper", 0.2, 0),
}


def shipped_folder(name: str, cache_dir: str | Path | None = None) -> Path | None:
    """The folder holding ``name``'s atomic files if the plugin or RecBole ships it (built on first
    use), else None."""
    if name == "ml-100k":
        return RECBOLE_ML_100K
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if (PACKAGED / name).is_dir():
        return unpacked(name, cache)
    if name in COLD_PRESETS:
        source, share, seed = COLD_PRESETS[name]
        return cold_split_folder(name, shipped_folder(source, cache), source, share, seed, cache)
    return None


def _key(*contents: bytes) -> str:
    digest = hashlib.sha256()
    for content in contents:
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()[:12]


def _complete(folder: Path, names: list[str]) -> bool:
    return all((folder / name).is_file() for name in names)


def unpacked(name: str, cache: Path) -> Path:
    """The packaged dataset ``name``, decompressed."""
    packed = sorted((PACKAGED / name).glob("*.gz"))
    target = cache / "datasets" / f"{name}-{_key(*(path.read_bytes() for path in packed))}"
    if not _complete(target, [path.stem for path in packed]):
        logger.info("Decompressing the packaged %s into %s (once)", name, target)
        with atomic_folder(target, replace=target.exists()) as tmp:
            for path in packed:
                with gzip.open(path) as source, open(tmp / path.stem, "wb") as out:
                    shutil.copyfileobj(source, out)
    return target


def cold_split_folder(name: str, folder: Path, source: str, share: float, seed: int, cache: Path) -> Path:
    """The cold-item split ``name`` of the dataset ``source`` under ``folder``."""
    read = interaction_files(folder, source) + [p for s in SIDE_FILES if (p := folder / f"{source}.{s}").is_file()]
    code = Path(split.__file__).read_bytes()
    target = cache / "datasets" / f"{name}-{_key(code, f'{share} {seed}'.encode(), *(p.read_bytes() for p in read))}"
    if not _complete(target, [f"{name}.{part}.inter" for part in PARTS]):
        logger.info("Building %s from %s into %s (once)", name, source, target)
        cold_item_split(folder, source, share, seed).write(target, name, replace=target.exists())
    return target
