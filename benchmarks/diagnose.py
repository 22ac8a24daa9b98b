"""Where a CLLM4Rec checkpoint loses to EASE (or EASEText): test Recall@20 by history length and by item popularity.

    python benchmarks/diagnose.py --checkpoint saved/CLLM4Rec-....pth --ease_reg_weight=250
    python benchmarks/diagnose.py --checkpoint saved/CLLM4Rec-....pth --baseline=EASEText --ease_reg_weight=250 --text_weight=1

Both models rank the same test users of the checkpoint's own split (the baseline is fitted on that
split's training interactions), with RecBole's masking (training and validation items excluded). Users are
bucketed by their number of training items (quartiles); test interactions by their item's training
popularity (the most popular items that hold a third of the training interactions, the next third,
the rest; on a cold-item split the items without training interactions apart). Per user bucket: mean Recall@20 (hits / held-out items, RecBole's). Per item bucket: the
share of its test interactions that reach the top 20. With ``readout_skip``, also what each part of
what the head reads ranks at alone: the layers' pooled states, the skip (the item embeddings around
the layers), both (the model). Prints Markdown; ``--out`` writes it too.
"""
from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

import torch

from recbole_cllm4rec.quick_start import load_data_and_model
from recbole_cllm4rec.registry import Config, get_model


def top_k_hits(model, users: torch.Tensor, seen: list[set], truth: list[set], k: int, batch: int) -> torch.Tensor:
    """``[len(users), n_items]`` boolean: test items that reach the top ``k`` of each user."""
    n_items = model.n_items
    hits = torch.zeros(len(users), n_items, dtype=torch.bool)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(users), batch):
            chunk = users[start : start + batch]
            scores = model.full_sort_predict({model.USER_ID: chunk}).view(len(chunk), n_items).float().cpu()
            scores[:, 0] = float("-inf")
            for row, u in enumerate(chunk.tolist()):
                scores[row, list(seen[u])] = float("-inf")
            top = scores.topk(k, dim=1).indices
            for row, u in enumerate(chunk.tolist()):
                hits[start + row, [i for i in top[row].tolist() if i in truth[u]]] = True
    return hits


def by_user(dataset) -> list[set]:
    """Each user's items in a RecBole dataset."""
    sets = [set() for _ in range(dataset.user_num)]
    feat = dataset.inter_feat
    for u, i in zip(feat[dataset.uid_field].tolist(), feat[dataset.iid_field].tolist()):
        sets[u].add(i)
    return sets


def ratio(mine: float, theirs: float) -> str:
    """``mine / theirs`` for a table cell; "-" where the baseline has none (EASE on cold items)."""
    return f"{mine / theirs:.2f}" if theirs else "-"


def by_history_length(recall: dict[str, torch.Tensor], n_train: torch.Tensor, n_test: torch.Tensor, k: int) -> list[str]:
    """Mean Recall@k of each model (CLLM4Rec, then the baseline) per quartile of the users' number of training items."""
    edges = torch.quantile(n_train.float(), torch.tensor([0.25, 0.5, 0.75])).round().long().tolist()
    bounds = [0] + edges + [int(n_train.max())]
    baseline = list(recall)[1]
    lines = [f"Test Recall@{k} by the user's number of training items ({len(n_train)} test users)", "",
             f"| training items | users | test items | CLLM4Rec | {baseline} | CLLM4Rec / {baseline} |", "|---|---|---|---|---|---|"]  # fmt: skip
    for low, high in zip(bounds[:-1], bounds[1:]):
        group = (n_train > low) & (n_train <= high)
        if group.any():
            c, e = recall["CLLM4Rec"][group].mean().item(), recall[baseline][group].mean().item()
            lines.append(f"| {low + 1}-{high} | {int(group.sum())} | {int(n_test[group].sum())} | {c:.4f} | {e:.4f} | {ratio(c, e)} |")
    return lines


