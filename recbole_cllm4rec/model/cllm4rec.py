r"""CLLM4Rec: Collaborative Large Language Model for Recommender Systems (Zhu et al., WWW 2024).

A frozen pretrained causal LM reads documents that mix words with user/item ID tokens. Only the ID
token embeddings train, in two sets:

- collaborative (user, item): trained by the collaborative LM, whose main text is a user's items
  (``{user} has interacted with item_a item_b ...``) with a softmax over the item vocabulary only;
- content (user, item): trained by the content LM, whose main text is words (item descriptions,
  user profiles, reviews) with the LM's own softmax over the word vocabulary only.

Mutual regularization ties the two sets: each step adds
``lambda_c * sum ||e_self - stopgrad(e_other)||^2`` over the ID tokens of its batch (the public
code's sum; ``mutual_reg_reduction: mean`` divides by the batch's ID-token count, so the term no
longer grows with the batch and stays on the per-token scale of the LM losses). Finetuning
(recommendation-oriented) reads ``{user} has interacted with <visible items>, {user} will interact
with``, reads a state off the last layer (``readout``: the last token's, as the paper, or pooled
over the prompt's item tokens), scores it with an item head tied to the collaborative item
embeddings (optionally plus an item bias), and fits a multinomial likelihood over all items (as
Multi-VAE). Recommending is one forward pass per user: a full ranking over items, no decoding, no
hallucinated items.

The stage schedule (content warm-up, alternating pretraining, finetuning) is in
``recbole_cllm4rec.trainer.CLLM4RecTrainer``.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_cllm4rec.backbone import default_cache_dir, load_backbone, reinitialize
from recbole_cllm4rec.corpus import (
    ContentDocuments,
    SoftHardPrompt,
    cached_content_documents,
    field_texts,
    review_texts,
    token_budget_batches,
)
from recbole_cllm4rec.validation import Rule, check_config_values


# What the item head reads: the last token's state (paper), the mean over the document's states, the
# mean over the visible item tokens' states (and the last token's), or attention pooling with a
# learned query over the document.
READOUTS = ("last", "mean", "items", "attention", "queries")


def stored_history(dataset, seed: int) -> torch.Tensor:
    """Each user's training items ``[n_users, max_len]`` (0-padded), without repeats, most recent first.

    Most recent by the dataset's time field when it has one (a re-interaction counts at its latest
    time), otherwise a random order drawn from ``seed``. Where a prompt has room for only part of a
    history, it shows the first items: at scoring the most recent ones (or a random subset, like
    the subsets finetuning shows), never an order RecBole happened to produce.
    """
    if dataset.time_field and dataset.time_field in dataset.inter_feat:
        items, keys, _ = dataset.history_item_matrix(value_field=dataset.time_field)  # one call: aligned
        items, keys = items.long(), keys.double()
    else:
        items = dataset.history_item_matrix()[0].long()
        keys = torch.rand(items.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    keys = keys.masked_fill(items == 0, float("-inf"))
    order = keys.argsort(dim=1, descending=True, stable=True)  # most recent first, padding last
    items = items.gather(1, order)
    # drop repeats, keeping each item's first (most recent) place
    sentinel = int(items.max()) + 1
    by_item = torch.where(items > 0, items, sentinel).sort(dim=1, stable=True)
    repeat_sorted = torch.zeros_like(items, dtype=torch.bool)
    repeat_sorted[:, 1:] = by_item.values[:, 1:] == by_item.values[:, :-1]
    repeat = torch.zeros_like(repeat_sorted).scatter_(1, by_item.indices, repeat_sorted)
    items = items.masked_fill(repeat, 0)
    keep_order = (items == 0).long().argsort(dim=1, stable=True)  # compact: items first, in order
    return items.gather(1, keep_order)


def backbone_fingerprint(backbone: nn.Module) -> torch.Tensor:
    """A BLAKE2b digest of the backbone's weights (names, shapes, bytes) as a uint8 tensor."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8).clone()


def block_list_name(backbone: nn.Module) -> str:
    """The attribute of the backbone's base model that holds its transformer blocks."""
    name = next((n for n in ("layers", "h") if isinstance(getattr(backbone.base_model, n, None), nn.ModuleList)), None)
    if name is None:
        raise ValueError(f"cannot find the transformer blocks of {type(backbone.base_model).__name__}")
    return name


def truncate_layers(backbone: nn.Module, n_layers: int) -> None:
    """Keep at most the first ``n_layers`` transformer blocks (then the final norm): a cheaper backbone.

    A backbone with no more than ``n_layers`` blocks is kept whole. The fingerprint is taken
    afterwards, so checkpoints record how many layers they were trained with.
    """
    name = block_list_name(backbone)
    layers = getattr(backbone.base_model, name)
    if n_layers < 1:
        raise ValueError(f"llm_layers={n_layers}: keep at least one layer (~ keeps all {len(layers)})")
    if n_layers >= len(layers):
        return
    setattr(backbone.base_model, name, layers[:n_layers])
    backbone.config.num_hidden_layers = n_layers
    if getattr(backbone.config, "layer_types", None):
        backbone.config.layer_types = backbone.config.layer_types[:n_layers]


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a transformer block is called with (positionally or by name)."""
    return args[0] if args else kwargs["hidden_states"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (Linux ``/proc/cpuinfo`` flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def set_dropout(backbone: nn.Module, p: float) -> None:
    """Set every dropout probability inside the backbone to ``p`` (``nn.Dropout`` modules and the
    attention-probability dropout of LLaMA-style attention, which is a float attribute)."""
    for module in backbone.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p


def add_lora(backbone: nn.Module, rank: int, alpha: float, targets: list[str], seed: int) -> None:
    """LoRA adapters (``peft``) on the ``targets`` linear layers of the frozen backbone, in place.

    The only backbone weights that train; the pretrained ones stay frozen and out of checkpoints.
    The adapters' random halves are drawn from ``seed`` (the other halves start at zero, so the
    backbone starts unchanged).
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:
        raise ImportError("lora_rank needs peft: pip install peft (or the [lora] extra)") from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0), backbone)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_("lora_" in name)


