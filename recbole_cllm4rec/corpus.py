"""CLLM4Rec's documents as token-id tensors, built once per dataset and backbone.

A document is a soft+hard prompt (words plus user/item ID tokens) followed by a homogeneous main
text: item tokens (collaborative LM) or words (content LM). ID tokens extend the LM vocabulary:
user ``u`` is id ``V + u`` and item ``i`` is id ``V + U + i`` (``V`` word rows, ``U`` users,
RecBole's internal ids). Words are tokenized here and only here; past this module everything is a
tensor.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from recbole.utils import FeatureType

logger = logging.getLogger(__name__)

_SLOT = re.compile(r"(\{user\}|\{item\}|\{items\})")


class SoftHardPrompt:
    """A prompt template such as ``"{user} has interacted with"``, tokenized once.

    Word pieces are tokenized without special tokens; a piece that precedes an ID token loses its
    trailing whitespace (byte-level BPE tokenizers turn a space before an added token into a token
    of its own). ``ids(users=..., items=...)`` fills the ID slots for a whole batch at once.
    """

    def __init__(self, template: str, tokenizer, vocab_size: int, n_users: int) -> None:
        if "{items}" in template:
            raise ValueError(f"{template!r}: split templates at {{items}} before building a prompt")
        self.template = template
        self.user_offset = vocab_size
        self.item_offset = vocab_size + n_users
        pieces = [p for p in _SLOT.split(template) if p]
        ids: list[int] = []
        user_slots: list[int] = []
        item_slots: list[int] = []
        for k, piece in enumerate(pieces):
            if piece == "{user}":
                user_slots.append(len(ids))
                ids.append(0)
            elif piece == "{item}":
                item_slots.append(len(ids))
                ids.append(0)
            else:
                before_id_token = k + 1 < len(pieces) and _SLOT.fullmatch(pieces[k + 1])
                text = piece.rstrip() if before_id_token else piece
                ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        self.static_ids = torch.tensor(ids, dtype=torch.long)
        self.user_slots = torch.tensor(user_slots, dtype=torch.long)
        self.item_slots = torch.tensor(item_slots, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.static_ids)

    def ids(self, users: torch.Tensor | None = None, items: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, len(self)]`` token ids for a batch of users and/or items."""
        batch = len(users) if users is not None else len(items)
        out = self.static_ids.to((users if users is not None else items).device).repeat(batch, 1)
        if len(self.user_slots):
            out[:, self.user_slots.to(out.device)] = self.user_offset + users[:, None]
        if len(self.item_slots):
            out[:, self.item_slots.to(out.device)] = self.item_offset + items[:, None]
        return out


@dataclass
class ContentDocuments:
    """Content LM documents, right-padded: ``ids[d, :length[d]]`` = prompt then words.

    Loss is taken on the words only, i.e. on positions ``prompt_length[d] .. length[d] - 1``.
    """

    ids: torch.Tensor  # [N, L] long
    length: torch.Tensor  # [N] long
    prompt_length: torch.Tensor  # [N] long

    def __len__(self) -> int:
        return len(self.length)


def token_budget_batches(lengths: torch.Tensor, max_tokens: int, shuffle: bool = True, window: int = 4096) -> list[torch.Tensor]:
    """Indices of documents grouped into batches of at most ``max_tokens`` padded tokens.

    Documents are sorted by length (within random windows of ``window`` documents when
    ``shuffle``) and packed greedily, so a batch holds documents of nearly equal length and padding
    stays small; batch order is then shuffled. Every index appears exactly once; a document longer
    than ``max_tokens`` gets a batch of its own. Randomness comes from torch's global RNG (seeded by
    RecBole); without ``shuffle`` the batches are deterministic, longest first.
    """
    order = torch.randperm(len(lengths)) if shuffle else torch.arange(len(lengths))
    batches: list[torch.Tensor] = []
    for start in range(0, len(order), window if shuffle else max(len(order), 1)):
        chunk = order[start : start + window] if shuffle else order
        chunk = chunk[lengths[chunk].argsort(descending=True, stable=True)]
        sizes = lengths[chunk].clamp(min=1).tolist()
        begin = 0
        while begin < len(chunk):
            # sorted descending: the first document sets the batch's padded length
            count = max(1, max_tokens // sizes[begin])
            batches.append(chunk[begin : begin + count])
            begin += count
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches)).tolist()]
    return batches


