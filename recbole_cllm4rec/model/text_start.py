"""The text start's arithmetic (``CLLM4Rec.init_from_text``): which directions of the LM's reading of
the item texts the item tables start from, and at what scale."""
from __future__ import annotations

import torch


def text_components(states: torch.Tensor, dims: int, seed: int) -> torch.Tensor:
    """The top ``dims`` principal components of the rows of ``states`` that have text, whitened
    (orthonormal columns: each weighs the same); zero rows elsewhere.

    Whitened, because unwhitened the few largest components, what every item text shares, swamp the
    rest: on amazon-beauty-paper the start's tables alone rank at validation Recall@20 0.1409
    unwhitened against 0.1518 whitened (256 dimensions, share 0.3; ``docs/results.md``)."""
    has_text = states.abs().sum(1) > 0
    centred = states[has_text] - states[has_text].mean(0)
    with torch.random.fork_rng(devices=[]):  # randomized PCA: drawn from the seed, global state untouched
        torch.manual_seed(seed)
        u = torch.pca_lowrank(centred, q=dims, center=False, niter=4)[0]
    components = torch.zeros(len(states), dims)
    components[has_text] = u
    return components


def write_text_start(item_table: torch.Tensor, components: torch.Tensor, share: float) -> None:
    """The last ``components.shape[1]`` dimensions of ``item_table`` (row 0, padding, skipped) take
    the components, scaled to ``share`` of the rows' mean squared norm beside the rest."""
    dims = components.shape[1]
    rest = item_table[1:, :-dims].pow(2).sum(1).mean()
    scale = (share / (1 - share) * rest / components[1:].pow(2).sum(1).mean().clamp(min=1e-12)).sqrt()
    item_table[1:, -dims:] = components[1:].to(item_table) * scale
