"""How much of the ID tables' collaborative structure reaches CLLM4Rec's item head, at initialization.

    python benchmarks/id_signal.py --dataset=ml-100k
    python benchmarks/id_signal.py --dataset=amazon-beauty-paper --data_path=../shared/datasets --ridge=100 --ranks=576,1152,2304,full

Validation Recall@20 (training items masked, as RecBole ranks for validation) of, on one split:
linear item-item models of the training matrix (EASE; the ID tables themselves, a history's mean item
embedding . each item, for ``item_init: svd``), the ridge item-item model truncated to a rank (``--ranks``), and the untrained model whose prompts go
through the first 0..``llm_layers`` frozen layers (item bias zeroed, so only what the layers pass on
ranks), and the untrained model with the skip (``readout_skip``), its states weighted 1, 0.3, 0.1
(``readout_state_weight``). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import recbole_cllm4rec  # noqa: E402,F401


def recall_at(scores: np.ndarray, seen: np.ndarray, truth: np.ndarray, k: int = 20) -> float:
    """Mean over users of hits in the top ``k`` (``seen`` masked) / held-out items."""
    scores = np.where(seen > 0, -np.inf, scores)
    scores[:, 0] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return float((np.take_along_axis(truth, top, 1).sum(1) / truth.sum(1)).mean())


def interactions(dataset) -> np.ndarray:
    """The dense 0/1 user x item matrix of a RecBole dataset."""
    out = np.zeros((dataset.user_num, dataset.item_num), dtype=np.float32)
    out[dataset.inter_feat[dataset.uid_field].numpy(), dataset.inter_feat[dataset.iid_field].numpy()] = 1
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--ease", default="100,250,500", help="EASE reg_weight values")
    parser.add_argument("--ridge", type=float, default=250.0, help="lambda of the ridge item-item model of --ranks")
    parser.add_argument("--ranks", default="", help="ranks of the ridge item-item model (lambda --ridge) "
                        "to show what the hidden size costs, e.g. 576,1152,2304,full")
    parser.add_argument("--linear_only", action="store_true", help="only the linear models (EASE, ridge ranks, the tables)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--skip", type=float, default=3.0, help="readout_skip of the rows with the skip")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import EASE
    from recbole.utils import init_seed

    from recbole_cllm4rec.registry import Config, get_model

    # content_layers too: the sweep below cuts the backbone's own block list
    settings = {"llm_layers": args.layers, "content_layers": args.layers, "pretrain_epochs": 0, "lambda_c": 0.0, "show_progress": False}
    if args.data_path:
        settings["data_path"] = args.data_path
    config = Config(model="CLLM4Rec", dataset=args.dataset, config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])  # the split is drawn: the one every run gets
    train, valid, _ = data_preparation(config, create_dataset(config))

    X, V = interactions(train.dataset), interactions(valid.dataset)
    users = np.where(V.sum(1) > 0)[0]
    seen, truth = X[users], V[users]
    rows = []
    for reg in [float(r) for r in args.ease.split(",")]:  # RecBole's EASE fits in its constructor
        ease = EASE(Config(model="EASE", dataset=args.dataset, config_dict={**{k: v for k, v in settings.items() if k == "data_path"}, "reg_weight": reg}), train.dataset)
        rows.append((f"EASE, reg_weight {reg:g}", recall_at(ease.interaction_matrix[users] @ ease.item_similarity, seen, truth)))

    if args.ranks:  # the ridge item-item model truncated to rank r: what an ID table of size r can hold
        lam = args.ridge
        values, vectors = np.linalg.eigh((X.T @ X).astype(np.float64))  # R^T R = V S^2 V^T (counts: exact in fp32)
        order = np.argsort(-values)
        values, vectors = np.clip(values[order], 0, None), vectors[:, order]
        for rank in args.ranks.split(","):
            r = len(values) if rank == "full" else int(rank)
            shrunk = vectors[:, :r] * (values[:r] / (values[:r] + lam))
            scores = (X[users] @ shrunk) @ vectors[:, :r].T
            rows.append((f"ridge item-item model (lambda {lam:g}) at rank {rank}", recall_at(scores, seen, truth)))

    def untrained(**overrides):
        """The model at initialization, item bias zeroed: only what the tables and layers pass on ranks."""
        for key, value in overrides.items():
            config[key] = value
        torch.manual_seed(config["seed"])
        model = get_model("CLLM4Rec")(config, train.dataset).eval()
        if model.has_item_bias:
            with torch.no_grad():
                model.item_bias.weight.zero_()
        return model

    model = untrained(item_init="svd", readout="items", readout_skip=0.0)
    items = model.collaborative_item_emb.weight.detach().numpy()
    rows.append(("item_init svd: the tables alone (mean item embedding . item)", recall_at(X[users] @ items @ items.T, seen, truth)))
    if args.linear_only:
        return report(args.dataset, len(users), rows)
    body = model.backbone.base_model
    all_layers = body.layers
    model.eval()
    for n in range(0, args.layers + 1):
        body.layers = all_layers[:n]
        with torch.no_grad():
            if n == 0:  # the input embeddings as the states: what the layers start from
                hidden, model.hidden_states = model.hidden_states, lambda ids, length, side, embeds=None: model.embed(ids, side).float()
            scores = model.full_sort_predict({model.USER_ID: torch.from_numpy(users)}).numpy()
            if n == 0:
                model.hidden_states = hidden
        rows.append((f"item_init svd, untrained model through {n} frozen layer(s), readout items, no item bias", recall_at(scores, seen, truth)))
    body.layers = all_layers

    # with the skip: what the head reads at the start of finetuning, the states weighted against it
    for weight in (1.0, 0.3, 0.1):
        model = untrained(item_init="svd", readout="items", readout_skip=args.skip, readout_state_weight=weight)
        with torch.no_grad():
            scores = model.full_sort_predict({model.USER_ID: torch.from_numpy(users)}).numpy()
        rows.append((f"item_init svd, untrained model through {args.layers} frozen layers, readout items + skip (w {args.skip:g}), states x {weight:g}, no item bias", recall_at(scores, seen, truth)))

    return report(args.dataset, len(users), rows)


def report(dataset: str, n_users: int, rows: list[tuple[str, float]]) -> str:
    """Print and return the Markdown table."""
    lines = [f"Validation Recall@20 on {dataset} ({n_users} users)", "", "| model | valid Recall@20 |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in rows]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
