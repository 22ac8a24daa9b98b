"""The ID tables' starts (``CLLM4Rec.init_id_tables``): the SVD of the training matrix, and which
directions of the LM's reading of the item texts the item tables start from, at what scale."""
from __future__ import annotations

import torch


def svd_factors(
    history: torch.Tensor, n_users: int, n_items: int, rank: int, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((users ``U sqrt(S)``, items ``V sqrt(S)``), (user degrees, item degrees)) of a rank-``rank``
    truncated SVD ``U S V^T`` of the degree-normalized training matrix ``D_u^-1/2 R D_i^-1/2`` (so
    popular items do not take every factor); ``history``: each user's items, 0-padded."""
    rows, cols = (history > 0).nonzero(as_tuple=True)
    items, rows = history[rows, cols].cpu(), rows.cpu()
    degrees = torch.bincount(rows, minlength=n_users), torch.bincount(items, minlength=n_items)
    user_degree, item_degree = (d.clamp(min=1).float() for d in degrees)
    values = (user_degree[rows] * item_degree[items]).rsqrt()
    # sparse: memory grows with interactions, not users x items
    indices = torch.stack([rows, items])
    matrix = torch.sparse_coo_tensor(indices, values, (n_users, n_items), check_invariants=True).coalesce()
    with torch.random.fork_rng(devices=[]):  # randomized SVD: drawn from the seed, global state untouched
        torch.manual_seed(seed)
        u, singular, v = torch.svd_lowrank(matrix, q=rank, niter=4)
    return (u * singular.sqrt(), v * singular.sqrt()), degrees


def text_components(states: torch.Tensor, dims: int, seed: int) -> torch.Tensor:
    """The top ``dims`` principal components of the rows of ``states`` that have text, whitened
    (orthonormal columns: each weighs the same); zero rows elsewhere.

    Whitened, because unwhitened the few largest components, what every item text shares, swamp the
    rest: on amazon-beauty-paper the start's tables alone rank at validation Recall@20 0.1409
    unwhitened against 0.1518 whitened (256 dimensions, share 0.3; ``docs/research-log.md``)."""
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
