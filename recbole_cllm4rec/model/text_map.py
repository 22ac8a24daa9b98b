"""Items without training interactions (cold items), and items that arrive after training: what the
item head scores them with, when all they have is their text.

Finetuning never shows a cold item as a positive: the multinomial loss pushes its row away from every
user's state, and its bias starts at the catalog's lowest popularity. ``cold_item_rows`` chooses
(measured in ``docs/results.md``, "New items"):

- ``trained``: the rows as finetuning left them (the paper's model);
- ``content``: the content side's row, which the content LM trained on the item's text (the paper's
  path from text to the collaborative side), with the mean bias of the items with interactions;
- ``text_map``: a ridge map from the LM's reading of an item's text (``CLLM4Rec.item_text_states``)
  to the head's row and bias, fit on the items with interactions, each weighing its interactions:
  the row a warm item with that text would have. A new item's text takes the same map, without
  retraining. With ``text_map_pseudo_interactions`` the warm items with few interactions lean on it
  too. The cold dataset presets set it.
"""
from __future__ import annotations

import torch

from recbole_cllm4rec.cold_items import item_interactions
from recbole_cllm4rec.documents import build_content_documents
from recbole_cllm4rec.ids import SoftHardPrompt
from recbole_cllm4rec.model.starts import text_readings

COLD_ITEM_ROWS = ("trained", "content", "text_map")


