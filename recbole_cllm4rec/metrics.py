"""The CLLM4Rec paper's recall and its public code's model selection, registered as RecBole metrics
(``metrics: [..., PaperRecall, PaperScore]``, ``valid_metric: PaperScore``).

The paper (and Multi-VAE before it) divides the hits in the top K by ``min(K, #held-out items)``
instead of by ``#held-out``, so a user with more held-out items than K can still reach 1. Published
numbers on amazon-beauty-paper use it; RecBole's ``Recall`` does not. The public code keeps the
finetuning epoch with the highest sum of the three reported metrics on validation: ``PaperScore``
is that sum, one number RecBole's loop can select and early-stop on.
"""
from __future__ import annotations

import numpy as np
from recbole.evaluator.base_metric import TopkMetric
from recbole.evaluator.metrics import NDCG


def paper_recall(pos_index: np.ndarray, pos_len: np.ndarray) -> np.ndarray:
    """Per user and cut-off K (columns 1..): hits in the top K / min(K, #held-out)."""
    k = np.arange(1, pos_index.shape[1] + 1)
    return np.cumsum(pos_index, axis=1) / np.minimum(k[None, :], pos_len[:, None])


class PaperRecall(TopkMetric):
    r"""``PaperRecall@K = |top-K ∩ held-out| / min(K, |held-out|)``, averaged over users."""

    def calculate_metric(self, dataobject) -> dict:
        pos_index, pos_len = self.used_info(dataobject)
        return self.topk_result("paperrecall", paper_recall(pos_index, pos_len))


class PaperScore(TopkMetric):
    r"""``PaperRecall@20 + PaperRecall@40 + NDCG@100``, averaged over users: the public code's
    selection rule (``finetuning.py`` saves the epoch with the best sum). Needs ``topk`` up to 100."""

    def __init__(self, config) -> None:
        super().__init__(config)
        if max(self.topk) < 100:
            raise ValueError(f"PaperScore reads the top 100 items: add 100 to topk (now {self.topk})")

    def calculate_metric(self, dataobject) -> dict:
        pos_index, pos_len = self.used_info(dataobject)
        recall = paper_recall(pos_index, pos_len)
        ndcg = NDCG.metric_info(self, pos_index, pos_len)  # RecBole's NDCG, at every cut-off
        score = recall[:, 19] + recall[:, 39] + ndcg[:, 99]
        return {"paperscore": round(float(score.mean()), self.decimal_place)}


def register() -> None:
    """Make RecBole know ``PaperRecall`` and ``PaperScore``: its metrics module and the registry dicts
    built from it at import."""
    import recbole.evaluator.metrics as metrics
    import recbole.evaluator.register as registry

    for metric in (PaperRecall, PaperScore):
        name = metric.__name__.lower()
        setattr(metrics, metric.__name__, metric)
        registry.metrics_dict[name] = metric
        registry.metric_information[name] = metric.metric_need
        registry.metric_types[name] = metric.metric_type
