"""What a checkpoint holds and how it is kept whole.

A checkpoint is written atomically (a temporary file, then a rename) with a checksum of its tensors,
verified on every load, and carries the RNG states and the split fingerprint a resume needs.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import random
import shutil

import numpy as np
import torch


def state_checksum(state_dict: dict) -> str:
    """blake2b of every tensor's name, dtype, shape and bytes: any changed value changes it."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def temporary_file(path: str) -> str:
    """Where :func:`atomic_save` writes ``path`` before the rename (one per process)."""
    return f"{path}.tmp{os.getpid()}"


def atomic_save(state: dict, path: str) -> None:
    """``torch.save`` (with the tensors' checksum) to a temporary file, then rename: a crash never
    leaves a half-written checkpoint."""
    state = {**state, "checksum": state_checksum(state["state_dict"])}
    tmp = temporary_file(path)
    try:
        torch.save(state, tmp, pickle_protocol=4)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as "enforce fail ... unexpected pos"
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        said = " ".join(str(exc).split())[:200]
        reason = "no space left on its disk" if free < 64 * 2**20 else f"{type(exc).__name__}: {said}"
        raise OSError(
            f"could not write {path} ({reason}, {free / 2**20:.0f} MiB free): the previous {os.path.basename(path)} "
            "is kept as it was; free space and resume with --resume=True"
        ) from exc


def remove_stale_temporaries(paths: list[str]) -> None:
    """The temporary files a killed process left beside ``paths`` (its rename never came). Only the
    one process that writes ``paths`` may call it: every temporary found is then stale."""
    for tmp in [found for path in paths for found in glob.glob(f"{glob.escape(path)}.tmp*")]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def load_checkpoint(path: str, device, verify: bool = True) -> dict:
    """Load a checkpoint of this plugin, with a clear error for a missing, damaged or altered file.

    ``verify`` recomputes the tensors' checksum (files of RecBole's own trainer have none).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(  # our own file: holds the Config
            path, map_location=device, weights_only=False, mmap=torch.device(device).type == "cpu"
        )
    except Exception as exc:
        raise RuntimeError(f"checkpoint {path} is unreadable (truncated or corrupted?): {exc}") from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RuntimeError(f"{path} is not a RecBole checkpoint")
    if verify and "checksum" in checkpoint and state_checksum(checkpoint["state_dict"]) != checkpoint["checksum"]:
        raise RuntimeError(f"checkpoint {path} is corrupted: its tensors do not match their checksum")
    return checkpoint


def rng_state() -> dict:
    """Every random generator's state, so that a resumed run draws what the uninterrupted one would."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_mismatch(checkpoint: dict, model: str, dataset: str, split: str | None) -> str | None:
    """Why ``checkpoint`` cannot continue a run of ``model`` on ``dataset`` with split ``split``."""
    config = checkpoint["config"]
    if config["model"] != model or config["dataset"] != dataset:
        return f"it is a {config['model']} run on {config['dataset']}, not {model} on {dataset}"
    if split and checkpoint.get("split") and checkpoint["split"] != split:
        return f"it was trained on another split of {dataset} (fingerprint {checkpoint['split']}, this run's {split})"
    return None