def tune_norms(backbone: nn.Module) -> None:
    """Layer-norm tuning: the weights of the backbone's normalization layers (each block's two RMSNorms and
    the final norm) train, everything else stays frozen. A few thousand parameters that rescale what
    each layer reads, so the layers can pass on more of the ID embeddings."""
    for module in backbone.modules():
        if "norm" in type(module).__name__.lower():
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(True)


class ItemLogSumExp(torch.autograd.Function):
    """``log sum_{i >= 1} exp(h . e_i)`` per row of ``hidden``, item 0 (padding) excluded.

    Computed over chunks of ``chunk_size`` items, and recomputed chunk by chunk in backward, so the
    ``[tokens, n_items]`` logits never exist whole: memory grows with the item table, not with
    tokens x items (a million-item catalog trains in a few GiB).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, chunk_size: int) -> torch.Tensor:
        lse = hidden.new_full((hidden.shape[0],), float("-inf"))
        for start in range(1, weight.shape[0], chunk_size):
            lse = torch.logaddexp(lse, (hidden @ weight[start : start + chunk_size].T).logsumexp(dim=1))
        ctx.save_for_backward(hidden, weight, lse)
        ctx.chunk_size = chunk_size
        return lse

    @staticmethod
    def backward(ctx, grad_lse: torch.Tensor):
        hidden, weight, lse = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for start in range(1, weight.shape[0], ctx.chunk_size):
            chunk = weight[start : start + ctx.chunk_size]
            # d lse / d logits = softmax; recomputed here instead of stored
            probs = torch.exp(hidden @ chunk.T - lse[:, None]) * grad_lse[:, None]
            if grad_hidden is not None:
                grad_hidden.addmm_(probs, chunk)
            if grad_weight is not None:
                grad_weight[start : start + ctx.chunk_size] = probs.T @ hidden
        return grad_hidden, grad_weight, None


class CLLM4Rec(GeneralRecommender):
    input_type = InputType.POINTWISE
    # what each key of properties/CLLM4Rec.yaml accepts: refused before the backbone loads
    CONFIG_RULES = {
        "llm_layers": Rule(int, low=1, optional=True),
        "llm_dtype": Rule(str, choices=("auto", "float32", "bfloat16", "float16")),
        "llm_dropout": Rule(float, low=0, below=1, optional=True),
        "llm_compile": Rule(bool),
        "llm_pretrained": Rule(bool),
        "lora_rank": Rule(int, low=0),
        "lora_alpha": Rule(float, low=0),
        "llm_norm_tuning": Rule(bool),
        "deep_prompt_tokens": Rule(int, low=0),
        "backbone_learning_rate": Rule(float, low=0, optional=True),
        "init_std": Rule(float, low=0, optional=True),
        "item_init": Rule(str, choices=("random", "text", "svd", "ridge")),
        "init_ridge": Rule(float, low=0, optional=True),
        "max_seq_len": Rule(int, low=8),
        "scoring_max_seq_len": Rule(int, low=8, optional=True),
        "content_warmup_epochs": Rule(int, low=0),
        "pretrain_epochs": Rule(int, low=0),
        "pretrain_learning_rate": Rule(float, low=0),
        "lambda_c": Rule(float, low=0),
        "mutual_reg_reduction": Rule(str, choices=("sum", "mean")),
        "item_reorder": Rule(bool),
        "mask_ratio": Rule(float, low=0, below=1),
        "learning_rate_decay": Rule(float, low=0, high=1),
        "visible_target_weight": Rule(float, low=0, high=1),
        "readout": Rule(str, choices=READOUTS),
        "readout_queries": Rule(int, low=1),
        "readout_skip": Rule(float, low=0, optional=True),
        "readout_state_weight": Rule(float, low=0),
        "readout_skip_exponent": Rule(float, low=0, high=1),
        "item_bias": Rule(bool),
        "item_head": Rule(str, choices=("tied", "standardized", "untied")),
        "head_calibration_users": Rule(int, low=1),
        "finetune_content": Rule(bool),
        "train_batch_tokens": Rule(int, low=1),
        "eval_batch_tokens": Rule(int, low=1),
        "item_chunk_size": Rule(int, low=1),
    }

    def __init__(self, config, dataset):
        check_config_values(config, self.CONFIG_RULES)
        super().__init__(config, dataset)
        self.llm = config["llm"]
        self.backbone, self.tokenizer = load_backbone(self.llm, config["llm_cache_dir"])
        if not config["llm_pretrained"]:
            reinitialize(self.backbone, config["seed"])
        if config["llm_layers"] is not None:
            truncate_layers(self.backbone, config["llm_layers"])
        self.backbone.requires_grad_(False)
        self.llm_dropout = config["llm_dropout"] or 0.0
        if self.llm_dropout:
            set_dropout(self.backbone, self.llm_dropout)
        # The backbone's identity travels in every checkpoint (the weights themselves do not).
        self.register_buffer("backbone_fingerprint", backbone_fingerprint(self.backbone))
        self.backbone_learning_rate = config["backbone_learning_rate"]
        if config["lora_rank"]:
            add_lora(self.backbone, config["lora_rank"], config["lora_alpha"], config["lora_targets"], config["seed"])
        if config["llm_norm_tuning"]:
            tune_norms(self.backbone)
        word_embeddings = self.backbone.get_input_embeddings()
        self.vocab_size = word_embeddings.num_embeddings
        dim = word_embeddings.embedding_dim

        self.max_seq_len = config["max_seq_len"]
        # scoring is forward-only: it can afford to show more of a long history than training does
        self.scoring_max_seq_len = config["scoring_max_seq_len"] or self.max_seq_len
        self.deep_prompt_tokens = config["deep_prompt_tokens"]  # in front of every document
        self.readout = config["readout"]
        self.readout_queries = config["readout_queries"] if self.readout == "queries" else 0  # after each prompt
        context = getattr(self.backbone.config, "max_position_embeddings", None)
        extra = self.deep_prompt_tokens + self.readout_queries
        for key in ("max_seq_len", "scoring_max_seq_len"):
            if context is not None and getattr(self, key) + extra > context:
                raise ValueError(
                    f"{key}={getattr(self, key)} (+ deep_prompt_tokens={self.deep_prompt_tokens}, readout_queries="
                    f"{self.readout_queries}) exceeds the backbone's context of {context} tokens"
                )
        self.lambda_c = config["lambda_c"]
        self.mutual_reg_mean = config["mutual_reg_reduction"] == "mean"
        self.mask_ratio = config["mask_ratio"]
        self.visible_target_weight = float(config["visible_target_weight"])
        self.readout_skip = float(config["readout_skip"] or 0.0)
        if self.readout_skip and self.readout not in ("mean", "items", "queries"):
            raise ValueError(
                f"readout_skip needs a pooling readout (mean, items, queries), not readout={self.readout!r}: set "
                "readout_skip=0"
            )
        self.readout_state_weight = float(config["readout_state_weight"])  # only beside the skip
        self.readout_skip_exponent = float(config["readout_skip_exponent"])
        self.item_reorder = config["item_reorder"]
        self.item_chunk_size = config["item_chunk_size"]
        self.standardized_head = config["item_head"] == "standardized"
        self.untied_head = config["item_head"] == "untied"
        # (rank, world size) under data parallelism: every rank builds the documents of the whole
        # batch (so random reordering and masking match one process) and runs its own rows; losses
        # are divided by the whole batch's target count, so gradients summed over ranks are exactly
        # the one-process gradients. Set by the trainer.
        self.shard = (0, 1)
        self.eval_batch_tokens = config["eval_batch_tokens"]
        self.autocast_dtype = self._autocast_dtype(config["llm_dtype"], config["device"])
        # torch.compile of the frozen body: shapes vary, so dynamic; compiling costs minutes up front
        body = self.backbone.base_model.forward
        self.backbone_body = torch.compile(body, dynamic=True) if config["llm_compile"] else body

        # The two sets of ID token embeddings: the only trainable parameters.
        self.collaborative_user_emb = nn.Embedding(self.n_users, dim)
        self.collaborative_item_emb = nn.Embedding(self.n_items, dim)
        self.content_user_emb = nn.Embedding(self.n_users, dim)
        self.content_item_emb = nn.Embedding(self.n_items, dim)
        # N(0, 0.02) as the paper code. (At the word embeddings' own scale, SmolLM2's 0.136, the tied
        # item head starts with logits so large that the collaborative loss begins near 21 nats.)
        init_std = config["init_std"] or word_embeddings.weight.std().item()
        self.init_std = init_std
        # drawn from the config seed alone: loading (or converting) the backbone may consume the global
        # random state differently from one run to the next
        generator = torch.Generator().manual_seed(config["seed"])
        for table in self.id_tables():
            nn.init.normal_(table.weight, mean=0.0, std=init_std, generator=generator)
        if self.readout == "attention":
            # the learned query of attention pooling; zero = mean pooling at the start
            self.readout_query = nn.Parameter(torch.zeros(dim))
        # an item bias in the head: always with the standardized head, optional with the tied one
        self.has_item_bias = self.standardized_head or bool(config["item_bias"])
        if self.has_item_bias:
            self.item_bias = nn.Embedding(self.n_items, 1)
            nn.init.zeros_(self.item_bias.weight)
        if self.standardized_head:
            # per-dimension mean and std of the recommendation prompt's last hidden state, measured
            # once when finetuning starts (calibrate_item_head): see item_head_inputs
            self.register_buffer("hidden_mean", torch.zeros(dim))
            self.register_buffer("hidden_std", torch.ones(dim))
            self.register_buffer("head_calibrated", torch.tensor(False))
        if config["item_init"] == "text" and not config["item_text_template"]:
            raise ValueError("item_init: text needs item_text_template (the text each item starts from)")

        # Soft+hard prompts, tokenized once.
        def prompt(template: str) -> SoftHardPrompt:
            return SoftHardPrompt(template, self.tokenizer, self.vocab_size, self.n_users)

        self.collaborative_prompt = prompt(config["collaborative_prompt"])
        before, sep, after = config["recommendation_prompt"].partition("{items}")
        if not sep:
            raise ValueError("recommendation_prompt must contain {items}")
        self.recommendation_prefix = prompt(before.rstrip())
        self.recommendation_suffix = prompt(after)
        # the recommendation prompt's word tokens, as the LM reads them (token 0 if it has none): where
        # the query tokens and the deep prompts start
        words = torch.cat([self.recommendation_prefix.word_ids(), self.recommendation_suffix.word_ids()])
        words = words if len(words) else torch.zeros(1, dtype=torch.long)
        if self.readout_queries:  # k query tokens after every recommendation prompt, each its last word
            start = word_embeddings.weight[words[-1:]].detach().float()
            self.readout_query_tokens = nn.Parameter(start.repeat(self.readout_queries, 1))
        if self.deep_prompt_tokens:  # k vectors in front of every document, at every block's input
            self.init_deep_prompts(words)

        # Training interactions only: the collaborative corpus and the finetuning/scoring histories.
        history = stored_history(dataset, config["seed"])
        self.register_buffer("history_items", history, persistent=False)
        self.register_buffer("history_len", (history > 0).sum(dim=1), persistent=False)
        # Which ID rows each side trains (a row with no document on a side never moves from its init):
        # mutual regularization pulls only toward trained rows. Index: extended id - vocab_size.
        collaborative_rows = torch.zeros(self.n_users + self.n_items, dtype=torch.bool)
        collaborative_rows[: self.n_users] = self.history_len.cpu() > 0
        collaborative_rows[self.n_users + history[history > 0]] = True
        self.register_buffer("collaborative_trained", collaborative_rows, persistent=False)

        # Content corpus: .item / .user text columns and reviews of training interactions, tokenized
        # once per dataset and backbone (cached under llm_cache_dir/corpus).
        sources = {}
        for source, n in (("item", self.n_items), ("user", self.n_users)):
            template = config[f"{source}_text_template"]
            if template:
                ids = torch.arange(1, n)
                texts = field_texts(dataset, source, template)
                sources[source] = (prompt(config[f"{source}_prompt"]).ids(**{f"{source}s": ids}), texts[1:])
                if source == "item" and config["item_init"] == "text":
                    self.init_items_from_text(texts, init_std)
        if config["review_text_field"]:
            users, items, texts = review_texts(dataset, config["review_text_field"], history)
            sources["review"] = (prompt(config["review_prompt"]).ids(users=users, items=items), texts)
        cache_dir = Path(config["llm_cache_dir"] or default_cache_dir()) / "corpus" if sources else None
        self.content_docs: ContentDocuments = cached_content_documents(
            sources, self.tokenizer, self.max_seq_len, cache_dir, config["dataset"]
        )
        content_rows = torch.zeros(self.n_users + self.n_items, dtype=torch.bool)
        in_docs = self.content_docs.ids[self.content_docs.ids >= self.vocab_size].long() - self.vocab_size
        content_rows[in_docs.unique()] = True
        if config["item_init"] in ("svd", "ridge"):
            ridge = config["init_ridge"] if config["item_init"] == "ridge" else None
            self.init_from_svd(history, init_std, config["seed"], ridge)
            # every content row starts at the SVD too: one no document trains is an anchor, not noise
            content_rows[:] = True
        self.register_buffer("content_trained", content_rows, persistent=False)
        if config["item_bias"]:
            # starts at the centred log training popularity: a bias learns at the learning rate's
            # pace (about 0.1 per epoch), far from the few nats that separate head and tail items
            with torch.no_grad():
                counts = torch.bincount(history[history > 0], minlength=self.n_items).float()
                log_pop = (counts + 1).log()
                self.item_bias.weight[:, 0] = log_pop - log_pop[1:].mean()
        if config["item_head"] == "untied":
            # its own output table, starting where the input table starts (the head stays a dot
            # product, but item-to-item scores need no longer be symmetric)
            self.output_item_emb = nn.Embedding(self.n_items, dim)
            self.output_item_emb.weight.data.copy_(self.collaborative_item_emb.weight.data)
        # Every user weighs the same in the finetuning loss, whichever batch the packer puts them in:
        # the loss is divided by a constant, the expected number of users per batch.
        train_users = torch.nonzero(self.history_len > 0).squeeze(1)
        mean_length = self.document_lengths("recommendation", train_users).float().mean().item() if len(train_users) else 1.0
        self.users_per_batch = max(1.0, config["train_batch_tokens"] / mean_length)

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _autocast_dtype(llm_dtype: str, device) -> torch.dtype | None:
        """The backbone's autocast dtype; ``None`` runs it in fp32.

        ``auto`` picks bf16 where the hardware computes it natively (CUDA; CPUs with avx512_bf16 or
        AMX), fp32 elsewhere. The ID tables, heads and losses always stay fp32.
        """
        if llm_dtype == "auto":
            native = torch.device(device).type == "cuda" or cpu_has_native_bf16()
            return torch.bfloat16 if native else None
        return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[llm_dtype]  # checked by CONFIG_RULES

    @torch.no_grad()
    def init_items_from_text(self, texts: list[str], init_std: float) -> None:
        """Both item tables start at the mean word embedding of each item's text, rescaled to ``init_std``.

        Items that share words (a brand, a genre) start close together, so the item head ranks them
        alike before any interaction is seen; both sides start equal, so mutual regularization
        starts at zero for items. Items without text keep their random init.
        """
        has_text = [i for i, text in enumerate(texts) if i > 0 and text]
        if not has_text:
            return
        pieces = self.tokenizer([" " + texts[i] for i in has_text], add_special_tokens=False)["input_ids"]
        flat = torch.tensor([t for piece in pieces for t in piece], dtype=torch.long)
        offsets = torch.tensor([0] + [len(piece) for piece in pieces[:-1]]).cumsum(0)
        words = self.backbone.get_input_embeddings().weight.detach().float().cpu()
        means = F.embedding_bag(flat, words, offsets, mode="mean")
        means = means - means.mean(dim=0)
        means = means / means.std() * init_std
        rows = torch.tensor(has_text)
        for table in (self.collaborative_item_emb, self.content_item_emb):
            table.weight[rows] = means.to(table.weight)

    @torch.no_grad()
    def init_from_svd(self, history: torch.Tensor, init_std: float, seed: int, ridge: float | None = None) -> None:
        """User and item tables start at a truncated SVD ``U S V^T`` of the training matrix (as E4SRec
        starts from CF embeddings), each rescaled to ``init_std``; both sides start equal, so mutual
        regularization starts at zero and never pulls toward random vectors.

        ``ridge`` None (``item_init: svd``): the matrix is ``D_u^-1/2 R D_i^-1/2`` (degree-normalized, so
        popular items do not take every factor); users get ``U sqrt(S)``, items ``V sqrt(S)``.
        ``ridge`` lambda (``item_init: ridge``): the raw 0/1 matrix ``R``, items get ``V sqrt(S^2 / (S^2 +
        lambda))``, so ``item . item`` is the ridge-regression item-item model ``(R^T R + lambda I)^-1 R^T R``
        at this rank, and a history's mean item embedding . an item ranks as that linear model does
        (alone, validation Recall@20 0.36 on ml-100k, 0.16 on amazon-beauty-paper: ``docs/results.md``);
        users get ``U S sqrt(S^2 / (S^2 + lambda))``.
        """
        dim = self.collaborative_item_emb.embedding_dim
        rows, cols = (history > 0).nonzero(as_tuple=True)
        items = history[rows, cols].cpu()
        rows = rows.cpu()
        if ridge is None:
            user_degree = torch.bincount(rows, minlength=self.n_users).clamp(min=1).float()
            item_degree = torch.bincount(items, minlength=self.n_items).clamp(min=1).float()
            values = (user_degree[rows] * item_degree[items]).rsqrt()
        else:
            values = torch.ones(len(rows))
        # sparse: memory grows with interactions, not users x items
        shape = (self.n_users, self.n_items)
        matrix = torch.sparse_coo_tensor(torch.stack([rows, items]), values, shape, check_invariants=True).coalesce()
        rank = min(dim, self.n_users - 1, self.n_items - 1)
        with torch.random.fork_rng(devices=[]):  # randomized SVD: drawn from the seed, global state untouched
            torch.manual_seed(seed)
            u, singular, v = torch.svd_lowrank(matrix, q=rank, niter=4)
        if ridge is None:
            user_scale = item_scale = singular.sqrt()
        else:
            item_scale = (singular**2 / (singular**2 + ridge)).sqrt()
            user_scale = singular * item_scale
        for side in ("collaborative", "content"):
            for table, factors in zip(self.tables(side), (u * user_scale, v * item_scale)):
                table.weight.zero_()
                table.weight[:, :rank] = factors / factors[1:].std() * init_std

    def blocks(self) -> nn.ModuleList:
        """The backbone's transformer blocks (after ``llm_layers``)."""
        return getattr(self.backbone.base_model, block_list_name(self.backbone))

    @torch.no_grad()
    def init_deep_prompts(self, words: torch.Tensor) -> None:
        """Deep prompts (P-tuning v2's idea, here as hidden states rather than keys and values): block
        ``l`` reads ``deep_prompts[l]`` at the k positions in front of each document, wherever the
        previous block left them. They start as what each block reads at the first k of ``words``
        (token ids; repeated if short), so the frozen LM starts from an in-distribution prefix rather
        than from random states it was never trained on."""
        k, blocks = self.deep_prompt_tokens, self.blocks()
        ids = words.repeat(-(-k // len(words)))[:k][None]
        seen = []
        hooks = [b.register_forward_pre_hook(lambda m, args, kwargs: seen.append(layer_input(args, kwargs)[0]),
                                             with_kwargs=True) for b in blocks]  # fmt: skip
        try:
            self.backbone.base_model(input_ids=ids, use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        self.deep_prompts = nn.Parameter(torch.stack(seen).float())
        self._deep_prompt_slots = False  # set by hidden_states while its documents carry the k slots
        for index, block in enumerate(blocks):
            block.register_forward_pre_hook(self._deep_prompt_hook(index), with_kwargs=True)

    def _deep_prompt_hook(self, index: int):
        def hook(module, args, kwargs):
            if not self._deep_prompt_slots:  # a call that did not come through hidden_states: no slots
                return None
            hidden = layer_input(args, kwargs)
            prompts = self.deep_prompts[index].to(hidden.dtype).expand(len(hidden), -1, -1)
            hidden = torch.cat([prompts, hidden[:, self.deep_prompt_tokens :]], dim=1)
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

        return hook

    def id_tables(self) -> list[nn.Embedding]:
        return [self.collaborative_user_emb, self.collaborative_item_emb, self.content_user_emb, self.content_item_emb]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The only parameters that train: the weights of the four ID tables (and the item bias, the
        attention readout's query, the backbone's LoRA adapters and norms where configured)."""
        extra = [self.item_bias.weight] if self.has_item_bias else []
        if self.untied_head:
            extra.append(self.output_item_emb.weight)
        if self.readout == "attention":
            extra.append(self.readout_query)
        if self.readout_queries:
            extra.append(self.readout_query_tokens)
        if self.deep_prompt_tokens:
            extra.append(self.deep_prompts)
        return [table.weight for table in self.id_tables()] + extra + self.backbone_parameters()

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters that train (LoRA adapters, norms); empty when the LM is frozen, as in the paper."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def optimizer_groups(self, learning_rate: float) -> list[dict]:
        """Parameter groups for the optimizer: the backbone's trainable parts at ``backbone_learning_rate``
        (default: the stage's)."""
        inside = self.backbone_parameters()
        rest = [p for p in self.trainable_parameters() if not any(p is a for a in inside)]
        groups = [{"params": rest, "lr": learning_rate}]
        if inside:
            groups.append({"params": inside, "lr": self.backbone_learning_rate or learning_rate})
        return groups

    def tables(self, side: str) -> tuple[nn.Embedding, nn.Embedding]:
        """(user, item) embedding tables of one side: ``collaborative`` or ``content``."""
        if side == "collaborative":
            return self.collaborative_user_emb, self.collaborative_item_emb
        if side == "content":
            return self.content_user_emb, self.content_item_emb
        raise ValueError(side)

    def train(self, mode: bool = True):
        """The frozen backbone runs in eval mode (no dropout noise on weights that never train) unless
        ``llm_dropout`` asks for dropout while training, as the public code leaves GPT-2's on."""
        super().train(mode)
        self.backbone.train(mode and self.llm_dropout > 0)
        return self

    def state_dict(self, *args, **kwargs):
        """What trains, without the frozen backbone (reloaded from ``llm``), so checkpoints stay small.

        Backbone parameters that do train (adapters, norms) are kept: only frozen weights are dropped.
        """
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
                f"This checkpoint was trained with a different backbone than llm={self.llm!r} "
                "(the fingerprints of the frozen weights differ): load it with the backbone it was trained on."
            )
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        trains = {name for name, p in self.named_parameters() if p.requires_grad}
        missing = [k for k in result.missing_keys if not k.startswith("backbone.") or k in trains]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"CLLM4Rec checkpoint does not match: missing {missing}, unexpected {result.unexpected_keys}"
            )
        return result

    # ------------------------------------------------------------------ soft+hard prompt -> backbone
    def embed(self, ids: torch.Tensor, side: str) -> torch.Tensor:
        """Embeddings of an extended-vocabulary id tensor: words from the frozen LM, IDs from ``side``."""
        user_emb, item_emb = self.tables(side)
        v, u = self.vocab_size, self.n_users
        words = self.backbone.get_input_embeddings()(ids.clamp(max=v - 1))
        users = user_emb((ids - v).clamp(0, u - 1))
        items = item_emb((ids - v - u).clamp(0, self.n_items - 1))
        is_user = ((ids >= v) & (ids < v + u)).unsqueeze(-1)
        return torch.where(is_user, users, torch.where(self.item_tokens(ids).unsqueeze(-1), items, words))

    def item_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Which positions of an extended-vocabulary id tensor hold item ID tokens."""
        return ids >= self.vocab_size + self.n_users

    def autocast(self):
        """The backbone's precision context (``llm_dtype``); a no-op for fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.history_items.device.type, dtype=self.autocast_dtype)

    def hidden_states(
        self, ids: torch.Tensor, length: torch.Tensor, side: str, embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last-layer hidden states (fp32) of right-padded documents ``ids[:, :length]`` (``embeds``: their
        input embeddings, when the caller has them already)."""
        attention_mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < length[:, None]
        embeds = self.embed(ids, side) if embeds is None else embeds
        k = self.deep_prompt_tokens
        if k:  # placeholders the blocks' hooks overwrite with the deep prompts
            embeds = torch.cat([embeds.new_zeros(len(ids), k, embeds.shape[-1]), embeds], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(len(ids), k), attention_mask], dim=1)
            self._deep_prompt_slots = True
        try:
            with self.autocast():
                out = self.backbone_body(inputs_embeds=embeds, attention_mask=attention_mask.long(), use_cache=False)
        finally:
            self._deep_prompt_slots = False
        return out.last_hidden_state[:, k:].float()

    def prompt_states(self, ids: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """What the item head reads from recommendation prompts: the pooled last-layer states
        (``readout``) plus, with ``readout_skip`` w, ``w / init_std`` times the sum of the input
        embeddings of the prompt's n item tokens over ``n ** readout_skip_exponent`` (1: their mean); the
        states then weigh ``readout_state_weight``.

        Why the skip: the frozen layers normalize every input, so an ID embedding enters attention
        and the MLPs at the scale of a word and their response swamps it in the residual stream. Even
        one SmolLM2 layer turns an SVD-initialized table that ranks ml-100k at validation Recall@20
        0.33 by itself into 0.03 (``docs/results.md``); finetuning must rebuild that structure
        through the layers. The skip carries the embeddings to the head as they are; the layers' states
        add what the LM makes of the prompt.
        """
        states, skip = self.prompt_parts(ids, length)
        return states + skip

    def prompt_parts(self, ids: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two terms of ``prompt_states``, each weighted as it enters the sum: the layers' pooled
        states (x ``readout_state_weight`` beside the skip, x 1 without it) and the skip (0 without it)."""
        embeds = self.embed(ids, "collaborative")
        if self.readout_queries:  # the query tokens go after each prompt; the LM reads them last
            k = self.readout_queries
            rows = torch.arange(len(ids), device=ids.device)[:, None].expand(-1, k)
            at = length[:, None] + torch.arange(k, device=ids.device)
            queries = self.readout_query_tokens.to(embeds.dtype).expand(len(ids), -1, -1)
            read_embeds = F.pad(embeds, (0, 0, 0, k)).index_put((rows, at), queries)
            read_ids, read_length = F.pad(ids, (0, k)), length + k  # id 0 is a word: never an ID token
        else:
            read_embeds, read_ids, read_length = embeds, ids, length
        hidden = self.hidden_states(read_ids, read_length, "collaborative", read_embeds)
        states = self.readout_states(hidden, read_ids, read_length)
        if not self.readout_skip:
            return states, torch.zeros_like(states)
        # the skip pools the item tokens only: a word's embedding is the same in every prompt
        items = self.item_tokens(ids)
        count = items.sum(1, keepdim=True).clamp(min=1).float()
        pooled = (items[:, :, None] * embeds.float()).sum(1) / count**self.readout_skip_exponent
        return self.readout_state_weight * states, self.readout_skip / self.init_std * pooled

    def mutual_regularization(self, ids: torch.Tensor, side: str, batch_ids: torch.Tensor) -> torch.Tensor:
        """``lambda_c * sum ||e_side - stopgrad(e_other)||^2`` over the ID tokens (with repeats) in ``ids``.

        Only toward rows the other side trains or that start from the SVD (``collaborative_trained`` /
        ``content_trained``): a row without any document on the other side stays at its init, and a
        random one would only add noise. With the frozen content tables of finetuning, it is a pull
        toward where the collaborative tables started (the SVD, or pretraining's end). With
        ``mutual_reg_reduction: mean`` the sum is divided by the number of ID tokens in ``batch_ids``,
        the whole batch's documents (``ids`` may be this rank's share).
        """
        other = "content" if side == "collaborative" else "collaborative"
        trained = self.content_trained if other == "content" else self.collaborative_trained
        id_ids = ids[ids >= self.vocab_size]
        id_ids = id_ids[trained[id_ids - self.vocab_size]]
        mine = self.embed(id_ids, side)
        with torch.no_grad():
            theirs = self.embed(id_ids, other)
        reg = ((mine - theirs) ** 2).sum()
        if self.mutual_reg_mean:
            reg = reg / (batch_ids >= self.vocab_size).sum().clamp(min=1).to(reg.device)
        return self.lambda_c * reg

    def readout_states(self, hidden: torch.Tensor, ids: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """The state the item head reads from each recommendation prompt's last-layer states (``readout``).

        ``last`` (paper): the last token's. A frozen LM's last states are nearly parallel across
        users, and a long prompt dilutes them further; pooling keeps the ID tokens' own states,
        which still carry their embeddings through the residual stream: ``mean`` over the document,
        ``items`` over the visible item tokens and the last token, ``attention`` a softmax over the
        document's positions with a learned query (mean pooling at initialization), ``queries`` the
        mean over ``readout_queries`` trainable tokens that ``prompt_states`` appends to the prompt.
        """
        rows = torch.arange(len(length), device=ids.device)
        if self.readout == "last":
            return hidden[rows, length - 1]
        if self.readout == "queries":  # the prompt's last k positions hold the query tokens
            at = length[:, None] - self.readout_queries + torch.arange(self.readout_queries, device=ids.device)
            return hidden[rows[:, None], at].mean(dim=1)
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
        inside = positions < length[:, None]
        if self.readout == "attention":
            scores = (hidden @ self.readout_query) / hidden.shape[-1] ** 0.5
            weights = scores.masked_fill(~inside, float("-inf")).softmax(dim=1)
            return (weights[:, :, None] * hidden).sum(dim=1)
        if self.readout == "items":
            inside = inside & (self.item_tokens(ids) | (positions == length[:, None] - 1))
        weights = inside.float() / inside.sum(dim=1, keepdim=True)
        return (weights[:, :, None] * hidden).sum(dim=1)

    def item_head_inputs(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, weight) of the recommendation head: ``logits = features @ weight.T``.

        ``tied`` (paper): the readout state against the collaborative item embeddings (no bias unless
        ``item_bias``: then the constant feature 1 meets each item's bias).
        ``standardized``: a frozen LM's last hidden states are nearly parallel (a shared component
        several times larger than what varies between users), so with the tied head every logit is
        mostly one shared term and the part that tells users apart is small: each hidden dimension is
        standardized with statistics measured when finetuning starts, and an item bias takes over the
        shared (popularity) term. Still tied to the item embeddings; the bias is the constant feature.
        ``untied``: the tied head with its own output item table (``output_item_emb``).
        """
        weight = self.output_item_emb.weight if self.untied_head else self.collaborative_item_emb.weight
        features = (hidden - self.hidden_mean) / self.hidden_std if self.standardized_head else hidden
        if not self.has_item_bias:
            return features, weight
        features = torch.cat([features, features.new_ones(len(features), 1)], dim=1)
        return features, torch.cat([weight, self.item_bias.weight], dim=1)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every item from the recommendation prompts' readout states; padding item 0 excluded."""
        features, weight = self.item_head_inputs(hidden)
        logits = features @ weight.T
        logits[..., 0] = float("-inf")
        return logits

    def item_log_partition(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``logsumexp`` over items of ``hidden @ weight.T`` per row, chunked over ``item_chunk_size`` items."""
        return ItemLogSumExp.apply(hidden, weight, self.item_chunk_size)

    # ------------------------------------------------------------------ documents
    def shuffled_history(self, users: torch.Tensor, shuffle: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded training items of ``users`` (optionally in a random order per user) and their counts."""
        n = self.history_len[users]
        items = self.history_items[users][:, : int(n.max()) if len(n) else 0]
        if shuffle and items.shape[1] > 1:
            keys = torch.rand(items.shape, device=items.device)
            keys[items == 0] = 2.0  # padding stays at the end
            items = items.gather(1, keys.argsort(dim=1))
        return items, n

    def collaborative_documents(self, users: torch.Tensor):
        """``{user} has interacted with item_a item_b ...`` (stochastic item reordering), truncated."""
        items, n = self.shuffled_history(users, shuffle=self.item_reorder)
        prompt = self.collaborative_prompt.ids(users=users)
        budget = self.max_seq_len - prompt.shape[1]
        items, n = items[:, :budget], n.clamp(max=budget)
        item_tokens = torch.where(items > 0, self.collaborative_prompt.item_offset + items, self.tokenizer.pad_token_id)
        return torch.cat([prompt, item_tokens], dim=1), prompt.shape[1] + n, items

    def recommendation_documents(self, users: torch.Tensor, mask: bool):
        """``{user} has interacted with <visible>, {user} will interact with`` and the finetuning targets.

        With ``mask``, ``max(1, floor(mask_ratio * n))`` random items per user are hidden and the rest
        shuffled; otherwise every training item is shown in stored order (scoring: most recent first).
        Items beyond ``max_seq_len`` (``scoring_max_seq_len`` when scoring) are not shown either.
        Returns ids, lengths and, with ``mask``, the targets ``[B, W]`` (every training item, 0 =
        none) and which of them the prompt does not show (else ``None, None``).
        """
        items, n = self.shuffled_history(users, shuffle=mask)
        positions = torch.arange(items.shape[1], device=items.device)[None, :]
        n_masked = (n.float() * self.mask_ratio).floor().long().clamp(min=1).minimum(n) if mask else torch.zeros_like(n)

        prefix = self.recommendation_prefix.ids(users=users)
        suffix = self.recommendation_suffix.ids(users=users)
        budget = (self.max_seq_len if mask else self.scoring_max_seq_len) - prefix.shape[1] - suffix.shape[1]
        if budget < 1:
            raise ValueError(f"max_seq_len={self.max_seq_len} leaves no room for items in recommendation_prompt")
        # visible items: drop the masked ones (they are first after shuffling), keep at most `budget`
        visible_rank = positions - n_masked[:, None]
        n_visible = (n - n_masked).clamp(max=budget)
        width = int(n_visible.max()) if len(n_visible) else 0
        take = (visible_rank >= 0) & (visible_rank < n_visible[:, None])
        pad = self.tokenizer.pad_token_id
        body = torch.full((len(users), width), pad, dtype=torch.long, device=items.device)
        rows, cols = take.nonzero(as_tuple=True)
        body[rows, visible_rank[rows, cols]] = self.collaborative_prompt.item_offset + items[rows, cols]

        ids = torch.cat([prefix, body, torch.full_like(suffix, pad)], dim=1)
        suffix_pos = prefix.shape[1] + n_visible[:, None] + torch.arange(suffix.shape[1], device=ids.device)
        ids.scatter_(1, suffix_pos, suffix)
        length = prefix.shape[1] + n_visible + suffix.shape[1]
        target, hidden = (items, ~take & (items > 0)) if mask else (None, None)
        return ids[:, : int(length.max())], length, target, hidden

    def document_lengths(self, stage: str, units: torch.Tensor) -> torch.Tensor:
        """Tokens the backbone reads for each document a stage builds for ``units`` (content docs or
        users), deep prompts and query tokens included: packs batches."""
        if stage == "content":
            return self.content_docs.length[units.cpu()] + self.deep_prompt_tokens
        n = self.history_len[units]
        if stage == "collaborative":
            return (len(self.collaborative_prompt) + n).clamp(max=self.max_seq_len) + self.deep_prompt_tokens
        prompt = len(self.recommendation_prefix) + len(self.recommendation_suffix)
        extra = self.deep_prompt_tokens + self.readout_queries
        if stage == "recommendation":  # the masked share depends on n only
            n = n - (n.float() * self.mask_ratio).floor().long().clamp(min=1).minimum(n)
            return prompt + n.clamp(max=self.max_seq_len - prompt) + extra
        if stage != "scoring":
            raise ValueError(f"unknown stage {stage!r}")
        return prompt + n.clamp(max=self.scoring_max_seq_len - prompt) + extra

    # ------------------------------------------------------------------ losses
    def own_rows(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This rank's rows (``rank::world``) of per-document tensors; all of them in one process."""
        rank, world = self.shard
        return tensors if world == 1 else tuple(t[rank::world] for t in tensors)

    def collaborative_lm_loss(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-item loss over the item vocabulary, and the mutual regularization toward content."""
        batch_ids, length, items = self.collaborative_documents(users)
        n_targets = (items > 0).sum().clamp(min=1)
        ids, length, items = self.own_rows(batch_ids, length, items)
        ids, items = ids[:, : int(length.max())], items[:, : int(items.gt(0).sum(1).max())]
        hidden = self.hidden_states(ids, length, "collaborative")
        p = len(self.collaborative_prompt)
        # the state at position p-1+k predicts the k-th item
        valid = items > 0
        predictors = hidden[:, p - 1 : p - 1 + items.shape[1]][valid]
        targets = self.collaborative_item_emb(items[valid])
        log_partition = self.item_log_partition(predictors, self.collaborative_item_emb.weight)
        loss = (log_partition - (predictors * targets).sum(dim=1)).sum() / n_targets
        return loss, self.mutual_regularization(ids, "collaborative", batch_ids)

    def content_lm_loss(self, docs: torch.Tensor, regularize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-word loss over the word vocabulary on the main text of content documents ``docs``."""
        docs = docs.cpu()
        n_targets = (self.content_docs.length[docs] - self.content_docs.prompt_length[docs]).sum().clamp(min=1)
        batch_ids = self.content_docs.ids[docs]
        (docs,) = self.own_rows(docs)
        length = self.content_docs.length[docs].to(self.device)
        prompt_length = self.content_docs.prompt_length[docs].to(self.device)
        ids = self.content_docs.ids[docs][:, : int(length.max())].to(self.device).long()
        hidden = self.hidden_states(ids, length, "content")
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
        predicts = (positions >= prompt_length[:, None] - 1) & (positions < length[:, None] - 1)
        targets = ids[:, 1:][predicts[:, :-1]]
        with self.autocast():  # the word head is a 49k-row matmul: as costly as several layers
            logits = self.backbone.get_output_embeddings()(hidden[predicts]).float()
        loss = F.cross_entropy(logits[:, : self.vocab_size], targets, reduction="sum") / n_targets.to(self.device)
        reg = self.mutual_regularization(ids, "content", batch_ids) if regularize else loss.new_zeros(())
        return loss, reg

    def recommendation_loss(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted multinomial loss of the masked-history prompt over all items, and the regularization.

        Divided by ``users_per_batch``, a constant: every user weighs the same wherever the packer
        puts them. A target weighs 1 if the prompt hides it, ``visible_target_weight`` if it shows it.
        The regularization covers the prompt's ID tokens and the hidden target items.
        """
        batch_ids, length, target, hidden = self.recommendation_documents(users, mask=True)
        item_offset = self.collaborative_prompt.item_offset
        batch_reg_ids = torch.cat([batch_ids.flatten(), item_offset + target[hidden]])
        ids, length, target, hidden = self.own_rows(batch_ids, length, target, hidden)
        weight = torch.where(hidden, 1.0, self.visible_target_weight).masked_fill(target == 0, 0.0)
        ids = ids[:, : int(length.max())]
        states = self.prompt_states(ids, length)
        features, head = self.item_head_inputs(states)
        # -sum_j w_j log softmax_j = (sum_j w_j) * logsumexp - sum_j w_j * logit_j
        target_logits = torch.bmm(F.embedding(target, head), features[:, :, None]).squeeze(2)
        nll = weight.sum(dim=1) * self.item_log_partition(features, head) - (weight * target_logits).sum(1)
        loss = nll.sum() / self.users_per_batch
        reg = self.mutual_regularization(torch.cat([ids.flatten(), item_offset + target[hidden]]), "collaborative", batch_reg_ids)
        return loss, reg

    # ------------------------------------------------------------------ RecBole API
    def calculate_loss(self, interaction):
        users = interaction[self.USER_ID].unique()
        loss, reg = self.recommendation_loss(users[self.history_len[users] > 0])
        return loss + reg

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """Scores of all items for a batch of users: one forward pass per pack of similar-length prompts.

        RecBole's evaluation batches come in user order, with history lengths all over the place;
        packing by length into ``eval_batch_tokens`` keeps padding small and batches large.
        """
        users = interaction[self.USER_ID]
        scores = torch.empty(len(users), self.n_items, device=users.device)
        for chunk, states in self.user_states(users):
            scores[chunk] = self.item_logits(states)
        return scores

    def user_states(self, users: torch.Tensor):
        """(positions in ``users``, readout states) of the full-history recommendation prompts, one
        pack of similar-length prompts (``eval_batch_tokens``) at a time."""
        lengths = self.document_lengths("scoring", users).cpu()
        for chunk in token_budget_batches(lengths, self.eval_batch_tokens, shuffle=False):
            chunk = chunk.to(users.device)
            ids, length, _, _ = self.recommendation_documents(users[chunk], mask=False)
            yield chunk, self.prompt_states(ids, length)

    @torch.no_grad()
    def calibrate_item_head(self, users: torch.Tensor) -> None:
        """Measure the standardized head's per-dimension mean and std on ``users``' full-history prompts."""
        hidden = torch.cat([states for _, states in self.user_states(users)])
        self.hidden_mean.copy_(hidden.mean(dim=0))
        self.hidden_std.copy_(hidden.std(dim=0).clamp(min=1e-6))
        self.head_calibrated.fill_(True)

    def predict(self, interaction) -> torch.Tensor:
        """Scores of (user, item) rows (sampled evaluation: ``uni100``...): one prompt per distinct user."""
        users, row_user = interaction[self.USER_ID].unique(return_inverse=True)
        scores = self.full_sort_predict({self.USER_ID: users})
        return scores[row_user, interaction[self.ITEM_ID]]
