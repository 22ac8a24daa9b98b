"""Cold items: items of an evaluated split that have no training interaction, and every model's metrics on them.

A model that learns from interactions alone has nothing but its priors for such an item; one that
reads item text can rank it. Beside RecBole's metrics over all targets, a run reports, for each
evaluated part with cold targets and on the users that have at least one, two views of the run's
top-K ``metrics``:

- ``cold-item``: RecBole's full ranking (padding and the part's history masked, exactly as its
  full-sort evaluation does), with only the user's cold items as targets: can cold items reach the
  top of the whole catalog?
- ``cold-only``: the candidates are the items without a training interaction alone (every warm
  item at ``-inf``, the part's history still masked), the same targets: how well does the model
  order the new items among themselves? A model that scores every cold item alike (Pop, EASE)
  is measured here by how ``torch.topk`` breaks its ties.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.distributed as dist
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.evaluator.base_metric import TopkMetric
from recbole.evaluator.collector import DataStruct
from recbole.evaluator.register import metrics_dict
from recbole.utils import set_color

VIEWS = ("cold-item", "cold-only")


def not_in_training(ids: torch.Tensor, train, field: str) -> torch.Tensor:
    """Which of the user or item ``ids`` (of ``field``) have no interaction in ``train``: the one
    definition of cold."""
    return ~torch.isin(ids, train.inter_feat[field])


def item_interactions(train) -> torch.Tensor:
    """``[item_num]``: each item's training interactions (0: a cold item)."""
    return torch.bincount(train.inter_feat[train.iid_field], minlength=train.item_num)


def cold_item_mask(train) -> torch.Tensor:
    """``[item_num]``: True for the items without a training interaction (padding id 0 excluded)."""
    cold = item_interactions(train) == 0
    cold[0] = False
    return cold


def cold_start_lines(train, valid, test) -> list[str]:
    """How many evaluation users and items never occur in training: a model has only priors for them
    (CLLM4Rec: a cold user's prompt holds no items, a cold item is scored with the row
    ``cold_item_rows`` gives it), so a pre-split dataset full of them measures something else."""
    lines = []
    for name, part in (("validation", valid), ("test", test)):
        users, items = part.inter_feat[part.uid_field].unique(), part.inter_feat[part.iid_field]
        cold_users = int(not_in_training(users, train, train.uid_field).sum())
        cold = not_in_training(items, train, train.iid_field)
        if cold_users or cold.any():
            lines.append(
                f"{name}: {cold_users} of {len(users)} users have no training interactions, {int(cold.sum())} of "
                f"{len(items)} interactions are of {len(items[cold].unique())} items never seen in training "
                "(a model has only its priors for them; CLLM4Rec scores such items with the rows cold_item_rows gives them)"
            )
    return lines


def topk_metrics(config) -> list[TopkMetric]:
    """The run's ``metrics`` that read the top-K list alone (Recall, NDCG, PaperRecall, ...), at its ``topk``."""
    names = [config["metrics"]] if isinstance(config["metrics"], str) else config["metrics"]
    classes = [metrics_dict[name.lower()] for name in names]
    return [metric(config) for metric in classes if issubclass(metric, TopkMetric)]


