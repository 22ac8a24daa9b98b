"""EASEText: EASE with the item text as extra rows, checked against the closed form by hand."""
import numpy as np
import pytest
import torch
from conftest import tiny_config_dict

from recbole_cllm4rec.quick_start import run_model


def build(root, model: str = "EASEText", **overrides):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_cllm4rec.registry import Config, get_model

    config = Config(model=model, dataset="tiny", config_dict=tiny_config_dict(root, **overrides))
    init_seed(config["seed"], config["reproducibility"])  # the same split for every model
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    return get_model(model)(config, train.dataset), train.dataset


def ease_by_hand(X: np.ndarray, reg: float) -> np.ndarray:
    """Steck's closed form: B = I - P diag(1 / diag P), P = (X^T X + reg I)^-1."""
    P = np.linalg.inv(X.T @ X + reg * np.eye(X.shape[1]))
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    return B


def test_features_are_list_entries_or_words_per_field(tiny_data):
    from recbole_cllm4rec.model.easetext import text_features

    item = tiny_data / "tiny" / "tiny.item"
    lines = item.read_text().splitlines()
    # a list field (most values comma-separated) beside the word field `title`
    lines[0] += "\ttags:token"
    lines[1:] = [f"{line}\tBig Tag, small, {'odd' if k % 2 else 'even'}" for k, line in enumerate(lines[1:])]
    item.write_text("\n".join(lines) + "\n")
    model, dataset = build(tiny_data, item_text_template="{title} {tags}")
    features = text_features(dataset, "item", "{title} {tags}").toarray()
    i7 = dataset.token2id(dataset.iid_field, "i7")
    # "The drama film number 7" -> 5 words (the 4 shared + "7"); tags -> "big tag", "small", odd/even
    assert features[i7].sum() == 5 + 3
    assert features[0].sum() == 0  # padding
    assert features.sum(0).max() == dataset.item_num - 1  # "big tag" (and "the", ...) on every item
    assert model.n_text_features == features.shape[1]


def test_scores_are_ease_on_the_stacked_matrix_and_zero_weight_is_ease(tiny_data):
    from recbole_cllm4rec.model.easetext import text_features

    model, dataset = build(tiny_data, reg_weight=3.0, text_weight=0.7)
    R = dataset.inter_matrix(form="csr").toarray()
    T = text_features(dataset, "item", "{title}. Genre: {genre}.").toarray().T
    B = ease_by_hand(np.vstack([R, 0.7 * T]), 3.0)
    users = torch.arange(1, dataset.user_num)
    scores = model.full_sort_predict({model.USER_ID: users}).view(len(users), -1).numpy()
    np.testing.assert_allclose(scores, R[1:] @ B, rtol=1e-4, atol=1e-5)
    # predict: the same scores for (user, item) rows
    items = torch.tensor([1, 5, 9])
    rows = model.predict({model.USER_ID: torch.tensor([2, 2, 3]), model.ITEM_ID: items}).numpy()
    np.testing.assert_allclose(rows, (R[[2, 2, 3]] @ B)[np.arange(3), items.numpy()], rtol=1e-4, atol=1e-5)

    plain, _ = build(tiny_data, reg_weight=3.0, text_weight=0.0)
    ease, _ = build(tiny_data, model="EASE", reg_weight=3.0)
    np.testing.assert_allclose(plain.full_sort_predict({plain.USER_ID: users}).numpy(),
                               ease.full_sort_predict({ease.USER_ID: users}).numpy().ravel(), rtol=1e-3, atol=1e-5)  # fmt: skip


def test_user_text_is_extra_columns_of_the_user_rows(tiny_data):
    from recbole_cllm4rec.model.easetext import text_features

    model, dataset = build(tiny_data, reg_weight=2.0, text_weight=0.5, user_text_weight=0.3)
    R = dataset.inter_matrix(form="csr").toarray()
    T = text_features(dataset, "item", "{title}. Genre: {genre}.").toarray().T
    U = text_features(dataset, "user", "aged {age}").toarray()
    X = np.block([[R, 0.3 * U], [0.5 * T, np.zeros((T.shape[0], U.shape[1]))]])
    B = ease_by_hand(X, 2.0)[:, : dataset.item_num]
    users = torch.arange(1, dataset.user_num)
    scores = model.full_sort_predict({model.USER_ID: users}).view(len(users), -1).numpy()
    np.testing.assert_allclose(scores, np.hstack([R, 0.3 * U])[1:] @ B, rtol=1e-4, atol=1e-5)


def test_easetext_runs_in_a_comparison_and_refuses_a_negative_weight(tiny_data):
    result = run_model("EASEText", "tiny", config_dict=tiny_config_dict(tiny_data, text_weight=1.0))
    assert 0 < result["test_result"]["recall@10"] <= 1
    with pytest.raises(ValueError, match=r"text_weight=-1.0 must be at least 0"):
        build(tiny_data, text_weight=-1.0)
