"""The item softmax's normalizer, chunked over the catalog so its logits never exist whole."""
from __future__ import annotations

import torch


class ItemLogSumExp(torch.autograd.Function):
    """``log sum_{i >= 1} exp(h . e_i)`` per row of ``hidden``, item 0 (padding) excluded.

    Computed over chunks of ``chunk_size`` items, and recomputed chunk by chunk in backward, so the
    ``[tokens, n_items]`` logits never exist whole: memory grows with the item table, not with
    tokens x items (a million-item catalog trains in a few GiB).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, chunk_size: int) -> torch.Tensor:
        lse = hidden.new_full((hidden.shape[0],), float("-inf"))
        for start in range(1, weight.shape[0], chunk_size):
            lse = torch.logaddexp(lse, (hidden @ weight[start : start + chunk_size].T).logsumexp(dim=1))
        ctx.save_for_backward(hidden, weight, lse)
        ctx.chunk_size = chunk_size
        return lse

    @staticmethod
    def backward(ctx, grad_lse: torch.Tensor):
        hidden, weight, lse = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for start in range(1, weight.shape[0], ctx.chunk_size):
            chunk = weight[start : start + ctx.chunk_size]
            # d lse / d logits = softmax; recomputed here instead of stored
            probs = torch.exp(hidden @ chunk.T - lse[:, None]) * grad_lse[:, None]
            if grad_hidden is not None:
                grad_hidden.addmm_(probs, chunk)
            if grad_weight is not None:
                grad_weight[start : start + ctx.chunk_size] = probs.T @ hidden
        return grad_hidden, grad_weight, None
