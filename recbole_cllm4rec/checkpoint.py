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


@contextlib.contextmanager
def replaced_whole(path: str | os.PathLike):
    """The temporary name to write ``path``'s new content to (``<path>.tmp<pid>``): renamed to ``path``
    when the block ends, removed when it raises (Ctrl-C too), so ``path`` is whole or as it was."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def atomic_save(state: dict, path: str) -> None:
    """``torch.save`` (with the tensors' checksum) through ``replaced_whole``: a crash never leaves a
    half-written checkpoint, and a failed write says why (torch reports a full disk as "enforce fail")."""
    state = {**state, "checksum": state_checksum(state["state_dict"])}
    try:
        with replaced_whole(path) as tmp:
            torch.save(state, tmp, pickle_protocol=4)
    except (OSError, RuntimeError) as exc:
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


# keys a resume may change: how long it trains and what it shows, and where things are (the run's
# files stay beside its resume point; the split's and the backbone's fingerprints are checked)
RESUME_MAY_CHANGE = frozenset(
    "epochs stopping_step eval_batch_size show_progress state log_wandb wandb_project checkpoint_dir data_path llm llm_cache_dir".split()
)
# keys of the process, never of the run: where it runs and how it was started
PROCESS_KEYS = frozenset(
    "resume device gpu_id use_gpu local_rank world_size nproc offset ip port single_spec verbose config_files worker".split()
)


def resume_setting_changes(checkpoint: dict, config, keys=None) -> tuple[str | None, list[str]]:
    """(why a resume with ``config`` would not continue the run ``checkpoint`` saved, or ``None``;
    the lines to log: the changes a resume may make, keys the resume point does not record).
    ``keys``: only these (the keys the user gave, checked before the data is read), else every key.

    A change to any other key (a learning rate the restored optimizer would not take, a loss weight,
    a masking ratio) would silently make a run that neither setting describes."""
    recorded, now = checkpoint["config"].final_config_dict, config.final_config_dict
    refused, allowed, unrecorded = [], [], []
    for key in sorted(set(now if keys is None else keys) - PROCESS_KEYS):
        if key not in recorded:
            unrecorded.append(key)
        elif not same_value(recorded[key], now[key]):
            (allowed if key in RESUME_MAY_CHANGE else refused).append(f"{key}={recorded[key]!r} -> {now[key]!r}")
    notes = [f"resume changes {', '.join(allowed)}"] if allowed else []
    if unrecorded:
        notes.append(f"the resume point records no {', '.join(unrecorded)} (saved by an earlier version): not checked")
    if not refused:
        return None, notes
    return (
        f"it ran with other settings ({', '.join(refused)}): a resume continues the same run, so give the values "
        f"it ran with or start a new run; a resume may change only {', '.join(sorted(RESUME_MAY_CHANGE))}"
    ), notes


def same_value(a, b) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # arrays, tensors: compared by what they print
        return repr(a) == repr(b)
