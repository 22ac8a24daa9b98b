r"""EASEText: EASE (Steck, WWW 2019) over the training matrix with the item text as extra rows.

The text-aware linear baseline that CLLM4Rec is measured against: what the same item (and user) text
brings to a linear collaborative model, without a language model. The training matrix ``R`` (users x
items) gets one extra row per text feature, ``text_weight`` at the items that have it:

    X = [R; a T],   B = argmin ||X - X B||^2 + lambda ||B||^2,  diag(B) = 0,   scores = R_u B

so items that share a tag or a title word move together as if a pseudo-user had taken them all.
With ``user_text_weight`` b > 0, each user's text features are extra columns of the user's row
(``[R, b U]``; the text rows are 0 there): items are then also predicted from who the user is.

Features are read from the same ``.item`` / ``.user`` columns as CLLM4Rec's ``item_text_template`` /
``user_text_template``: a column whose values are mostly comma-separated lists (Amazon's tags) gives
one feature per entry, any other column one per lower-case word (ml-100k's title words, year,
genres). The text rows are what it adds to EASE; how much, on which datasets and with which
weights (chosen on validation): ``docs/results.md``.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import scipy.sparse as sp
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_cllm4rec.config_rules import Rule, check_config_values
from recbole_cllm4rec.data_files import field_values, template_fields

logger = logging.getLogger(__name__)


def text_features(dataset, source: str, template: str) -> sp.csr_matrix:
    """``[n_ids, n_features]`` 0/1 incidence of the text features of each user or item (row 0: padding).

    A field is a list when most of its non-empty values contain a comma: its features are the
    entries; otherwise the lower-case words. Each feature is named by its field, so a year and a
    title word never merge; features that only one id has are kept (they add to that id's ridge).
    """
    fields = list(dict.fromkeys(template_fields(template, f"{source}_text_template")))  # a field named twice counts once
    ids, values = field_values(dataset, source, fields, f"{source}_text_template {template!r}")
    n_ids = dataset.num(dataset.iid_field if source == "item" else dataset.uid_field)
    vocabulary: dict[str, int] = {}
    rows, cols = [], []
    for k, field in enumerate(fields):
        column = [row[k] for row in values]
        filled = [v for v in column if v.strip()]
        is_list = sum("," in v for v in filled) * 2 > len(filled)
        for row, value in zip(ids.tolist(), column):
            if not row:  # a row the dataset does not know
                continue
            pieces = value.split(",") if is_list else re.findall(r"\w+", value.lower())
            for piece in {p.strip().lower() for p in pieces} - {""}:
                rows.append(row)
                cols.append(vocabulary.setdefault(f"{field}:{piece}", len(vocabulary)))
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(n_ids, len(vocabulary)))


class EASEText(GeneralRecommender):
    input_type = InputType.POINTWISE
    type = ModelType.TRADITIONAL
    CONFIG_RULES = {
        "reg_weight": Rule(float, low=0),
        "text_weight": Rule(float, low=0),
        "user_text_weight": Rule(float, low=0),
    }

    def __init__(self, config, dataset):
        check_config_values(config, self.CONFIG_RULES)
        super().__init__(config, dataset)
        self.dummy_param = torch.nn.Parameter(torch.zeros(1))  # RecBole's trainer wants one parameter
        interactions = dataset.inter_matrix(form="csr").astype(np.float32)
        rows, self.n_text_features = [interactions], 0
        if config["text_weight"] and not config["item_text_template"]:
            logger.warning("EASEText: text_weight=%s but no item_text_template: plain EASE", config["text_weight"])
        if config["text_weight"] and config["item_text_template"]:
            item_text = text_features(dataset, "item", config["item_text_template"])
            rows.append(config["text_weight"] * item_text.T)
            self.n_text_features = item_text.shape[1]
        inputs = interactions
        if config["user_text_weight"] and config["user_text_template"]:
            user_text = config["user_text_weight"] * text_features(dataset, "user", config["user_text_template"])
            inputs = sp.hstack([interactions, user_text]).tocsr()
            rows = [inputs] + [sp.hstack([r, sp.csr_matrix((r.shape[0], user_text.shape[1]))]) for r in rows[1:]]
        X = sp.vstack(rows).tocsr()
        gram = (X.T @ X).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += config["reg_weight"]
        inverse = np.linalg.inv(gram)
        similarity = inverse / -np.diag(inverse)
        np.fill_diagonal(similarity, 0.0)
        # a user's row [R_u, b U_u] scores the item columns only
        self.item_similarity = similarity[:, : self.n_items].astype(np.float32)
        self.inputs = inputs
        self.other_parameter_name = ["inputs", "item_similarity"]

    def calculate_loss(self, interaction):
        return torch.nn.Parameter(torch.zeros(1))  # fitted in the constructor, as RecBole's EASE

    def predict(self, interaction):
        users = interaction[self.USER_ID].cpu().numpy()
        items = interaction[self.ITEM_ID].cpu().numpy()
        scores = self.inputs[users].multiply(self.item_similarity[:, items].T).sum(axis=1)
        return torch.from_numpy(np.asarray(scores).ravel()).to(self.device)

    def full_sort_predict(self, interaction):
        users = interaction[self.USER_ID].cpu().numpy()
        return torch.from_numpy((self.inputs[users] @ self.item_similarity).ravel()).to(self.device)
