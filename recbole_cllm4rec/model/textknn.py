r"""TextKNN: item kNN over the items' text alone, the content-only baseline.

Items are neighbours by the cosine of their text feature vectors (EASEText's tags or words,
:func:`~recbole_cllm4rec.model.easetext.text_features`), never by who took them:

    S = N N^T with the diagonal zeroed,  N = the rows of T scaled to unit length,   scores = R_u S

so an item no one took in training ranks as well as any other: the floor a cold-start model that
reads text has to beat. ``S`` is never formed: ``R_u S = (R_u N) N^T - R_u diag(S)``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_cllm4rec.model.easetext import text_features


class TextKNN(GeneralRecommender):
    input_type = InputType.POINTWISE
    type = ModelType.TRADITIONAL

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if not config["item_text_template"]:
            raise ValueError("TextKNN ranks items by their text: set item_text_template (e.g. \"{tags}.\")")
        self.dummy_param = torch.nn.Parameter(torch.zeros(1))  # RecBole's trainer wants one parameter
        features = text_features(dataset, "item", config["item_text_template"])
        lengths = np.sqrt(np.asarray(features.sum(axis=1)).ravel())
        self.unit_features = sp.diags(np.divide(1.0, lengths, out=np.zeros_like(lengths), where=lengths > 0)) @ features
        self.self_similarity = (lengths > 0).astype(np.float32)  # diag(S): 1 for an item with text
        self.history = dataset.inter_matrix(form="csr").astype(np.float32)
        self.other_parameter_name = ["history", "unit_features", "self_similarity"]

    def calculate_loss(self, interaction):
        return torch.nn.Parameter(torch.zeros(1))  # nothing to fit, as RecBole's Pop at its one epoch

    def user_scores(self, users: np.ndarray) -> np.ndarray:
        """``R_u S`` for every item, one row per user."""
        history = self.history[users]
        scores = (history @ self.unit_features) @ self.unit_features.T
        return np.asarray(scores.todense()) - history.toarray() * self.self_similarity

    def predict(self, interaction):
        users, row_user = interaction[self.USER_ID].cpu().unique(return_inverse=True)
        scores = torch.from_numpy(self.user_scores(users.numpy()))
        return scores[row_user, interaction[self.ITEM_ID].cpu()].to(self.device)

    def full_sort_predict(self, interaction):
        return torch.from_numpy(self.user_scores(interaction[self.USER_ID].cpu().numpy()).ravel()).to(self.device)