def topk_rows(scores: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """RecBole's ``rec.topk`` rows: per user, whether each of the top ``k`` items is a target, then #targets."""
    top = scores.topk(k, dim=1).indices
    return torch.cat([targets.gather(1, top), targets.sum(1, keepdim=True)], dim=1).cpu()


def full_scores(model, users, item_feature) -> torch.Tensor:
    """``[users, items]``: ``model.full_sort_predict``, or ``predict`` over every (user, item) pair
    for a model without it (NeuMF, ...), as RecBole's trainer falls back."""
    try:
        return model.full_sort_predict(users).view(len(users), -1)
    except NotImplementedError:
        pairs = users.repeat_interleave(len(item_feature))
        pairs.update(item_feature.repeat(len(users)))
        return model.predict(pairs).view(len(users), -1)


def batch_rows(model, batch, cold: torch.Tensor, k: int, item_feature) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(user ids, ``rec.topk`` rows per view) of the users of one full-sort batch that have a cold
    target; only they are scored, masked as RecBole's ``Trainer._full_sort_batch_eval`` masks them."""
    user_df, (history_u, history_i), positive_u, positive_i = batch
    is_cold = cold[positive_i]
    rows, target_row = positive_u[is_cold].unique(return_inverse=True)  # batch rows with a cold target
    if not len(rows):
        return torch.empty(0, dtype=torch.long), {view: torch.empty(0, k + 1, dtype=torch.int) for view in VIEWS}
    users = user_df[rows]
    scores = full_scores(model, users.to(model.device), item_feature)
    scores[:, 0] = -np.inf
    kept = torch.isin(history_u, rows)
    scores[torch.searchsorted(rows, history_u[kept]), history_i[kept]] = -np.inf
    targets = torch.zeros_like(scores, dtype=torch.int)
    targets[target_row, positive_i[is_cold]] = 1
    ranked = {"cold-item": scores, "cold-only": scores.masked_fill(~cold.to(scores.device), -np.inf)}
    return users[model.USER_ID].cpu(), {view: topk_rows(s, targets, k) for view, s in ranked.items()}


def gather_users(users: torch.Tensor, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's rows, each user once: RecBole's evaluation loader gives each rank a share of the
    users and pads the shares with repeats."""
    shares = [None] * dist.get_world_size()
    dist.all_gather_object(shares, (users, rows))
    users = torch.cat([share[0] for share in shares])
    _, first = np.unique(users.numpy(), return_index=True)
    return {view: torch.cat([share[1][view] for share in shares])[torch.from_numpy(first)] for view in VIEWS}


@torch.no_grad()
def cold_item_views(model, eval_data, cold: torch.Tensor, config) -> dict[str, float]:
    """``{"cold-item recall@20": ..., "cold-only recall@20": ...}`` over the users of ``eval_data``
    with a cold target (``cold``: :func:`cold_item_mask`); empty when none has one, when the
    evaluation is not a full ranking of a general model, or without a top-K metric."""
    metrics = topk_metrics(config)
    if not (metrics and eval_data and isinstance(eval_data, FullSortEvalDataLoader)) or eval_data.is_sequential:
        return {}
    model.eval()
    k, item_feature = int(np.max(config["topk"])), eval_data._dataset.get_item_feature().to(model.device)
    users, rows = zip(*(batch_rows(model, batch, cold, k, item_feature) for batch in eval_data))
    rows = {view: torch.cat([r[view] for r in rows]) for view in VIEWS}
    if not config["single_spec"]:
        rows = gather_users(torch.cat(users), rows)
    if not len(rows["cold-item"]):
        return {}
    results = {}
    for view in VIEWS:
        struct = DataStruct()
        struct.set("rec.topk", rows[view])
        results.update({f"{view} {key}": value for metric in metrics for key, value in metric.calculate_metric(struct).items()})
    return results


def cold_item_results(model, parts: dict, train, config) -> dict[str, float]:
    """:func:`cold_item_views` of each evaluated part (``{"test": test_data, "valid": valid_data}``),
    keys prefixed by the part's name (``"test cold-item recall@20"``), each logged as RecBole logs a result."""
    cold = cold_item_mask(train)
    results = {}
    for name, eval_data in parts.items():
        views = cold_item_views(model, eval_data, cold, config)
        for view in VIEWS:
            logged = {key.removeprefix(f"{view} "): value for key, value in views.items() if key.startswith(view)}
            if logged:
                logging.getLogger().info(set_color(f"{name} {view}", "yellow") + f": {logged}")
        results.update({f"{name} {key}": value for key, value in views.items()})
    return results


def with_test_views(result: dict) -> dict[str, float]:
    """A run's test metrics and its test cold-item views (``"cold-item recall@20"``), for a chart."""
    views = result.get("cold_result", {})
    return {**result["test_result"], **{key.removeprefix("test "): v for key, v in views.items() if key.startswith("test ")}}
