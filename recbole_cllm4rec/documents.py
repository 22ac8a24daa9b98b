"""CLLM4Rec's documents as token-id tensors, built once per dataset and backbone.

A document is a soft+hard prompt (words plus user/item ID tokens, ``ids``) followed by a homogeneous
main text: item tokens (collaborative LM) or words (content LM). Words are tokenized here and only
here; past this module everything is a tensor. ``Documents`` builds every document a pass reads and
owns their lengths, so token-budget packing counts exactly what the builders make.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from recbole_cllm4rec.cache import cached_value, digest
from recbole_cllm4rec.data_files import field_texts, review_texts
from recbole_cllm4rec.ids import IdLayout, SoftHardPrompt

logger = logging.getLogger(__name__)


@dataclass
class ContentDocuments:
    """Content LM documents, right-padded: ``ids[d, :length[d]]`` = prompt then words.

    Loss is taken on the words only, i.e. on positions ``prompt_length[d] .. length[d] - 1``.
    """

    ids: torch.Tensor  # [N, L] int32 (half the memory of long for large review corpora)
    length: torch.Tensor  # [N] long
    prompt_length: torch.Tensor  # [N] long

    def __len__(self) -> int:
        return len(self.length)


def build_content_documents(sources: dict[str, tuple[torch.Tensor, list[str]]], tokenizer, max_seq_len: int) -> ContentDocuments:
    """Tokenize every text once (one batched tokenizer call per source) and pad into one tensor.

    ``sources`` maps a name (``item``, ``user``, ``review``) to (the prompt ids of each document
    ``[N, P]``, its N texts). Empty texts are skipped and counted.
    """
    rows: list[torch.Tensor] = []
    prompt_lengths: list[int] = []
    for source, (prompts, texts) in sources.items():
        keep = [d for d, t in enumerate(texts) if t]
        if len(keep) < len(texts):
            logger.warning(
                "content corpus: %d of %d %ss have no text (empty fields, or no row in the file): no document for them",
                len(texts) - len(keep),
                len(texts),
                source,
            )
        if not keep:
            continue
        budget = max_seq_len - prompts.shape[1]
        if budget < 1:
            raise ValueError(f"max_seq_len={max_seq_len} leaves no room for text after the {source} prompt")
        words = tokenizer([" " + texts[d] for d in keep], add_special_tokens=False)["input_ids"]
        for d, w in zip(keep, words):
            rows.append(torch.cat([prompts[d], torch.tensor(w[:budget], dtype=torch.long)]))
            prompt_lengths.append(prompts.shape[1])
    if not rows:
        empty = torch.zeros(0, dtype=torch.long)
        return ContentDocuments(torch.zeros(0, 1, dtype=torch.int32), empty, empty)
    length = torch.tensor([len(r) for r in rows], dtype=torch.long)
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tokenizer.pad_token_id)
    return ContentDocuments(ids.to(torch.int32), length, torch.tensor(prompt_lengths, dtype=torch.long))


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of the tokenizer's full definition (vocabulary, merges, normalizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}{len(tokenizer)}"
    return digest(text)


def cached_content_documents(
    sources: dict[str, tuple[torch.Tensor, list[str]]], tokenizer, max_seq_len: int, cache_dir: Path | None, name: str
) -> ContentDocuments:
    """``build_content_documents``, loaded from ``cache_dir`` when the same inputs were built before.

    The cache key digests everything the tensors depend on (the texts, the prompt ids, the tokenizer,
    ``max_seq_len``), so a changed template, split or backbone builds afresh and a stale file is never read.
    """
    if cache_dir is None:
        return build_content_documents(sources, tokenizer, max_seq_len)
    parts = [f"{tokenizer_fingerprint(tokenizer)}|{max_seq_len}"]
    for source, (prompts, texts) in sources.items():
        parts += [source, prompts.numpy().tobytes(), "\x00".join(texts)]
    path = Path(cache_dir) / f"{name}-{digest(*parts)}.pt"
    build = lambda: vars(build_content_documents(sources, tokenizer, max_seq_len))  # noqa: E731
    return ContentDocuments(**cached_value(path, build, "content corpus", check=check_corpus_fields))


def check_corpus_fields(fields: dict) -> None:
    """Raises unless ``fields`` make a corpus whose tensors agree in rows (a cut-short cache file may not)."""
    docs = ContentDocuments(**fields)
    if not docs.ids.shape[0] == len(docs.length) == len(docs.prompt_length):
        raise ValueError(f"{docs.ids.shape[0]} rows of ids, {len(docs.length)} lengths")


def content_documents(
    config, dataset, tokenizer, layout: IdLayout, history: torch.Tensor, cache_dir: Path
) -> ContentDocuments:
    """The content corpus ``config``'s text keys ask for: ``.item`` / ``.user`` text columns and the
    reviews of training interactions (``history``), tokenized once per dataset and backbone."""
    sources = {}
    for source, n in (("item", layout.n_items), ("user", layout.n_users)):
        if config[f"{source}_text_template"]:
            texts = field_texts(dataset, source, config[f"{source}_text_template"])
            prompt = SoftHardPrompt(config[f"{source}_prompt"], tokenizer, layout)
            sources[source] = (prompt.ids(**{f"{source}s": torch.arange(1, n)}), texts[1:])
    if config["review_text_field"]:
        users, items, texts = review_texts(dataset, config["review_text_field"], history)
        prompt = SoftHardPrompt(config["review_prompt"], tokenizer, layout)
        sources["review"] = (prompt.ids(users=users, items=items), texts)
    cache_dir = cache_dir if sources else None
    return cached_content_documents(sources, tokenizer, config["max_seq_len"], cache_dir, config["dataset"])


def stored_history(dataset, seed: int) -> torch.Tensor:
    """Each user's training items ``[n_users, max_len]`` (0-padded), without repeats, most recent first.

    Most recent by the dataset's time field when it has one (a re-interaction counts at its latest
    time; equal times in the order RecBole gives under ``seed``), otherwise a random order drawn from
    ``seed``. Where a prompt has room for only part of a history, it shows the first items: at scoring the most recent ones (or a random subset, like
    the subsets finetuning shows), never an order RecBole happened to produce.
    """
    # RecBole shuffles the interactions before it builds the matrix (torch's global RNG): the order of
    # items with equal times came from whatever had drawn before (a first run's backbone conversion did)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
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


class Documents(nn.Module):
    """Every document CLLM4Rec reads, built from the training histories, and their lengths.

    Passes: ``collaborative`` (``{user} has interacted with item_a item_b ...``), ``recommendation``
    (finetuning: ``{user} has interacted with <visible>, {user} will interact with`` with a share of
    the history hidden), ``scoring`` (the same prompt over the whole stored history) and ``content``
    (the tokenized text documents). ``item_counts`` is the one masking and truncation rule: the
    builders and ``lengths`` both read it. A module so the histories move with the model's device.
    """

    def __init__(self, config, layout: IdLayout, tokenizer, history: torch.Tensor, content: ContentDocuments) -> None:
        super().__init__()
        self.layout, self.pad_token_id, self.content = layout, tokenizer.pad_token_id, content
        self.max_seq_len = config["max_seq_len"]
        # scoring is forward-only: it can afford to show more of a long history than training does
        self.scoring_max_seq_len = config["scoring_max_seq_len"] or self.max_seq_len
        self.mask_ratio = config["mask_ratio"]
        self.item_reorder = config["item_reorder"]
        self.collaborative_prompt = SoftHardPrompt(config["collaborative_prompt"], tokenizer, layout)
        before, sep, after = config["recommendation_prompt"].partition("{items}")
        if not sep:
            raise ValueError("recommendation_prompt must contain {items}")
        self.recommendation_prefix = SoftHardPrompt(before.rstrip(), tokenizer, layout)
        self.recommendation_suffix = SoftHardPrompt(after, tokenizer, layout)
        for pass_name, key, cap in (("collaborative", "max_seq_len", self.max_seq_len), ("recommendation", "max_seq_len", self.max_seq_len),
                                ("scoring", "scoring_max_seq_len", self.scoring_max_seq_len)):  # fmt: skip
            if self.prompt_length(pass_name) >= cap:
                prompt = "collaborative_prompt" if pass_name == "collaborative" else "recommendation_prompt"
                raise ValueError(f"{key}={cap} leaves no room for items in {prompt}")
        self.register_buffer("history_items", history, persistent=False)
        self.register_buffer("history_len", (history > 0).sum(dim=1), persistent=False)

    def prompt_length(self, pass_name: str) -> int:
        """Word and ID tokens around the items of a pass's documents."""
        if pass_name == "collaborative":
            return len(self.collaborative_prompt)
        return len(self.recommendation_prefix) + len(self.recommendation_suffix)

    def item_counts(self, pass_name: str, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked, shown) items of documents over histories of ``n`` items: finetuning masks
        ``max(1, floor(mask_ratio * n))``; every pass shows at most what its length cap leaves."""
        if pass_name not in ("collaborative", "recommendation", "scoring"):
            raise ValueError(f"unknown pass {pass_name!r}")
        masked = torch.zeros_like(n)
        if pass_name == "recommendation":
            masked = (n.float() * self.mask_ratio).floor().long().clamp(min=1).minimum(n)
        cap = self.scoring_max_seq_len if pass_name == "scoring" else self.max_seq_len
        return masked, (n - masked).clamp(max=cap - self.prompt_length(pass_name))

    def lengths(self, pass_name: str, units: torch.Tensor) -> torch.Tensor:
        """Tokens the backbone reads for each document of a pass (``units``: content docs or users)."""
        if pass_name == "content":
            return self.content.length[units.cpu()]
        return self.prompt_length(pass_name) + self.item_counts(pass_name, self.history_len[units])[1]

    def history(self, users: torch.Tensor, shuffle: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded training items of ``users`` (optionally in a random order per user) and their counts."""
        n = self.history_len[users]
        items = self.history_items[users][:, : int(n.max()) if len(n) else 0]
        if shuffle and items.shape[1] > 1:
            keys = torch.rand(items.shape, device=items.device)
            keys[items == 0] = 2.0  # padding stays at the end
            items = items.gather(1, keys.argsort(dim=1))
        return items, n

    def collaborative(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ids, lengths and shown items of ``{user} has interacted with item_a item_b ...`` (stochastic
        item reordering with ``item_reorder``)."""
        items, n = self.history(users, shuffle=self.item_reorder)
        _, shown = self.item_counts("collaborative", n)
        items = items[:, : int(shown.max()) if len(shown) else 0]  # histories are compact: the first `shown`
        item_tokens = torch.where(items > 0, self.layout.item_tokens(items), self.pad_token_id)
        prompt = self.collaborative_prompt.ids(users=users)
        return torch.cat([prompt, item_tokens], dim=1), prompt.shape[1] + shown, items

    def recommendation(self, users: torch.Tensor, mask: bool):
        """``{user} has interacted with <visible>, {user} will interact with`` and the finetuning targets.

        With ``mask`` (the ``recommendation`` pass) the history is shuffled and its first
        ``item_counts`` masked items are not shown; otherwise (``scoring``) every item is shown in
        stored order (most recent first). Items beyond the length cap are not shown either. Returns
        ids, lengths and, with ``mask``, the targets ``[B, W]`` (every training item, 0 = none) and
        which of them the prompt does not show (else ``None, None``).
        """
        items, n = self.history(users, shuffle=mask)
        n_masked, n_visible = self.item_counts("recommendation" if mask else "scoring", n)
        # visible items: drop the masked ones (they come first after shuffling), keep n_visible
        visible_rank = torch.arange(items.shape[1], device=items.device)[None, :] - n_masked[:, None]
        take = (visible_rank >= 0) & (visible_rank < n_visible[:, None])
        body = torch.full((len(users), int(n_visible.max()) if len(users) else 0), self.pad_token_id,
                          dtype=torch.long, device=items.device)  # fmt: skip
        rows, cols = take.nonzero(as_tuple=True)
        body[rows, visible_rank[rows, cols]] = self.layout.item_tokens(items[rows, cols])
        prefix = self.recommendation_prefix.ids(users=users)
        suffix = self.recommendation_suffix.ids(users=users)
        ids = torch.cat([prefix, body, torch.full_like(suffix, self.pad_token_id)], dim=1)
        suffix_at = prefix.shape[1] + n_visible[:, None] + torch.arange(suffix.shape[1], device=ids.device)
        ids.scatter_(1, suffix_at, suffix)
        length = prefix.shape[1] + n_visible + suffix.shape[1]
        target, masked = (items, ~take & (items > 0)) if mask else (None, None)
        return ids[:, : int(length.max())], length, target, masked
