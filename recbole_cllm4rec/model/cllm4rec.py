r"""CLLM4Rec: Collaborative Large Language Model for Recommender Systems (Zhu et al., WWW 2024).

A frozen pretrained causal LM reads documents that mix words with user/item ID tokens (``ids``: the
token layout; ``documents``: every document). Only the ID token embeddings train, in two sets:

- collaborative (user, item): trained by the collaborative LM, whose main text is a user's items
  (``{user} has interacted with item_a item_b ...``) with a softmax over the item vocabulary only;
- content (user, item): trained by the content LM, whose main text is words (item descriptions,
  user profiles, reviews) with the LM's own softmax over the word vocabulary only.

Mutual regularization ties the two sets: each step adds
``lambda_c * sum ||e_self - stopgrad(e_other)||^2`` over the ID tokens of its batch (the public
code's sum; ``mutual_reg_reduction: mean`` divides by the batch's ID-token count, so the term no
longer grows with the batch and stays on the per-token scale of the LM losses).

Finetuning (recommendation-oriented) reads ``{user} has interacted with <visible items>, {user} will
interact with``, takes a state off the last layer (``readout``: the last token's, as the paper, or
pooled over the prompt), scores it with an item head tied to the collaborative item embeddings
(optionally plus an item bias), and fits a multinomial likelihood over all items (as Multi-VAE).
Recommending is one forward pass per user: a full ranking over items, no decoding, no hallucinated
items.

Where the defaults depart from the paper (each measured in ``docs/results.md``): the ID tables start
from an SVD of the training matrix, the item tables' last dimensions from the LM's own reading of each
item's text (the text start, ``model.starts``); the head also reads the prompt's item embeddings
around the frozen layers (the skip), and an item bias. Items without interactions: ``model.text_map``.

The stage schedule is ``trainer.CLLM4RecTrainer``'s: it calls the three losses below with users (or
content documents) packed to a token budget, where RecBole's interaction batches would split one
user's history over several batches and pad every prompt to the longest history of a random batch.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_cllm4rec.cache import cached_value, default_cache_dir, digest
from recbole_cllm4rec.batches import token_budget_batches
from recbole_cllm4rec.config_rules import Rule, check_config_values
from recbole_cllm4rec.distributed import Shard, own_rows
from recbole_cllm4rec.documents import Documents, content_documents, stored_history
from recbole_cllm4rec.model.frozen_lm import FrozenLM
from recbole_cllm4rec.model.item_softmax import ItemLogSumExp
from recbole_cllm4rec.model.starts import item_text_states, svd_start, text_start, trained_rows
from recbole_cllm4rec.model.text_map import COLD_ITEM_ROWS, ColdItemHead


class CLLM4Rec(FrozenLM, ColdItemHead, GeneralRecommender):
    input_type = InputType.POINTWISE
    # what each key of properties/CLLM4Rec.yaml accepts, refused before the backbone loads; grouped by
    # the construction step that reads it (the trainer's keys are CLLM4RecTrainer.CONFIG_RULES)
    CONFIG_RULES = {
        # build_backbone
        "llm_layers": Rule(int, low=1, optional=True),
        "content_layers": Rule(int, low=1, optional=True),
        "llm_dtype": Rule(str, choices=("auto", "float32", "bfloat16", "float16")),
        "llm_dropout": Rule(float, low=0, below=1, optional=True),
        "llm_compile": Rule(bool),
        "llm_pretrained": Rule(bool),
        "lora_rank": Rule(int, low=0),
        "lora_alpha": Rule(float, low=0),
        "backbone_learning_rate": Rule(float, low=0, optional=True),
        # build_id_tables
        "init_std": Rule(float, low=0, optional=True),
        "lambda_c": Rule(float, low=0),
        "mutual_reg_reduction": Rule(str, choices=("sum", "mean")),
        # build_documents (and documents.Documents)
        "max_seq_len": Rule(int, low=8),
        "scoring_max_seq_len": Rule(int, low=8, optional=True),
        "item_reorder": Rule(bool),
        "mask_ratio": Rule(float, low=0, below=1),
        # init_id_tables
        "item_init": Rule(str, choices=("random", "svd")),
        "text_start_dims": Rule(int, low=0),
        "text_start_share": Rule(float, low=0, below=1),
        # build_item_head
        "readout": Rule(str, choices=("last", "mean", "items")),
        "readout_skip": Rule(float, low=0, optional=True),
        "readout_state_weight": Rule(float, low=0),
        "item_bias": Rule(bool),
        "visible_target_weight": Rule(float, low=0, high=1),
        "eval_batch_tokens": Rule(int, low=1),
        "item_chunk_size": Rule(int, low=1),
        # build_cold_items
        "cold_item_rows": Rule(str, choices=COLD_ITEM_ROWS),
        "text_map_ridge": Rule(float, low=0), "text_map_bias_shift": Rule(float), "text_map_pseudo_interactions": Rule(float, low=0),
    }

    # a key that did not exist when a checkpoint was saved -> the key whose value it had then
    # (before content_layers, the content LM read llm_layers)
    EARLIER_KEYS = {"content_layers": "llm_layers"}

    def __init__(self, config, dataset, *, start_tables: bool = True):
        """``start_tables=False``: the ID tables are about to be loaded from a checkpoint, so their
        starts are skipped (the text start reads every item text through all 30 layers: on
        amazon-beauty-paper minutes of CPU that the loaded tables overwrite)."""
        check_config_values(config, self.CONFIG_RULES)
        super().__init__(config, dataset)
        self.build_backbone(config)
        self.build_id_tables(config)
        self.build_documents(config, dataset)
        self.init_id_tables(config, start_tables)
        self.build_item_head(config)
        self.build_cold_items(config, dataset)

    # ------------------------------------------------------------------ construction
    def build_id_tables(self, config) -> None:
        """The two sets of ID token embeddings, the only parameters that train (with the item bias)."""
        word_embeddings = self.backbone.get_input_embeddings()
        dim, users, items = word_embeddings.embedding_dim, self.n_users, self.n_items
        self.collaborative_user_emb, self.collaborative_item_emb = nn.Embedding(users, dim), nn.Embedding(items, dim)
        self.content_user_emb, self.content_item_emb = nn.Embedding(users, dim), nn.Embedding(items, dim)
        # N(0, 0.02) as the paper code: at the word embeddings' own scale the tied item head would
        # start with logits so large that the collaborative loss begins far above a uniform guess
        self.init_std = config["init_std"] or word_embeddings.weight.std().item()
        # from the config seed alone: loading the backbone may consume the global random state differently
        generator = torch.Generator().manual_seed(config["seed"])
        for table in self.id_tables():
            nn.init.normal_(table.weight, mean=0.0, std=self.init_std, generator=generator)
        self.lambda_c = config["lambda_c"]
        self.mutual_reg_mean = config["mutual_reg_reduction"] == "mean"

    def build_documents(self, config, dataset) -> None:
        """Training histories and text, as the documents every pass reads (``documents.Documents``)."""
        history = stored_history(dataset, config["seed"])
        self.cache_dir = Path(config["llm_cache_dir"] or default_cache_dir())
        content = content_documents(config, dataset, self.tokenizer, self.layout, history, self.cache_dir / "corpus")
        self._item_text_states = None  # item_text_states, once read
        self.documents = Documents(config, self.layout, self.tokenizer, history, content)
        # the words a plain prompt has where the ID tokens stand (content_lm_loss(plain=True))
        self.plain_words = tuple(self.tokenizer(w, add_special_tokens=False).input_ids[0] for w in ("user", "item"))
        context = getattr(self.backbone.config, "max_position_embeddings", None)
        caps = {"max_seq_len": self.documents.max_seq_len, "scoring_max_seq_len": self.documents.scoring_max_seq_len}
        for key, value in caps.items():
            if context is not None and value > context:
                raise ValueError(f"{key}={value} exceeds the backbone's context of {context} tokens")

    def init_id_tables(self, config, start_tables: bool) -> None:
        """``item_init: svd`` starts both sides at the SVD (and the text start) when ``start_tables``;
        and which rows each side trains (``starts.trained_rows``).

        Mutual regularization pulls only toward rows the other side trains (``collaborative_trained``
        / ``content_trained``, indexed by ``IdLayout.id_rows``): a random untrained row is noise. With
        the SVD start every row is an anchor (its factor, or the random start both sides share).
        """
        collaborative_rows, content_rows = trained_rows(self.layout, self.documents.history_items, self.documents.content)
        self.register_buffer("collaborative_trained", collaborative_rows, persistent=False)
        if config["item_init"] == "svd":
            content_rows[:] = True
            if start_tables:
                self.init_from_svd(self.documents.history_items, config["seed"])
            if start_tables and config["text_start_dims"] and config["text_start_share"]:
                self.init_from_text(config["text_start_dims"], config["text_start_share"], config["seed"], config["eval_batch_tokens"])
        self.register_buffer("content_trained", content_rows, persistent=False)

    @torch.no_grad()
    def init_from_svd(self, history: torch.Tensor, seed: int) -> None:
        """Both sides' tables start at the SVD of the training matrix (``starts.svd_start``; as E4SRec
        starts from CF embeddings): a start the frozen layers cannot give random rows."""
        svd_start([self.tables("collaborative"), self.tables("content")], history, self.init_std, seed)

    @torch.no_grad()
    def init_from_text(self, dims: int, share: float, seed: int, max_tokens: int) -> None:
        """The text start (``starts.text_start``): the item tables' last ``dims`` dimensions (the SVD's
        weakest factors) take the LM's own reading of each item's text (``item_text_states``).

        A history's mean item embedding . an item (the skip) then adds the two items' text similarity
        as the LM reads it to their collaborative similarity, which helps most where interactions are
        few: sparse users and tail items (``docs/results.md``)."""
        item_tables = [self.tables(side)[1].weight for side in ("collaborative", "content")]
        text_start(item_tables, self.item_text_states(max_tokens), dims, share, seed)

    @torch.no_grad()
    def item_text_states(self, max_tokens: int) -> torch.Tensor:
        """``[n_items, hidden]``: each item's text as the plain prompt, read by ``text_states``
        (``starts.item_text_states``), ``max_tokens`` padded tokens per forward pass; once per backbone, depth,
        precision, catalog size (corpora without text look alike) and corpus, cached on disk and in memory."""
        if self._item_text_states is None:
            content, dim = self.documents.content, self.collaborative_item_emb.embedding_dim
            key = digest(
                self.backbone_fingerprint.cpu().numpy().tobytes(), type(self).__name__, str(self.autocast_dtype),
                str(self.depths["content"]), str(max_tokens), str((self.layout.n_items, dim)), content.ids.numpy().tobytes(),
            )
            build = lambda: item_text_states(content, self.layout, self.plain_words, self.read_text, dim, max_tokens)  # noqa: E731
            path = self.cache_dir / "text_states" / f"{key}.pt"
            self._item_text_states = cached_value(path, build, "the LM's reading of the item texts")
        return self._item_text_states

    def read_text(self, words: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """``text_states`` of plain-word documents on the model's device, returned on the CPU."""
        return self.text_states(words.to(self.device), length.to(self.device)).cpu()

    def text_states(self, words: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """What the text start reads of plain-word documents: the content side's last-layer states."""
        return self.hidden_states(words, length, "content")

    def build_item_head(self, config) -> None:
        """What the item head reads (``readout``, the skip) and adds (the item bias); the loss's scale."""
        self.readout = config["readout"]
        self.readout_skip = float(config["readout_skip"] or 0.0)
        if self.readout_skip and self.readout == "last":
            raise ValueError("readout_skip needs a pooling readout (mean, items), not readout='last': set readout_skip=0")
        self.readout_state_weight = float(config["readout_state_weight"])  # only beside the skip
        self.visible_target_weight = float(config["visible_target_weight"])
        self.item_chunk_size = config["item_chunk_size"]
        self.eval_batch_tokens = config["eval_batch_tokens"]
        self.has_item_bias = bool(config["item_bias"])
        if self.has_item_bias:
            # starts at the centred log training popularity: a bias learns at the learning rate's
            # pace (about 0.1 per epoch), far from the few nats that separate head and tail items
            self.item_bias = nn.Embedding(self.n_items, 1)
            history = self.documents.history_items
            log_pop = (torch.bincount(history[history > 0], minlength=self.n_items).float() + 1).log()
            with torch.no_grad():
                self.item_bias.weight[:, 0] = log_pop - log_pop[1:].mean()

    # ------------------------------------------------------------------ parameters and checkpoints
    def id_tables(self) -> list[nn.Embedding]:
        return [self.collaborative_user_emb, self.collaborative_item_emb, self.content_user_emb, self.content_item_emb]

    def tables(self, side: str) -> tuple[nn.Embedding, nn.Embedding]:
        """(user, item) embedding tables of one side: ``collaborative`` or ``content``."""
        if side == "collaborative":
            return self.collaborative_user_emb, self.collaborative_item_emb
        if side == "content":
            return self.content_user_emb, self.content_item_emb
        raise ValueError(side)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The only parameters that train: the four ID tables, the item bias, LoRA adapters."""
        bias = [self.item_bias.weight] if self.has_item_bias else []
        return [table.weight for table in self.id_tables()] + bias + self.backbone_parameters()

    def optimizer_groups(self, learning_rate: float) -> list[dict]:
        """Parameter groups: the backbone's adapters at ``backbone_learning_rate`` (default: the stage's)."""
        inside = self.backbone_parameters()
        rest = [p for p in self.trainable_parameters() if not any(p is a for a in inside)]
        groups = [{"params": rest, "lr": learning_rate}]
        if inside:
            groups.append({"params": inside, "lr": self.backbone_learning_rate or learning_rate})
        return groups

    # ------------------------------------------------------------------ soft+hard prompt -> backbone
    def embed(self, ids: torch.Tensor, side: str) -> torch.Tensor:
        """Embeddings of an extended-vocabulary id tensor: words from the frozen LM, IDs from ``side``."""
        user_emb, item_emb = self.tables(side)
        words, users, items = self.layout.split(ids)
        words, users, items = self.backbone.get_input_embeddings()(words), user_emb(users), item_emb(items)
        is_user, is_item = self.layout.is_user(ids).unsqueeze(-1), self.layout.is_item(ids).unsqueeze(-1)
        return torch.where(is_user, users, torch.where(is_item, items, words))

    def hidden_states(
        self, ids: torch.Tensor, length: torch.Tensor, side: str, embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last-layer hidden states (fp32) of right-padded documents ``ids[:, :length]``, read by ``side``'s
        ID tables through ``side``'s depth (``embeds``: their input embeddings, when the caller has them)."""
        attention_mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < length[:, None]
        embeds = self.embed(ids, side) if embeds is None else embeds
        with self.autocast():
            out = self.bodies[side](inputs_embeds=embeds, attention_mask=attention_mask.long(), use_cache=False)
        return out.last_hidden_state.float()

    # ------------------------------------------------------------------ stage 1: pretraining losses
    def collaborative_lm_loss(self, users: torch.Tensor, shard: Shard = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-item loss over the item vocabulary, and the mutual regularization toward content."""
        batch_ids, length, items = self.documents.collaborative(users)
        n_targets = (items > 0).sum().clamp(min=1)
        ids, length, items = own_rows(shard, batch_ids, length, items)
        ids, items = ids[:, : int(length.max())], items[:, : int(items.gt(0).sum(1).max())]
        hidden = self.hidden_states(ids, length, "collaborative")
        p = self.documents.prompt_length("collaborative")
        # the state at position p-1+k predicts the k-th item
        valid = items > 0
        predictors = hidden[:, p - 1 : p - 1 + items.shape[1]][valid]
        targets = self.collaborative_item_emb(items[valid])
        log_partition = ItemLogSumExp.apply(predictors, self.collaborative_item_emb.weight, self.item_chunk_size)
        loss = (log_partition - (predictors * targets).sum(dim=1)).sum() / n_targets
        return loss, self.mutual_regularization(ids, "collaborative", batch_ids)

    def content_lm_loss(
        self, docs: torch.Tensor, shard: Shard = (0, 1), regularize: bool = True, plain: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-word loss over the word vocabulary on the main text of content documents ``docs``.

        ``plain``: the frozen LM's own loss on the same text with the words ``user`` / ``item`` in
        place of the ID tokens (no regularization): what the ID tokens must beat to carry anything.
        """
        content, docs = self.documents.content, docs.cpu()
        n_targets = (content.length[docs] - content.prompt_length[docs]).sum().clamp(min=1)
        batch_ids = content.ids[docs]
        (docs,) = own_rows(shard, docs)
        length = content.length[docs].to(self.device)
        prompt_length = content.prompt_length[docs].to(self.device)
        ids = content.ids[docs][:, : int(length.max())].to(self.device).long()
        if plain:
            ids, regularize = self.layout.as_words(ids, *self.plain_words), False
        hidden = self.hidden_states(ids, length, "content")
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
        predicts = (positions >= prompt_length[:, None] - 1) & (positions < length[:, None] - 1)
        targets = ids[:, 1:][predicts[:, :-1]]
        with self.autocast():  # the word head is a 49k-row matmul: as costly as several layers
            logits = self.backbone.get_output_embeddings()(hidden[predicts]).float()
        loss = F.cross_entropy(logits[:, : self.layout.vocab_size], targets, reduction="sum") / n_targets.to(self.device)
        reg = self.mutual_regularization(ids, "content", batch_ids) if regularize else loss.new_zeros(())
        return loss, reg

    def mutual_regularization(self, ids: torch.Tensor, side: str, batch_ids: torch.Tensor) -> torch.Tensor:
        """``lambda_c * sum ||e_side - stopgrad(e_other)||^2`` over the ID tokens (with repeats) in ``ids``.

        Only toward rows the other side trains or that start from the SVD: a row without any
        document on the other side stays at its init, and a random one would only add noise. With
        the frozen content tables of finetuning, it is a pull toward where the collaborative tables
        started (the SVD, or pretraining's end). With ``mutual_reg_reduction: mean`` the sum is
        divided by the number of ID tokens in ``batch_ids``, the whole batch's documents (``ids``
        may be this rank's share).
        """
        other = "content" if side == "collaborative" else "collaborative"
        trained = self.content_trained if other == "content" else self.collaborative_trained
        id_ids = ids[self.layout.is_id(ids)]
        id_ids = id_ids[trained[self.layout.id_rows(id_ids)]]
        mine = self.embed(id_ids, side)
        with torch.no_grad():
            theirs = self.embed(id_ids, other)
        reg = ((mine - theirs) ** 2).sum()
        if self.mutual_reg_mean:
            reg = reg / self.layout.is_id(batch_ids).sum().clamp(min=1).to(reg.device)
        return self.lambda_c * reg

    # ------------------------------------------------------------------ stage 2: the item head
    def head_input_parts(self, ids: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two terms the item head reads from recommendation prompts, each weighted as it enters
        the sum: the layers' readout state (x ``readout_state_weight`` beside the skip, x 1 without
        it) and the skip, ``readout_skip / init_std`` x the mean input embedding of the prompt's item
        tokens (0 without it).

        Why the skip: the frozen layers normalize every input, so an ID embedding enters attention
        and the MLPs at the scale of a word and their response swamps it in the residual stream: even
        one layer loses most of what an SVD-initialized table ranks by itself (``docs/results.md``).
        The skip carries the embeddings to the head as they are; the layers' states add what the LM
        makes of the prompt.
        """
        embeds = self.embed(ids, "collaborative")
        states = self.readout_state(self.hidden_states(ids, length, "collaborative", embeds), ids, length)
        if not self.readout_skip:
            return states, torch.zeros_like(states)
        # the skip pools the item tokens only: a word's embedding is the same in every prompt
        items = self.layout.is_item(ids)
        pooled = (items[:, :, None] * embeds.float()).sum(1) / items.sum(1, keepdim=True).clamp(min=1).float()
        return self.readout_state_weight * states, self.readout_skip / self.init_std * pooled

    def head_input(self, ids: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """What the item head scores, one row per recommendation prompt (``head_input_parts`` summed)."""
        states, skip = self.head_input_parts(ids, length)
        return states + skip

    def readout_state(self, hidden: torch.Tensor, ids: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """The state the item head reads off each recommendation prompt's last-layer states (``readout``).

        ``last`` (paper): the last token's. A frozen LM's last states are nearly parallel across
        users, and a long prompt dilutes them further; pooling keeps the ID tokens' own states,
        which still carry their embeddings through the residual stream: ``mean`` over the document,
        ``items`` over the visible item tokens and the last token.
        """
        if self.readout == "last":
            return hidden[torch.arange(len(length), device=ids.device), length - 1]
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
        inside = positions < length[:, None]
        if self.readout == "items":
            inside = inside & (self.layout.is_item(ids) | (positions == length[:, None] - 1))
        weights = inside.float() / inside.sum(dim=1, keepdim=True)
        return (weights[:, :, None] * hidden).sum(dim=1)

    def item_head(self, head_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, rows) of the item head, tied to the collaborative item embeddings:
        ``logits = features @ rows.T``; with ``item_bias`` the constant feature 1 meets each item's
        bias. Scoring (eval mode) reads ``scoring_rows``: cold items as ``cold_item_rows`` says."""
        rows = self.head_rows() if self.training else self.scoring_rows()
        if not self.has_item_bias:
            return head_input, rows
        return torch.cat([head_input, head_input.new_ones(len(head_input), 1)], dim=1), rows

    def recommendation_loss(
        self, users: torch.Tensor, users_per_batch: float, shard: Shard = (0, 1)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted multinomial loss of the masked-history prompt over all items, and the regularization.

        Divided by ``users_per_batch``, a constant of the trainer's batching: every user weighs the
        same wherever the packer puts them. A target weighs 1 if the prompt hides it, ``visible_target_weight`` if it shows it.
        The regularization covers the prompt's ID tokens and the hidden target items.
        """
        batch_ids, length, target, masked = self.documents.recommendation(users, mask=True)
        batch_reg_ids = torch.cat([batch_ids.flatten(), self.layout.item_tokens(target[masked])])
        ids, length, target, masked = own_rows(shard, batch_ids, length, target, masked)
        weight = torch.where(masked, 1.0, self.visible_target_weight).masked_fill(target == 0, 0.0)
        ids = ids[:, : int(length.max())]
        features, head = self.item_head(self.head_input(ids, length))
        # -sum_j w_j log softmax_j = (sum_j w_j) * logsumexp - sum_j w_j * logit_j
        target_logits = torch.bmm(F.embedding(target, head), features[:, :, None]).squeeze(2)
        log_partition = ItemLogSumExp.apply(features, head, self.item_chunk_size)
        nll = weight.sum(dim=1) * log_partition - (weight * target_logits).sum(1)
        reg_ids = torch.cat([ids.flatten(), self.layout.item_tokens(target[masked])])
        return nll.sum() / users_per_batch, self.mutual_regularization(reg_ids, "collaborative", batch_reg_ids)

    # ------------------------------------------------------------------ RecBole API
    def calculate_loss(self, interaction):
        """RecBole's interface, for callers holding an interaction batch: the finetuning loss of its
        users, their mean (the trainer packs users by tokens and calls ``recommendation_loss`` itself)."""
        users = interaction[self.USER_ID].unique()
        users = users[self.documents.history_len[users] > 0]
        loss, reg = self.recommendation_loss(users, max(1.0, float(len(users))))
        return loss + reg

    def item_logits(self, head_input: torch.Tensor) -> torch.Tensor:
        """Scores of every item from the item head; padding item 0 excluded."""
        features, weight = self.item_head(head_input)
        logits = features @ weight.T
        logits[..., 0] = float("-inf")
        return logits

    def scoring_batches(self, users: torch.Tensor):
        """(positions in ``users``, head inputs) of the full-history recommendation prompts, one pack
        of similar-length prompts (``eval_batch_tokens``) at a time."""
        lengths = self.documents.lengths("scoring", users).cpu()
        for chunk in token_budget_batches(lengths, self.eval_batch_tokens, shuffle=False):
            chunk = chunk.to(users.device)
            ids, length, _, _ = self.documents.recommendation(users[chunk], mask=False)
            yield chunk, self.head_input(ids, length)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """Scores of all items for a batch of users: one forward pass per pack of similar-length prompts.

        RecBole's evaluation batches come in user order, with history lengths all over the place;
        packing by length into ``eval_batch_tokens`` keeps padding small and batches large.
        """
        users = interaction[self.USER_ID]
        scores = torch.empty(len(users), self.n_items, device=users.device)
        for chunk, head_input in self.scoring_batches(users):
            scores[chunk] = self.item_logits(head_input)
        return scores

    def predict(self, interaction) -> torch.Tensor:
        """Scores of (user, item) rows (sampled evaluation: ``uni100``...): one prompt per distinct user."""
        users, row_user = interaction[self.USER_ID].unique(return_inverse=True)
        scores = self.full_sort_predict({self.USER_ID: users})
        return scores[row_user, interaction[self.ITEM_ID]]
