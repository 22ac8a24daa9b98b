"""The frozen LM a model reads through: each side's depth of it, its precision, and checkpoints without it.

``FrozenLM`` is the backbone half of ``CLLM4Rec``: ``build_backbone`` loads and prepares the LM
(``adapters``), and ``state_dict`` / ``load_state_dict`` keep only what trains, the backbone's
identity travelling as a fingerprint, so checkpoints stay small and refuse another backbone.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from recbole_cllm4rec.backbone import load_backbone, reinitialize
from recbole_cllm4rec.ids import IdLayout
from recbole_cllm4rec.model.adapters import (
    add_lora,
    autocast_dtype,
    backbone_fingerprint,
    block_list_name,
    layer_view,
    set_dropout,
    truncate_layers,
)


class FrozenLM:
    """Mixin of a RecBole model (before ``GeneralRecommender`` in its bases) around a frozen LM."""

    def build_backbone(self, config) -> None:
        """The frozen LM (``llm``): optionally random weights, fewer layers, dropout, LoRA adapters.

        Each side reads its own depth of the one backbone: the collaborative side (collaborative LM,
        finetuning, scoring) its first ``llm_layers`` blocks, the content LM its first
        ``content_layers`` (``~``: all). The word head was trained on the last layer: read off an early
        one it scores item text worse than a uniform guess (``docs/results.md``), so the content LM
        reads deeper than the collaborative side needs to.
        """
        self.llm = config["llm"]
        self.backbone, self.tokenizer = load_backbone(self.llm, config["llm_cache_dir"])
        if not config["llm_pretrained"]:
            reinitialize(self.backbone, config["seed"])
        depths = {"collaborative": config["llm_layers"], "content": config["content_layers"]}
        if None not in depths.values():
            truncate_layers(self.backbone, max(depths.values()))
        n_blocks = len(getattr(self.backbone.base_model, block_list_name(self.backbone)))
        self.depths = {side: min(depth or n_blocks, n_blocks) for side, depth in depths.items()}
        self.backbone.requires_grad_(False)
        self.llm_dropout = config["llm_dropout"] or 0.0
        if self.llm_dropout:
            set_dropout(self.backbone, self.llm_dropout)
        # The backbone's identity travels in every checkpoint (the weights themselves do not), with
        # each side's depth where they differ.
        sides = "" if len(set(self.depths.values())) == 1 else repr(sorted(self.depths.items()))
        self.register_buffer("backbone_fingerprint", backbone_fingerprint(self.backbone, sides))
        self.backbone_learning_rate = config["backbone_learning_rate"]
        if config["lora_rank"]:
            add_lora(self.backbone, config["lora_rank"], config["lora_alpha"], config["lora_targets"], config["seed"])
        self.autocast_dtype = autocast_dtype(config["llm_dtype"], config["device"])
        # the bodies are views of the backbone made after every change to it (LoRA), not submodules:
        # nothing of theirs enters a checkpoint. A view's own `training` flag stays False (only
        # gradient checkpointing reads it). torch.compile: shapes vary, so dynamic; minutes up front
        views = {side: layer_view(self.backbone, depth) for side, depth in self.depths.items()}
        compiled = config["llm_compile"]
        self.bodies = {side: torch.compile(v.forward, dynamic=True) if compiled else v.forward for side, v in views.items()}
        self.layout = IdLayout(self.backbone.get_input_embeddings().num_embeddings, self.n_users, self.n_items)

    def autocast(self):
        """The backbone's precision context (``llm_dtype``); a no-op for fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.backbone_fingerprint.device.type, dtype=self.autocast_dtype)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters that train (LoRA adapters); empty when the LM is frozen, as in the paper."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        """The frozen backbone runs in eval mode (no dropout noise on weights that never train) unless
        ``llm_dropout`` asks for dropout while training, as the public code leaves GPT-2's on."""
        super().train(mode)
        self.backbone.train(mode and self.llm_dropout > 0)
        return self

    def state_dict(self, *args, **kwargs):
        """What trains, without the frozen backbone (reloaded from ``llm``), so checkpoints stay small."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        trains = {prefix + name for name, p in self.named_parameters() if p.requires_grad}
        for key in [k for k in state if k.startswith(prefix + "backbone.") and k not in trains]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load the ID tables; refuse a checkpoint trained on another backbone."""
        saved = state_dict.get("backbone_fingerprint")
        if saved is not None and not torch.equal(saved.cpu(), self.backbone_fingerprint.cpu()):
            raise RuntimeError(
                f"This checkpoint was trained with a different backbone than llm={self.llm!r} with llm_layers / "
                f"content_layers reading {self.depths['collaborative']} / {self.depths['content']} layers (the "
                "fingerprints differ): load it with the backbone and depths it was trained with."
            )
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        trains = {name for name, p in self.named_parameters() if p.requires_grad}
        missing = [k for k in result.missing_keys if not k.startswith("backbone.") or k in trains]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"CLLM4Rec checkpoint does not match: missing {missing}, unexpected {result.unexpected_keys}"
            )
        return result
