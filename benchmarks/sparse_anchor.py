"""Tried, not promoted (`docs/results.md`): mutual regularization weighted by how little data a user or
item has. A hook in this process only (``install()``); the model file is untouched.

    python benchmarks/sparse_anchor.py --dataset=amazon-beauty-paper --data_path=../shared/datasets \\
        lambda_c=1000 mutual_reg_sparsity=0.5

``mutual_reg_sparsity: b``: each ID token's term of the mutual regularization weighs
``min((median degree / degree) ** b, 10)`` (degree: its training interactions; the median over the
users, or the items, that have any): an item or user with few interactions is held harder to the
other side (with the text start, to the LM's reading of its text), a popular one is freer to move.
Why: the text start helps the sparse users and the tail items, and CLLM4Rec loses to EASE on the
head items and the long histories (``docs/results.md``). ``b`` 0: the defaults.
``mutual_reg_sparsity_on: items`` (or ``users``) weighs only that side's rows; the other's weigh 1.
``mutual_reg_sparsity_floor: 1`` keeps every weight at 1 or more: the tail is held harder, the head
keeps the defaults' anchor (on ml-100k, loosening the head lost 1.2 % with the recommended schedule).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import recbole_cllm4rec  # noqa: E402,F401

from recbole_cllm4rec.model.cllm4rec import CLLM4Rec  # noqa: E402


def sparsity_weights(
    user_degree: torch.Tensor, item_degree: torch.Tensor, power: float, floor: float = 0.0
) -> torch.Tensor:
    """Per ID row (users, then items): ``min(max((median / degree) ** power, floor), 10)``; degree 0
    counts as 1."""
    parts = []
    for degree in (user_degree.float(), item_degree.float()):
        median = degree[degree > 0].median() if (degree > 0).any() else degree.new_ones(())
        parts.append((median / degree.clamp(min=1)).pow(power).clamp(min=floor, max=10.0))
    return torch.cat(parts)


def install() -> None:
    """``mutual_reg_sparsity``, as hooks on ``CLLM4Rec`` in this process only."""
    if hasattr(CLLM4Rec.build_item_head, "before_sparse_anchor"):
        return
    build_item_head, mutual_regularization = CLLM4Rec.build_item_head, CLLM4Rec.mutual_regularization

    def build(model: CLLM4Rec, config) -> None:
        build_item_head(model, config)
        power = float(config["mutual_reg_sparsity"] or 0.0)
        model.sparse_anchor = power > 0
        if model.sparse_anchor:
            history = model.documents.history_items
            item_degree = torch.bincount(history[history > 0].cpu(), minlength=model.n_items)
            floor = float(config["mutual_reg_sparsity_floor"] or 0.0)
            weights = sparsity_weights(model.documents.history_len.cpu(), item_degree, power, floor)
            n_users = len(model.documents.history_len)
            on = config["mutual_reg_sparsity_on"] or "both"
            if on == "items":
                weights[:n_users] = 1.0
            elif on == "users":
                weights[n_users:] = 1.0
            model.register_buffer("anchor_weights", weights.to(model.device), persistent=False)

    def weighted(model: CLLM4Rec, ids: torch.Tensor, side: str, batch_ids: torch.Tensor) -> torch.Tensor:
        if not getattr(model, "sparse_anchor", False):  # built before the hook, or b 0
            return mutual_regularization(model, ids, side, batch_ids)
        other = "content" if side == "collaborative" else "collaborative"
        trained = model.content_trained if other == "content" else model.collaborative_trained
        id_ids = ids[model.layout.is_id(ids)]
        id_ids = id_ids[trained[model.layout.id_rows(id_ids)]]
        mine = model.embed(id_ids, side)
        with torch.no_grad():
            theirs = model.embed(id_ids, other)
        weight = model.anchor_weights[model.layout.id_rows(id_ids)]
        reg = (weight[:, None] * (mine - theirs) ** 2).sum()
        if model.mutual_reg_mean:
            reg = reg / model.layout.is_id(batch_ids).sum().clamp(min=1).to(reg.device)
        return model.lambda_c * reg

    build.before_sparse_anchor = build_item_head
    CLLM4Rec.build_item_head, CLLM4Rec.mutual_regularization = build, weighted


def main(argv: list[str] | None = None):
    """The quick loop (``quick_loop.py``'s arguments) with the hook installed."""
    import quick_loop

    install()
    return quick_loop.main(argv)


if __name__ == "__main__":
    main()