def fit_text_map(
    states: torch.Tensor, rows: torch.Tensor, ridge: float, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of the least-squares map ``rows ~ states @ weight + bias``, each row weighing
    ``weights`` (all alike by default), with an L2 penalty of ``ridge`` times the mean eigenvalue of the
    weighted, centred states' Gram matrix (scale-free)."""
    x, y = states.double(), rows.double()
    w = torch.ones(len(x), dtype=x.dtype) if weights is None else weights.double() / weights.double().mean()
    x_mean, y_mean = w @ x / w.sum(), w @ y / w.sum()
    x, y = (x - x_mean) * w.sqrt()[:, None], (y - y_mean) * w.sqrt()[:, None]
    gram = x.T @ x
    penalty = ridge * gram.diagonal().mean().clamp(min=1e-12)
    weight = torch.linalg.solve(gram + penalty * torch.eye(len(gram), dtype=gram.dtype), x.T @ y)
    return weight.to(rows.dtype), (y_mean - x_mean @ weight).to(rows.dtype)


def warm_text_map(states: torch.Tensor, rows: torch.Tensor, interactions: torch.Tensor, ridge: float):
    """``fit_text_map`` over the warm items that have text (a zero reading: no text), each weighing its
    training ``interactions``: a row is as reliable as the interactions that trained it (one user's item
    keeps much of its random start), so the map fits interactions, not items (``docs/results.md``,
    "New items"); ``None`` with fewer than two such items."""
    fit = (interactions > 0) & (states.abs().sum(1) > 0)
    if fit.sum() < 2:
        return None
    return fit_text_map(states[fit], rows[fit], ridge, interactions[fit])


def mapped_rows(readings: torch.Tensor, text_map: tuple[torch.Tensor, torch.Tensor], bias_shift: float = 0.0) -> torch.Tensor:
    """Head rows from text ``readings`` through the map, the last column (the item bias, where the head
    has one) raised by ``bias_shift`` for items without interactions: the warm biases the map fits grew
    with their popularity, which such an item has had no chance to earn."""
    rows = readings @ text_map[0] + text_map[1]
    rows[:, -1] += bias_shift
    return rows


def cold_head_rows(
    mode: str, head_rows: torch.Tensor, content_rows: torch.Tensor, interactions: torch.Tensor, states, ridge: float,
    bias_shift: float = 0.0, pseudo_interactions: float = 0.0,
) -> torch.Tensor:
    """The head's rows (``[n_items, dim (+1: the bias)]``) with every cold item's row (no training
    ``interactions``, the padding row 0 aside) replaced as ``mode`` says; ``states()``: the items' text
    readings, on demand; ``ridge``: the text map's (``warm_text_map``), ``bias_shift``: its cold rows'
    (``mapped_rows``). With ``text_map`` and ``pseudo_interactions`` k, a warm item of n interactions
    is scored with ``(n trained + k mapped) / (n + k)``: its own row, shrunk toward the row its text
    predicts as far as its interactions leave it unsure (a cold item, n = 0, gets the mapped row)."""
    warm = interactions > 0
    cold = ~warm
    cold[0] = False
    if mode == "trained" or not (cold.any() or (mode == "text_map" and pseudo_interactions)):
        return head_rows
    rows = head_rows.clone()
    if mode == "content":
        dim = content_rows.shape[1]
        rows[cold, :dim] = content_rows[cold].to(rows)
        rows[cold, dim:] = head_rows[warm, dim:].mean(0)
        return rows
    readings = states().to(rows)
    text_map = warm_text_map(readings, head_rows, interactions, ridge)
    if text_map is None:
        return rows
    has_text = readings.abs().sum(1) > 0
    shrunk, mapped = warm & has_text, cold & has_text
    if pseudo_interactions:
        n, k = interactions[shrunk, None].to(rows), pseudo_interactions
        rows[shrunk] = (n * head_rows[shrunk] + k * mapped_rows(readings[shrunk], text_map)) / (n + k)
    rows[mapped] = mapped_rows(readings[mapped], text_map, bias_shift)
    return rows


class ColdItemHead:
    """The item head's rows when scoring, and for items that arrive after training: CLLM4Rec's part
    that reads ``cold_item_rows`` (a mixin, as ``FrozenLM``)."""

    def build_cold_items(self, config, dataset) -> None:
        """``dataset``: the training data; its items with interactions are the warm ones (``cold_items``)."""
        self.register_buffer("item_interactions", item_interactions(dataset), persistent=False)
        self.cold_item_rows = config["cold_item_rows"]
        self.text_map_ridge = float(config["text_map_ridge"])
        self.text_map_bias_shift = float(config["text_map_bias_shift"])
        self.text_map_pseudo_interactions = float(config["text_map_pseudo_interactions"])
        if self.text_map_bias_shift and not self.has_item_bias:
            raise ValueError("text_map_bias_shift shifts the item bias: it needs item_bias=True (or text_map_bias_shift=0)")
        self.item_prompt = config["item_prompt"]
        self._scoring_rows = (None, None)  # (what they were made from: the mode, the ridge, the tables' versions; rows)

    def head_rows(self) -> torch.Tensor:
        """The item head's rows: the collaborative item embeddings, each item's bias as a last column."""
        weight = self.collaborative_item_emb.weight
        return torch.cat([weight, self.item_bias.weight], dim=1) if self.has_item_bias else weight

    def scoring_rows(self) -> torch.Tensor:
        """``head_rows`` with the cold items' rows as ``cold_item_rows`` says, remade only when a table
        (optimizer steps and loads bump a tensor's version) or a ``cold_item_rows`` / ``text_map_*`` setting changed."""
        tables = [self.collaborative_item_emb.weight, self.content_item_emb.weight]
        tables += [self.item_bias.weight] if self.has_item_bias else []
        settings = (self.cold_item_rows, self.text_map_ridge, self.text_map_bias_shift, self.text_map_pseudo_interactions)
        versions = settings + tuple((id(t), t._version) for t in tables)
        if self._scoring_rows[0] != versions:
            with torch.no_grad():
                rows = cold_head_rows(
                    self.cold_item_rows, self.head_rows(), self.content_item_emb.weight, self.item_interactions,
                    lambda: self.item_text_states(self.eval_batch_tokens), self.text_map_ridge, self.text_map_bias_shift,
                    self.text_map_pseudo_interactions,
                )
            self._scoring_rows = (versions, rows)
        return self._scoring_rows[1]

    @torch.no_grad()
    def text_map_rows(self, texts: list[str]) -> torch.Tensor:
        """Head rows of items that arrive after training, from their (non-empty) ``texts`` through the
        text map fit on the items with interactions, whatever ``cold_item_rows`` scores cold items with."""
        prompt = SoftHardPrompt(self.item_prompt, self.tokenizer, self.layout)
        prompts = prompt.ids(items=torch.ones(len(texts), dtype=torch.long))
        docs = build_content_documents({"item": (prompts, texts)}, self.tokenizer, self.documents.max_seq_len)
        if len(docs) != len(texts):
            raise ValueError("every new item needs a non-empty text")
        states, rows = self.item_text_states(self.eval_batch_tokens), self.head_rows().cpu()
        text_map = warm_text_map(states, rows, self.item_interactions.cpu(), self.text_map_ridge)
        if text_map is None:
            raise ValueError("the text map needs at least two items with interactions and text")
        dim, max_tokens = rows.shape[1] - self.has_item_bias, self.eval_batch_tokens
        readings = text_readings(docs, torch.arange(len(docs)), self.layout, self.plain_words, self.read_text, dim, max_tokens)
        return mapped_rows(readings, text_map, self.text_map_bias_shift).to(self.head_rows())
