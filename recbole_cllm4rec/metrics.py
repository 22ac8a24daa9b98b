"""The CLLM4Rec paper's recall, registered as a RecBole metric (``metrics: [..., PaperRecall]``).

The paper (and Multi-VAE before it) divides the hits in the top K by ``min(K, #held-out items)``
instead of by ``#held-out``, so a user with more held-out items than K can still reach 1. Published
numbers on amazon-beauty-paper use it; RecBole's ``Recall`` does not.
"""
from __future__ import annotations

import numpy as np
from recbole.evaluator.base_metric import TopkMetric


class PaperRecall(TopkMetric):
    r"""``PaperRecall@K = |top-K ∩ held-out| / min(K, |held-out|)``, averaged over users."""

    def calculate_metric(self, dataobject) -> dict:
        pos_index, pos_len = self.used_info(dataobject)
        return self.topk_result("paperrecall", self.metric_info(pos_index, pos_len))

    def metric_info(self, pos_index: np.ndarray, pos_len: np.ndarray) -> np.ndarray:
        k = np.arange(1, pos_index.shape[1] + 1)
        return np.cumsum(pos_index, axis=1) / np.minimum(k[None, :], pos_len[:, None])


def register() -> None:
    """Make RecBole know ``PaperRecall``: its metrics module and the registry dicts built from it at import."""
    import recbole.evaluator.metrics as metrics
    import recbole.evaluator.register as registry

    metrics.PaperRecall = PaperRecall
    registry.metrics_dict["paperrecall"] = PaperRecall
    registry.metric_information["paperrecall"] = PaperRecall.metric_need
    registry.metric_types["paperrecall"] = PaperRecall.metric_type