def by_popularity(hits: dict[str, torch.Tensor], users: torch.Tensor, train_sets: list[set], test_sets: list[set], k: int) -> list[str]:
    """Each model's share of test interactions in its top k, per third of the training interactions
    (the most popular items first), and for the items without training interactions (cold)."""
    n_items, baseline = hits["CLLM4Rec"].shape[1], list(hits)[1]
    popularity = torch.zeros(n_items)
    for items in train_sets:
        popularity[list(items)] += 1
    order = popularity.argsort(descending=True)
    share = popularity[order].cumsum(0) / popularity.sum()
    bucket = torch.empty(n_items, dtype=torch.long)
    bucket[order] = (share > 1 / 3).long() + (share > 2 / 3).long()
    bucket[popularity == 0] = 3
    test_pairs = [(row, i) for row, u in enumerate(users.tolist()) for i in test_sets[u]]
    rows = torch.tensor([r for r, _ in test_pairs])
    items = torch.tensor([i for _, i in test_pairs])
    lines = ["", f"Share of test interactions in the top {k}, by the item's training popularity", "",
             f"| items | training interactions | test interactions | CLLM4Rec | {baseline} | CLLM4Rec / {baseline} |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    names = ["head (first third of interactions)", "middle third", "tail (last third)", "cold (no training interactions)"]
    for b, name in enumerate(names):
        mine = bucket[items] == b
        if b == 3 and not mine.any():
            break
        c, e = (hits[m][rows[mine], items[mine]].float().mean().item() for m in ("CLLM4Rec", baseline))
        n_b = int((bucket[1:] == b).sum())
        lines.append(f"| {name}: {n_b} items | {int(popularity[bucket == b].sum())} | {int(mine.sum())} | {c:.4f} | {e:.4f} | {ratio(c, e)} |")
    return lines


@contextlib.contextmanager
def head_reading(model, part: int):
    """The model scoring with one of the two terms its item head sums (0: the layers' states, 1: the skip)."""
    model.head_input = lambda ids, length: model.head_input_parts(ids, length)[part]
    try:
        yield
    finally:
        del model.head_input  # the class's own again


def by_head_part(model, users, seen, test_sets, n_test: torch.Tensor, recall: torch.Tensor, args) -> list[str]:
    """Recall@k of each part of what the item head reads, alone, beside the model's."""
    lines = ["", f"Test Recall@{args.k} of each part of what the item head reads (item bias kept)", "",
             "| the head reads | Recall@20 |", "|---|---|"]  # fmt: skip
    names = (f"the layers' pooled states (x {model.readout_state_weight:g})", f"the skip alone (w {model.readout_skip:g})")
    for part, name in enumerate(names):
        with head_reading(model, part):
            hits = top_k_hits(model, users, seen, test_sets, args.k, args.batch)
        lines.append(f"| {name} | {(hits.sum(1) / n_test).mean():.4f} |")
    return lines + [f"| both (the model) | {recall.mean():.4f} |"]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--baseline", default="EASE", choices=("EASE", "EASEText"))
    parser.add_argument("--ease_reg_weight", type=float, default=250.0, help="the baseline's reg_weight")
    parser.add_argument("--text_weight", type=float, default=1.0, help="EASEText's")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    config, model, _, train, valid, test = load_data_and_model(args.checkpoint)
    base = {"data_path": os.path.dirname(config["data_path"]), "reg_weight": args.ease_reg_weight}
    if args.baseline == "EASEText":  # the checkpoint's item text, its dataset's text features
        base |= {"text_weight": args.text_weight, "item_text_template": config["item_text_template"]}
    baseline_config = Config(model=args.baseline, dataset=config["dataset"], config_dict=base)
    baseline = get_model(args.baseline)(baseline_config, train.dataset)  # fits in its constructor, on this split's training
    train_sets, valid_sets, test_sets = by_user(train.dataset), by_user(valid.dataset), by_user(test.dataset)
    seen = [a | b for a, b in zip(train_sets, valid_sets)]
    users = torch.tensor([u for u in range(len(test_sets)) if test_sets[u]])
    hits = {name: top_k_hits(m, users, seen, test_sets, args.k, args.batch) for name, m in (("CLLM4Rec", model), (args.baseline, baseline))}
    n_train = torch.tensor([len(train_sets[u]) for u in users.tolist()])
    n_test = torch.tensor([len(test_sets[u]) for u in users.tolist()], dtype=torch.float)
    recall = {name: h.sum(1) / n_test for name, h in hits.items()}
    lines = by_history_length(recall, n_train, n_test, args.k) + by_popularity(hits, users, train_sets, test_sets, args.k)
    lines += ["", f"overall: CLLM4Rec {recall['CLLM4Rec'].mean():.4f}, {args.baseline} {recall[args.baseline].mean():.4f}"]
    if model.readout_skip:
        lines += by_head_part(model, users, seen, test_sets, n_test, recall["CLLM4Rec"], args)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
