"""Tried, not promoted (`docs/results.md`): the item head reads the content item table beside the
collaborative one, the layers' states against the content table. A hook in this process only
(``install()``); the model file is untouched.

    python benchmarks/content_head.py --dataset=amazon-beauty-paper --data_path=../shared/datasets \\
        lambda_c=1000 content_head=true

``content_head: true``: ``logit_k = (skip + w s) . e_k + w s . c_k + bias_k``, where ``s`` is the
layers' pooled state (``readout_state_weight`` w), ``e_k`` the collaborative item embedding and
``c_k`` the content one, which trains through the head in finetuning (it starts where the
collaborative table does and the content LM left it). Why: the head is ``state . item embedding``, of
rank at most the hidden size (576), which costs a linear model 4-9 % on Beauty (``docs/results.md``),
and the one item table has to serve the skip, which dominates it, and the layers' states at once.
The layers' states get an item table of their own; ``readout_state_weight: 0`` (the no-LM row)
removes that whole half of the head. ``history_text.py``'s options combine with it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import recbole_cllm4rec  # noqa: E402,F401

from recbole_cllm4rec.model.cllm4rec import CLLM4Rec  # noqa: E402


def install() -> None:
    """``content_head``, as hooks on ``CLLM4Rec`` in this process only."""
    if hasattr(CLLM4Rec.build_item_head, "before_content_head"):
        return
    build_item_head, head_input, item_head = CLLM4Rec.build_item_head, CLLM4Rec.head_input, CLLM4Rec.item_head

    def build(model: CLLM4Rec, config) -> None:
        build_item_head(model, config)
        model.content_head = bool(config["content_head"])

    def two_inputs(model: CLLM4Rec, ids: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        if not model.content_head:
            return head_input(model, ids, length)
        states, skip = model.head_input_parts(ids, length)
        return torch.cat([states + skip, states], dim=1)

    def two_tables(model: CLLM4Rec, features: torch.Tensor):
        if not model.content_head:
            return item_head(model, features)
        weight = torch.cat([model.collaborative_item_emb.weight, model.content_item_emb.weight], dim=1)
        if not model.has_item_bias:
            return features, weight
        features = torch.cat([features, features.new_ones(len(features), 1)], dim=1)
        return features, torch.cat([weight, model.item_bias.weight], dim=1)

    build.before_content_head = build_item_head
    CLLM4Rec.build_item_head, CLLM4Rec.head_input, CLLM4Rec.item_head = build, two_inputs, two_tables


def main(argv: list[str] | None = None):
    """The quick loop (``quick_loop.py``'s arguments) with the hook installed."""
    import history_text
    import quick_loop

    history_text.install()  # inert unless history_text_weight / readout_projection are set
    install()
    return quick_loop.main(argv)


if __name__ == "__main__":
    main()
