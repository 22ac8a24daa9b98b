"""The ID tables' starts (``CLLM4Rec.init_id_tables``): the SVD of the training matrix, and which
directions of the LM's reading of the item texts the item tables start from, at what scale; and
which rows each side trains, the rows mutual regularization may pull toward.

Why each start, and what it measured against the paper's random one: ``docs/results.md``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from recbole_cllm4rec.batches import token_budget_batches
from recbole_cllm4rec.documents import ContentDocuments
from recbole_cllm4rec.ids import IdLayout


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
    rest: the start's tables alone rank lower unwhitened (``docs/results.md``)."""
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


def trained_rows(layout: IdLayout, history: torch.Tensor, content: ContentDocuments) -> tuple[torch.Tensor, torch.Tensor]:
    """Which rows of the stacked ``[users; items]`` tables (``IdLayout.id_rows``) each side trains:
    (collaborative: users with training items and the items they have, content: every ID token of a
    content document). A row with no document on a side never moves from its start."""
    n_rows = layout.n_users + layout.n_items
    collaborative = torch.zeros(n_rows, dtype=torch.bool)
    collaborative[: layout.n_users] = (history > 0).sum(dim=1).cpu() > 0
    collaborative[layout.id_rows(layout.item_tokens(history[history > 0]))] = True
    content_ids = content.ids.long()
    content_rows = torch.zeros(n_rows, dtype=torch.bool)
    content_rows[layout.id_rows(content_ids[layout.is_id(content_ids)]).unique()] = True
    return collaborative, content_rows


def svd_start(sides: list[tuple[nn.Embedding, nn.Embedding]], history: torch.Tensor, init_std: float, seed: int) -> None:
    """Every side's (user, item) tables (the collaborative side first) start at the SVD factors of
    the training matrix (``svd_factors``), rescaled to ``init_std``: equal on both sides, so mutual
    regularization starts at zero. A row without training interactions has no factor and keeps the
    collaborative side's random draw (at the zero vector a deep LM gives it non-finite gradients)."""
    (n_users, dim), n_items = sides[0][0].weight.shape, sides[0][1].num_embeddings
    rank = min(dim, n_users - 1, n_items - 1)
    factors, degrees = svd_factors(history, n_users, n_items, rank, seed)
    collaborative = sides[0]
    for tables in sides:
        for k, (table, factor) in enumerate(zip(tables, factors)):
            start = torch.zeros_like(table.weight)
            start[:, :rank] = factor / factor[1:].std() * init_std
            table.weight.copy_(torch.where(degrees[k][:, None] > 0, start, collaborative[k].weight))


def text_start(item_tables: list[torch.Tensor], states: torch.Tensor, dims: int, share: float, seed: int) -> None:
    """The last ``dims`` dimensions of ``item_tables`` take the whitened top principal components of
    ``states`` (``text_components``) at ``share`` of a row's mean squared norm; at most half of a
    row's dimensions, one per item with text; nothing without item text."""
    dims = min(dims, states.shape[1] // 2, int((states.abs().sum(1) > 0).sum()))
    if not dims:
        return
    components = text_components(states, dims, seed)
    for table in item_tables:
        write_text_start(table, components, share)


def item_text_states(
    content: ContentDocuments, layout: IdLayout, plain_words: tuple[int, int], read: Callable, dim: int, max_tokens: int
) -> torch.Tensor:
    """``[n_items, dim]``: each item's content document read by ``text_readings``; zero for an item
    without a document."""
    ids = content.ids.long()
    docs = (layout.is_item(ids).any(1) & ~layout.is_user(ids).any(1)).nonzero().squeeze(1)
    items = layout.split(ids[docs])[2].amax(1)  # an item document's one item (0 at other positions)
    states = torch.zeros(layout.n_items, dim)
    states[items] = text_readings(content, docs, layout, plain_words, read, dim, max_tokens)
    return states


def text_readings(
    content: ContentDocuments, docs: torch.Tensor, layout: IdLayout, plain_words: tuple[int, int], read: Callable,
    dim: int, max_tokens: int,
) -> torch.Tensor:
    """``[len(docs), dim]``: content documents ``docs`` as plain prompts (the words ``user`` / ``item``
    in place of the ID tokens, ``plain_words``) read by ``read(words, length)`` (its last layer's
    states), averaged over the text. ``max_tokens``: padded tokens per forward pass."""
    ids = content.ids.long()
    states = torch.zeros(len(docs), dim)
    for batch in token_budget_batches(content.length[docs], max_tokens, shuffle=False):
        rows = docs[batch]
        length, prompt_length = content.length[rows], content.prompt_length[rows]
        plain = layout.as_words(ids[rows][:, : int(length.max())], *plain_words)
        hidden = read(plain, length)
        positions = torch.arange(plain.shape[1])[None, :]
        text = ((positions >= prompt_length[:, None]) & (positions < length[:, None])).float()
        states[batch] = (text[:, :, None] * hidden).sum(1) / text.sum(1, keepdim=True).clamp(min=1)
    return states
