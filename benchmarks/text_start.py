"""The text start (``text_start_dims``, ``text_start_share``: the item tables start from the SVD plus
the LM's reading of each item's text, ``CLLM4Rec.init_from_text``): its grid.

    python benchmarks/text_start.py --dataset=ml-100k
    python benchmarks/text_start.py --dataset=amazon-beauty-paper --data_path=../shared/datasets

Validation Recall@20 of the start's tables alone (a history's mean item embedding . each item,
training items masked; ``id_signal.py``'s quantity) for each (dims, share): whether the LM's reading
adds item-item signal before any training. Trained, the start is the yaml defaults
(``quick_loop.py``, ``reproduce.py``); its ablation reads the bag of the text's input word
embeddings instead of the layers' states, the registered model ``CLLM4RecWordsStart``
(``quick_loop.py --model=CLLM4RecWordsStart``, ``reproduce.py``'s row ``CLLM4Rec-words-start``).
"""
from __future__ import annotations

import numpy as np
import torch
from common import config_dict, interactions, parser, recall_at, split

from recbole_cllm4rec.model.cllm4rec import CLLM4Rec
from recbole_cllm4rec.model.starts import text_components, write_text_start


def start_grid(dataset: str, config: dict, dims: list[int], shares: list[float]) -> str:
    """Validation Recall@20 of the start's tables alone, per (dims, share); the SVD alone first."""
    config = {"show_progress": False, "state": "WARNING", **config, "text_start_dims": 0}  # the SVD, then each start
    config, train, valid, _ = split(dataset, config)
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


def main(argv: list[str] | None = None) -> str:
    command = parser(__doc__, over="the yaml defaults")
    command.add_argument("--dims", default="64,256")
    command.add_argument("--shares", default="0.1,0.2,0.3")
    command.add_argument("--threads", type=int, default=1)
    args = command.parse_args(argv)
    torch.set_num_threads(args.threads)
    dims, shares = [int(d) for d in args.dims.split(",")], [float(s) for s in args.shares.split(",")]
    return start_grid(args.dataset, config_dict(args), dims, shares)


if __name__ == "__main__":
    main()
