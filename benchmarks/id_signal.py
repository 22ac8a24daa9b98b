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

import contextlib

import numpy as np
import torch
from common import interactions, parser, recall_at, split

from recbole_cllm4rec.registry import Config, get_model


def ease_rows(dataset: str, data: dict, train, seen: np.ndarray, truth: np.ndarray, users: np.ndarray, regs: list[float]) -> list:
    """EASE at each ``reg_weight`` (RecBole's, fitted in its constructor on this split's training interactions)."""
    from recbole.model.general_recommender import EASE

    rows = []
    for reg in regs:
        ease = EASE(Config(model="EASE", dataset=dataset, config_dict={**data, "reg_weight": reg}), train.dataset)
        rows.append((f"EASE, reg_weight {reg:g}", recall_at(ease.interaction_matrix[users] @ ease.item_similarity, seen, truth)))
    return rows


def ridge_rows(X: np.ndarray, users: np.ndarray, truth: np.ndarray, lam: float, ranks: list[str]) -> list:
    """The ridge item-item model truncated to each rank: what an ID table of that size can hold."""
    values, vectors = np.linalg.eigh((X.T @ X).astype(np.float64))  # R^T R = V S^2 V^T (counts: exact in fp32)
    order = np.argsort(-values)
    values, vectors = np.clip(values[order], 0, None), vectors[:, order]
    rows = []
    for rank in ranks:
        r = len(values) if rank == "full" else int(rank)
        shrunk = vectors[:, :r] * (values[:r] / (values[:r] + lam))
        scores = (X[users] @ shrunk) @ vectors[:, :r].T
        rows.append((f"ridge item-item model (lambda {lam:g}) at rank {rank}", recall_at(scores, X[users], truth)))
    return rows


def untrained(config, train, **overrides):
    """The model at initialization, item bias zeroed: only what the tables and layers pass on ranks."""
    for key, value in overrides.items():
        config[key] = value
    torch.manual_seed(config["seed"])
    model = get_model("CLLM4Rec")(config, train.dataset).eval()
    if model.has_item_bias:
        with torch.no_grad():
            model.item_bias.weight.zero_()
    return model


@torch.no_grad()
def scores(model, users: np.ndarray) -> np.ndarray:
    return model.full_sort_predict({model.USER_ID: torch.from_numpy(users)}).numpy()


@contextlib.contextmanager
def first_layers(model, n: int):
    """The prompts through the model's first ``n`` frozen layers only; 0: the input embeddings
    themselves as the states, what the layers start from."""
    body = model.backbone.base_model
    all_layers = body.layers
    body.layers = all_layers[:n]
    if n == 0:
        model.hidden_states = lambda ids, length, side, embeds=None: model.embed(ids, side).float()
    try:
        yield
    finally:
        body.layers = all_layers
        if n == 0:
            del model.hidden_states  # the class's own again


def model_rows(model, config, train, seen: np.ndarray, truth: np.ndarray, users: np.ndarray, skip: float) -> list:
    """``model`` (untrained, no skip) through 0..all its layers; then with the skip, its states weighted."""
    rows, layers = [], len(model.backbone.base_model.layers)
    for n in range(0, layers + 1):
        with first_layers(model, n):
            rows.append((f"item_init svd, untrained model through {n} frozen layer(s), readout items, no item bias",
                         recall_at(scores(model, users), seen, truth)))  # fmt: skip
    # with the skip: what the head reads at the start of finetuning, the states weighted against it
    for weight in (1.0, 0.3, 0.1):
        model = untrained(config, train, item_init="svd", readout="items", readout_skip=skip, readout_state_weight=weight)
        rows.append((f"item_init svd, untrained model through {layers} frozen layers, readout items + skip (w {skip:g}), "
                     f"states x {weight:g}, no item bias", recall_at(scores(model, users), seen, truth)))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> str:
    command = parser(__doc__)
    command.add_argument("--ease", default="100,250,500", help="EASE reg_weight values")
    command.add_argument("--ridge", type=float, default=250.0, help="lambda of the ridge item-item model of --ranks")
    command.add_argument("--ranks", default="", help="ranks of the ridge item-item model (lambda --ridge) "
                         "to show what the hidden size costs, e.g. 576,1152,2304,full")  # fmt: skip
    command.add_argument("--linear_only", action="store_true", help="only the linear models (EASE, ridge ranks, the tables)")
    command.add_argument("--layers", type=int, default=4)
    command.add_argument("--skip", type=float, default=3.0, help="readout_skip of the rows with the skip")
    args = command.parse_args(argv)
    torch.set_num_threads(1)
    data = {"data_path": args.data_path} if args.data_path else {}
    # content_layers too: the sweep through fewer layers cuts the backbone's own block list
    settings = {"llm_layers": args.layers, "content_layers": args.layers, "pretrain_epochs": 0, "lambda_c": 0.0, "show_progress": False}
    config, train, valid, _ = split(args.dataset, {**settings, **data})  # the split is drawn: the one every run gets
    X, V = interactions(train.dataset), interactions(valid.dataset)
    users = np.where(V.sum(1) > 0)[0]
    seen, truth = X[users], V[users]
    rows = ease_rows(args.dataset, data, train, seen, truth, users, [float(r) for r in args.ease.split(",")])
    if args.ranks:
        rows += ridge_rows(X, users, truth, args.ridge, args.ranks.split(","))
    model = untrained(config, train, item_init="svd", readout="items", readout_skip=0.0)
    items = model.collaborative_item_emb.weight.detach().numpy()
    rows.append(("item_init svd: the tables alone (mean item embedding . item)", recall_at(seen @ items @ items.T, seen, truth)))
    if not args.linear_only:
        rows += model_rows(model, config, train, seen, truth, users, args.skip)
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
