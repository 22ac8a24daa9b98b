"""What the benchmark scripts share: their command line (``key=value`` settings), a dataset's split,
a run stored and read back, recall on dense matrices, the machine's name.

The scripts import the installed package (``pip install -e .``) and are run from the repository
root as ``python benchmarks/<script>.py``: Python puts this folder on the path, so ``import common``
finds this module.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import torch
import yaml

from recbole_cllm4rec.cli import parse_overrides
from recbole_cllm4rec.model.cllm4rec import CLLM4Rec
from recbole_cllm4rec.quick_start import run_model
from recbole_cllm4rec.registry import PROPERTIES_DIR, Config, get_model, get_trainer, property_files


def settings(pairs: list[str]) -> dict:
    """``key=value`` (or ``--key=value``) pairs as config entries, each value read as YAML: ``~`` is
    None, ``[20, 40]`` a list, ``{inter: [user_id]}`` a dict."""
    overrides = parse_overrides(["--" + pair.removeprefix("--") for pair in pairs])
    return {key: yaml.safe_load(value) for key, value in overrides.items()}


def parser(doc: str, dataset: str = "ml-100k", over: str | None = None) -> argparse.ArgumentParser:
    """A script's command line, described by the first line of its ``doc``: ``--dataset``,
    ``--data_path`` and, where ``over`` names what they change, positional ``key=value`` settings."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    if over:
        parser.add_argument("settings", nargs="*", help=f"key=value (yaml) over {over}")
    parser.add_argument("--dataset", default=dataset)
    parser.add_argument("--data_path", default=None, help="the folder holding <dataset>/ (default: RecBole's)")
    return parser


def config_dict(args: argparse.Namespace, **base) -> dict:
    """``base`` under the command line's ``key=value`` settings, and its ``--data_path``."""
    config = {**base, **settings(getattr(args, "settings", []))}
    if args.data_path:
        config["data_path"] = args.data_path
    return config


def split(dataset: str, config: dict, model: str = "CLLM4Rec", config_files: list[str] | None = None):
    """``(config, train, valid, test)``: the split every run of ``dataset`` with this seed gets."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    config = Config(model=model, dataset=dataset, config_file_list=config_files, config_dict=config)
    init_seed(config["seed"], config["reproducibility"])
    return (config, *data_preparation(config, create_dataset(config)))


def model_and_trainer(config, train):
    """The configured model on its device, and its trainer, as ``quick_start.run_model`` builds them."""
    model = get_model(config["model"])(config, train.dataset).to(config["device"])
    return model, get_trainer(config["MODEL_TYPE"], config["model"])(config, model)


def run_once(row: str, model: str, dataset: str, config: dict, work: Path) -> dict:
    """One run of ``model`` with ``config``, stored in ``work`` under the name of its table row and
    read back if it finished before. A CLLM4Rec run keeps its checkpoints there and resumes from its
    last completed epoch. The model enters the stored configuration when the row's name does not
    start with it (``CLLM4Rec-paper``: CLLM4Rec; ``CLLM4Rec-words-start``: CLLM4RecWordsStart)."""
    config = {**({"model": model} if row.split("-")[0] != model else {}), **config}
    stored = {k: v for k, v in config.items() if k != "data_path"}
    cllm4rec = issubclass(get_model(model), CLLM4Rec)
    if cllm4rec:  # a changed yaml default is a new configuration
        stored["defaults"] = sha1(*property_files(get_model(model)))
    dataset_yaml = PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"  # the dataset's presets, every model's too
    if dataset_yaml.is_file():
        stored["dataset_defaults"] = sha1(dataset_yaml)
    key = f"{row}-{hashlib.sha1(json.dumps(stored, sort_keys=True, default=str).encode()).hexdigest()[:10]}"
    path = work / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    run = {k: v for k, v in config.items() if k != "model"}
    if cllm4rec:
        checkpoints = work / "saved" / key
        run["checkpoint_dir"] = str(checkpoints)
        if list(checkpoints.glob(f"{model}-*-last.pth")):
            run["resume"] = True
    result = run_model(model, dataset, config_dict=run)
    result["config"] = config
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, default=str, indent=1))
    return result


def sha1(*files: Path) -> str:
    """The SHA-1 of the files' bytes, one after the other."""
    return hashlib.sha1(b"".join(file.read_bytes() for file in files)).hexdigest()


def interactions(dataset) -> np.ndarray:
    """The dense 0/1 user x item matrix of a RecBole dataset."""
    out = np.zeros((dataset.user_num, dataset.item_num), dtype=np.float32)
    out[dataset.inter_feat[dataset.uid_field].numpy(), dataset.inter_feat[dataset.iid_field].numpy()] = 1
    return out


def recall_at(scores: np.ndarray, seen: np.ndarray, truth: np.ndarray, k: int = 20) -> float:
    """Mean over users of hits in the top ``k`` (``seen`` masked) / held-out items."""
    scores = np.where(seen > 0, -np.inf, scores)
    scores[:, 0] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return float((np.take_along_axis(truth, top, 1).sum(1) / truth.sum(1)).mean())


def machine() -> str:
    """The GPU's name, or the CPU's and torch's thread count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "CPU"
    threads = torch.get_num_threads()
    return f"{cpu}, {threads} thread{'s' if threads > 1 else ''}"
