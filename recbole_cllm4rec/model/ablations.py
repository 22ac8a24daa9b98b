"""Ablations of CLLM4Rec that need code, each a subclass registered like a model (``--model=``).

An ablation that is a setting (no text, no LM, random LM weights, no content LM) stays a key of
``properties/CLLM4Rec.yaml``; one that replaces a step of the model is a subclass here, with
CLLM4Rec's defaults, trainer and checkpoints (``registry``: a subclass inherits its base's).
"""
from __future__ import annotations

import torch

from recbole_cllm4rec.model.cllm4rec import CLLM4Rec


class CLLM4RecWordsStart(CLLM4Rec):
    """The text start read off the bag of the text's input word embeddings instead of the content
    side's layers: what the layers' reading adds to the start (``docs/results.md``)."""

    def text_states(self, words: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_input_embeddings()(words).float()