def render_field_text(dataset, source: str, template: str) -> list[str]:
    """Fill ``template`` (``"{title} by {brand}"``) from ``.item``/``.user`` columns, one string per id.

    Rows whose referenced fields are all empty give ``""`` (no document for them).
    """
    feat = dataset.item_feat if source == "item" else dataset.user_feat
    fields = re.findall(r"\{(\w+)\}", template)
    available = list(feat.columns) if feat is not None else []
    missing = [f for f in fields if f not in available]
    if missing:
        raise ValueError(
            f"{source}_text_template uses field(s) {missing} that the dataset's .{source} file does not provide "
            f"(loaded {source} fields: {available}). Add them to load_col['{source}'] or change the template."
        )
    n_rows = len(feat) if feat is not None else 0
    columns: dict[str, list[str]] = {}
    for field in fields:
        values = feat[field]
        ftype = dataset.field2type[field]
        if ftype == FeatureType.TOKEN:
            vocab = dataset.field2id_token[field]
            columns[field] = ["" if v == 0 else str(vocab[v]) for v in values.tolist()]
        elif ftype == FeatureType.TOKEN_SEQ:
            vocab = dataset.field2id_token[field]
            columns[field] = [" ".join(str(vocab[t]) for t in row if t != 0) for row in values.tolist()]
        elif ftype == FeatureType.FLOAT_SEQ:
            columns[field] = [" ".join(f"{t:g}" for t in row) for row in values.tolist()]
        else:
            columns[field] = [f"{v:g}" for v in values.tolist()]
    texts = []
    for row in range(n_rows):
        row_values = {f: columns[f][row] for f in fields}
        texts.append(template.format(**row_values).strip() if any(row_values.values()) else "")
    return texts


def build_content_documents(
    texts_by_source: dict[str, tuple[list[str], SoftHardPrompt]],
    tokenizer,
    max_seq_len: int,
) -> ContentDocuments:
    """Tokenize every text once (one batched tokenizer call per source) and pad into one tensor.

    ``texts_by_source`` maps ``"item"``/``"user"`` to (one text per RecBole id, the prompt for that
    source). Empty texts are skipped and counted.
    """
    rows: list[torch.Tensor] = []
    prompt_lengths: list[int] = []
    for source, (texts, prompt) in texts_by_source.items():
        keep = [i for i, t in enumerate(texts) if t and i != 0]
        skipped = len(texts) - 1 - len(keep)
        if skipped > 0:
            logger.warning(
                "content corpus: %d of %d %ss have no text (empty fields, or no row in the .%s file): "
                "no content document for them",
                skipped,
                len(texts) - 1,
                source,
                source,
            )
        if not keep:
            continue
        words = tokenizer([" " + texts[i] for i in keep], add_special_tokens=False)["input_ids"]
        index = torch.tensor(keep, dtype=torch.long)
        prompts = prompt.ids(**{f"{source}s": index})
        budget = max_seq_len - prompts.shape[1]
        if budget < 1:
            raise ValueError(f"max_seq_len={max_seq_len} leaves no room for text after the {source} prompt")
        for p, w in zip(prompts, words):
            rows.append(torch.cat([p, torch.tensor(w[:budget], dtype=torch.long)]))
            prompt_lengths.append(prompts.shape[1])
    if not rows:
        empty = torch.zeros(0, dtype=torch.long)
        return ContentDocuments(torch.zeros(0, 1, dtype=torch.long), empty, empty)
    length = torch.tensor([len(r) for r in rows], dtype=torch.long)
    ids = torch.full((len(rows), int(length.max())), tokenizer.pad_token_id, dtype=torch.long)
    for d, r in enumerate(rows):
        ids[d, : len(r)] = r
    return ContentDocuments(ids, length, torch.tensor(prompt_lengths, dtype=torch.long))
