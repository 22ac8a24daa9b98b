"""Documents packed into training and scoring batches: by padded tokens, and how many a training batch holds."""
from __future__ import annotations

import numpy as np
import torch


def token_budget_batches(
    lengths: torch.Tensor, max_tokens: int, shuffle: bool = True, window: int = 4096, max_padding: float = 0.1
) -> list[torch.Tensor]:
    """Indices of documents grouped into batches of at most ``max_tokens`` padded tokens.

    Documents are sorted by length (within random windows of ``window`` documents when
    ``shuffle``) and packed greedily; a batch also closes before padding would exceed
    ``max_padding`` of its tokens, so short documents of spread-out lengths do not waste compute.
    Batch order is then shuffled. Every index appears exactly once; a document longer than
    ``max_tokens`` gets a batch of its own. Randomness comes from torch's global RNG (seeded by
    RecBole); without ``shuffle`` the batches are deterministic, longest first.
    """
    order = torch.randperm(len(lengths)) if shuffle else torch.arange(len(lengths))
    window = window if shuffle else max(len(order), 1)  # deterministic: one global sort
    batches: list[torch.Tensor] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[lengths[chunk].argsort(descending=True, stable=True)]
        sizes = lengths[chunk].clamp(min=1).numpy()
        filled = np.concatenate([[0], np.cumsum(sizes)])
        begin = 0
        while begin < len(chunk):
            # sorted descending: the first document sets the batch's padded length
            width = int(sizes[begin])
            count = np.arange(1, min(max(1, max_tokens // width), len(chunk) - begin) + 1)
            padding = 1.0 - (filled[begin + count] - filled[begin]) / (count * width)
            count = int(count[padding <= max_padding].max())  # padding only grows with count
            batches.append(chunk[begin : begin + count])
            begin += count
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches)).tolist()]
    return batches


def documents_per_batch(lengths: torch.Tensor, max_tokens: int, per_step: int | None) -> float:
    """The (expected) number of documents of ``lengths`` tokens in a training batch: ``per_step``
    (``train_batch_documents``) when set, else ``max_tokens`` (``train_batch_tokens``) over their mean
    length, at least 1. A loss divided by it weighs every document the same in whichever batch it lands."""
    if per_step:
        return float(per_step)
    mean_length = lengths.float().mean().item() if len(lengths) else 1.0
    return max(1.0, max_tokens / mean_length)
