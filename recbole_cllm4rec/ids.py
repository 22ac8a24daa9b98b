"""The extended vocabulary (words, then one token per user and per item) and the prompts over it.

``IdLayout`` is the one owner of the ID tokens' arithmetic; ``SoftHardPrompt`` tokenizes a template of
words and ID slots once and fills the slots for whole batches.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_SLOT = re.compile(r"(\{user\}|\{item\}|\{items\})")


@dataclass(frozen=True)
class IdLayout:
    """The extended vocabulary: words ``0 .. V-1``, user ``u`` at ``V + u``, item ``i`` at ``V + U + i``
    (``V`` word rows, ``U`` users, RecBole's internal ids; id 0 is padding on both sides)."""

    vocab_size: int
    n_users: int
    n_items: int

    def user_tokens(self, users: torch.Tensor) -> torch.Tensor:
        return self.vocab_size + users

    def item_tokens(self, items: torch.Tensor) -> torch.Tensor:
        return self.vocab_size + self.n_users + items

    def is_id(self, ids: torch.Tensor) -> torch.Tensor:
        return ids >= self.vocab_size

    def is_user(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.vocab_size) & (ids < self.vocab_size + self.n_users)

    def is_item(self, ids: torch.Tensor) -> torch.Tensor:
        return ids >= self.vocab_size + self.n_users

    def id_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of ID tokens ``ids`` in the stacked ``[users; items]`` table."""
        return ids - self.vocab_size

    def as_words(self, ids: torch.Tensor, user_word: int, item_word: int) -> torch.Tensor:
        """``ids`` with every user token replaced by the word ``user_word`` and every item token by
        ``item_word``: the same document as the plain LM reads it, position for position."""
        return torch.where(self.is_user(ids), user_word, torch.where(self.is_item(ids), item_word, ids))

    def split(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(word, user, item) indices of every position, each clamped into its own table's range."""
        v, u = self.vocab_size, self.n_users
        return ids.clamp(max=v - 1), (ids - v).clamp(0, u - 1), (ids - v - u).clamp(0, self.n_items - 1)


class SoftHardPrompt:
    """A prompt template such as ``"{user} has interacted with"``, tokenized once.

    Word pieces are tokenized without special tokens; a piece that precedes an ID token loses its
    trailing whitespace (byte-level BPE tokenizers turn a space before an added token into a token
    of its own). ``ids(users=..., items=...)`` fills the ID slots for a whole batch at once.
    """

    def __init__(self, template: str, tokenizer, layout: IdLayout) -> None:
        if "{items}" in template:
            raise ValueError(f"{template!r}: split templates at {{items}} before building a prompt")
        self.template = template
        self.layout = layout
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
            out[:, self.user_slots.to(out.device)] = self.layout.user_tokens(users[:, None])
        if len(self.item_slots):
            out[:, self.item_slots.to(out.device)] = self.layout.item_tokens(items[:, None])
        return out
