"""Tried, not promoted (`docs/results.md`): the layers read the history items' text, and the head reads
the layers through a trained linear map. Both are hooks in this process only (``install()``); the
model file is untouched.

    python benchmarks/history_text.py --dataset=amazon-beauty-paper --data_path=../shared/datasets \\
        lambda_c=1000 history_text_weight=1 readout_projection=true

- ``history_text_weight: g``: on the collaborative side (collaborative LM, finetuning, scoring) an
  item token enters the layers as its collaborative embedding plus ``g`` x the item's soft text token,
  the mean input word embedding of its text (``item_text_template``) rescaled to a word's mean norm
  (frozen). The skip still pools the ID embeddings alone; only the layers see the text. Why: the
  layers read only ID tokens today, and their states rank like popularity (Beauty 0.044).
- ``readout_projection: true``: the pooled state ``r`` becomes ``r + r W`` (``W`` trained, starting
  at zero, so the model starts where the defaults do). Why: the head scores ``state . item
  embedding``, and the raw states' few large shared directions decide that dot product.

``readout_state_weight: 0`` (the no-LM row) removes both: the layers' states leave the head.
Runs the quick loop (``quick_loop.py``'s configuration and ``--work``) with the settings given.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import recbole_cllm4rec  # noqa: E402,F401

from recbole_cllm4rec.model.cllm4rec import CLLM4Rec  # noqa: E402


@torch.no_grad()
def soft_text_tokens(model: CLLM4Rec) -> torch.Tensor:
    """``[n_items, hidden]``: each item's mean input word embedding over its text, at a word's mean norm;
    zero for an item without text."""
    layout, content = model.layout, model.documents.content
    ids = content.ids.long()
    docs = (layout.is_item(ids).any(1) & ~layout.is_user(ids).any(1)).nonzero().squeeze(1)
    items = layout.split(ids[docs])[2].amax(1)
    words = model.backbone.get_input_embeddings().weight.float()
    positions = torch.arange(ids.shape[1])[None, :]
    text = (positions >= content.prompt_length[docs, None]) & (positions < content.length[docs, None])
    word_ids = torch.where(text, ids[docs], 0).clamp(max=layout.vocab_size - 1)
    bags = (text[:, :, None] * words[word_ids]).sum(1) / text.sum(1, keepdim=True).clamp(min=1)
    tokens = torch.zeros(model.n_items, words.shape[1])
    tokens[items] = bags / bags.norm(dim=1, keepdim=True).clamp(min=1e-12) * words.norm(dim=1).mean()
    return tokens


def install() -> None:
    """The two options, as hooks on ``CLLM4Rec`` in this process only."""
    if hasattr(CLLM4Rec.build_item_head, "before_hook"):
        return
    build_item_head, hidden_states = CLLM4Rec.build_item_head, CLLM4Rec.hidden_states
    readout_state, trainable_parameters = CLLM4Rec.readout_state, CLLM4Rec.trainable_parameters

    def build(model: CLLM4Rec, config) -> None:
        build_item_head(model, config)
        model.history_text_weight = float(config["history_text_weight"] or 0.0)
        if model.history_text_weight:
            model.register_buffer("soft_text", soft_text_tokens(model), persistent=False)
        model.readout_projection = None
        if config["readout_projection"]:
            dim = model.collaborative_item_emb.embedding_dim
            model.readout_projection = nn.Linear(dim, dim, bias=False)
            nn.init.zeros_(model.readout_projection.weight)

    def states(model: CLLM4Rec, ids, length, side, embeds=None):
        if side == "collaborative" and model.history_text_weight:
            embeds = model.embed(ids, side) if embeds is None else embeds
            items = model.layout.split(ids)[2]
            text = model.soft_text[items] * model.layout.is_item(ids)[:, :, None]
            embeds = embeds + model.history_text_weight * text.to(embeds)
        return hidden_states(model, ids, length, side, embeds)

    def readout(model: CLLM4Rec, hidden, ids, length):
        pooled = readout_state(model, hidden, ids, length)
        return pooled if model.readout_projection is None else pooled + model.readout_projection(pooled)

    def trainable(model: CLLM4Rec):
        extra = [] if model.readout_projection is None else [model.readout_projection.weight]
        return trainable_parameters(model) + extra

    build.before_hook = build_item_head
    CLLM4Rec.build_item_head, CLLM4Rec.hidden_states = build, states
    CLLM4Rec.readout_state, CLLM4Rec.trainable_parameters = readout, trainable


def main(argv: list[str] | None = None):
    """The quick loop (``quick_loop.py``'s arguments) with the hook installed."""
    import quick_loop

    install()
    return quick_loop.main(argv)


if __name__ == "__main__":
    main()
