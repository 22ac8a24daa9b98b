"""The text start (``text_start_dims``, ``text_start_share``: the item tables start from the SVD plus
the LM's reading of each item's text, ``CLLM4Rec.init_from_text``): its grid, and its ablation.

    python benchmarks/text_start.py --dataset=ml-100k                          # the start alone
    python benchmarks/text_start.py --dataset=amazon-beauty-paper --data_path=../shared/datasets
    python benchmarks/text_start.py --dataset=ml-100k --train text_start_source=words

Without ``--train``: validation Recall@20 of the start's tables alone (a history's mean item
embedding . each item, training items masked; ``id_signal.py``'s quantity) for each (dims, share):
whether the LM's reading adds item-item signal before any training. With ``--train``: the quick
loop's finetuning-only run (``quick_loop.py``'s configuration and ``--work``), or any schedule given
as ``key=value``.

``install()`` adds the ablation, in this process only: ``text_start_source: words`` reads the bag of
the text's input word embeddings instead of the layers' states (no layer: what the 30 layers add).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import recbole_cllm4rec  # noqa: E402,F401
from id_signal import interactions, recall_at  # noqa: E402

from recbole_cllm4rec.model.cllm4rec import CLLM4Rec  # noqa: E402
from recbole_cllm4rec.model.starts import text_components, write_text_start  # noqa: E402


def install() -> None:
    """``text_start_source: words`` (the ablation), as a hook in this process only: the text start
    reads the input word embeddings of the plain-word documents, no layer."""
    init = CLLM4Rec.init_id_tables
    if hasattr(init, "lm_source"):  # installed already
        return

    def init_id_tables(model: CLLM4Rec, config, start_tables: bool) -> None:
        if config["text_start_source"] == "words":
            model.text_states = lambda words, length: model.backbone.get_input_embeddings()(words).float()
        init(model, config, start_tables)

    init_id_tables.lm_source = init
    CLLM4Rec.init_id_tables = init_id_tables


def start_grid(dataset: str, data_path: str | None, dims: list[int], shares: list[float], settings: dict) -> str:
    """Validation Recall@20 of the start's tables alone, per (dims, share); the SVD alone first."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_cllm4rec.registry import Config

    config_dict = {"show_progress": False, "state": "WARNING", **settings, "text_start_dims": 0}  # the SVD, then each start
    if data_path:
        config_dict["data_path"] = data_path
    config = Config(model="CLLM4Rec", dataset=dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    X, V = interactions(train.dataset), interactions(valid.dataset)
    users = np.where(V.sum(1) > 0)[0]
    model = CLLM4Rec(config, train.dataset).eval()
    svd = model.collaborative_item_emb.weight.detach().clone()
    states = model.item_text_states(config["eval_batch_tokens"])

    def tables_alone(items: torch.Tensor) -> float:
        items = items.numpy()
        return recall_at(X[users] @ items @ items.T, X[users], V[users])

    lines = [f"Validation Recall@20 of the start's tables alone on {dataset} ({len(users)} users)", "",
             "| text dims | " + " | ".join(f"share {s:g}" for s in shares) + " |", "|---|" + "---|" * len(shares),
             f"| 0 (the SVD alone) | {tables_alone(svd):.4f} |" + " |" * (len(shares) - 1)]  # fmt: skip
    for d in dims:
        components = text_components(states, d, config["seed"])
        cells = []
        for share in shares:
            items = svd.clone()
            write_text_start(items, components, share)
            cells.append(f"{tables_alone(items):.4f}")
        lines.append(f"| {d}, whitened | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="*", help="key=value (yaml) over the yaml defaults / the quick loop")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--dims", default="64,256")
    parser.add_argument("--shares", default="0.1,0.2,0.3")
    parser.add_argument("--train", action="store_true", help="train the variant (quick loop) instead")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="results/quick")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.train:
        import quick_loop

        install()
        rest = ["--dataset", args.dataset, "--epochs", str(args.epochs), "--threads", str(args.threads), "--work", args.work]
        return quick_loop.main(args.settings + rest + (["--data_path", args.data_path] if args.data_path else []))
    settings = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.settings)}
    dims, shares = [int(d) for d in args.dims.split(",")], [float(s) for s in args.shares.split(",")]
    return start_grid(args.dataset, args.data_path, dims, shares, settings)


if __name__ == "__main__":
    main()
