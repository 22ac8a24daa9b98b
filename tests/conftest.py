"""Shared fixtures: a small generated atomic dataset and the tiny random backbone, all offline."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: tests never touch a hub

import importlib  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import recbole_cllm4rec  # noqa: E402,F401  (shims + registration)

N_USERS, N_ITEMS = 30, 40
GENRES = ["comedy", "drama", "action", "horror"]


def write_tiny_dataset(root, name: str = "tiny", seed: int = 0) -> None:
    """``root/name/name.{inter,item,user}``: 30 users with 6-14 items each out of 40, item text."""
    rng = random.Random(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    t = 0
    for u in range(1, N_USERS + 1):
        # users prefer a genre: items of genre g are those with i % 4 == g
        genre = u % len(GENRES)
        liked = [i for i in range(1, N_ITEMS + 1) if i % len(GENRES) == genre]
        others = [i for i in range(1, N_ITEMS + 1) if i % len(GENRES) != genre]
        items = rng.sample(liked, 6) + rng.sample(others, rng.randint(0, 8))
        for i in items:
            t += 1
            lines.append(f"u{u}\ti{i}\t{rng.randint(1, 5)}\t{t}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    item_lines = ["item_id:token\ttitle:token_seq\tgenre:token"]
    for i in range(1, N_ITEMS + 1):
        item_lines.append(f"i{i}\tThe {GENRES[i % 4]} film number {i}\t{GENRES[i % 4]}")
    (folder / f"{name}.item").write_text("\n".join(item_lines) + "\n")
    user_lines = ["user_id:token\tage:token"] + [f"u{u}\t{20 + u}" for u in range(1, N_USERS + 1)]
    (folder / f"{name}.user").write_text("\n".join(user_lines) + "\n")


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """A tmp working dir (RecBole writes log/ and saved/ relative to it) holding the tiny dataset."""
    write_tiny_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_config_dict(root, **overrides) -> dict:
    config = {
        "data_path": str(root),
        "load_col": {
            "inter": ["user_id", "item_id", "rating", "timestamp"],
            "item": ["item_id", "title", "genre"],
            "user": ["user_id", "age"],
        },
        "llm": "tiny-random",
        "llm_cache_dir": str(root / "cache"),
        "llm_dtype": "float32",  # exact comparisons with hand-computed fp32 values
        "item_text_template": "{title}. Genre: {genre}.",
        "user_text_template": "aged {age}",
        "content_warmup_epochs": 1,
        "finetune_content": True,
        "pretrain_epochs": 1,
        "epochs": 1,
        "train_batch_tokens": 256,
        "show_progress": False,
        "checkpoint_dir": str(root / "saved"),
        "topk": [5, 10],
        "valid_metric": "Recall@10",
        "seed": 2020,
        "state": "WARNING",
    }
    config.update(overrides)
    return config


def make_model(root, **overrides):
    """Config, datasets and a CLLM4Rec model on the tiny dataset, as RecBole's quick start builds them."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_cllm4rec.model.cllm4rec import CLLM4Rec
    from recbole_cllm4rec.registry import Config

    config = Config(model="CLLM4Rec", dataset="tiny", config_dict=tiny_config_dict(root, **overrides))
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, CLLM4Rec(config, train.dataset), (train, valid, test)


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    """A script of ``benchmarks/`` (not a package: pytest's ``pythonpath`` holds its folder, as
    ``python benchmarks/<name>.py`` does) imported as a module, for its ``main``."""
    return importlib.import_module(name)


def a_checkpoint_then_failing_saves(monkeypatch, path: Path, error: BaseException) -> bytes:
    """Save a small checkpoint at ``path``, then make every later save write part of a file and raise
    ``error``; returns the first file's bytes, which a failed save must leave as they were."""
    import torch

    from recbole_cllm4rec import checkpoint

    checkpoint.atomic_save({"state_dict": {"w": torch.ones(2)}}, str(path))

    def failing_save(state, file, **kwargs):
        Path(file).write_bytes(b"partial")
        raise error

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    return path.read_bytes()
