"""Cold items (no training interaction): the cold-item and cold-only views of every model, and TextKNN.

A hand-made benchmark split of 3 users and 8 items; i1-i4 are the training items, i5-i8 cold:

    user  train    valid      test
    u1    i1 i2    i5* i3     i6* i7*
    u2    i2 i3    i6*        i5* i1
    u3    i1 i4    i2         i8*          (* cold)
"""
import math

import numpy as np
import pytest
import torch
from conftest import tiny_config_dict

from recbole_cllm4rec.quick_start import run

SPLIT = {
    "train": [("u1", "i1"), ("u1", "i2"), ("u2", "i2"), ("u2", "i3"), ("u3", "i1"), ("u3", "i4")],
    "valid": [("u1", "i5"), ("u1", "i3"), ("u2", "i6"), ("u3", "i2")],
    "test": [("u1", "i6"), ("u1", "i7"), ("u2", "i5"), ("u2", "i1"), ("u3", "i8")],
}
TAGS = {"i1": "red, soft", "i2": "red", "i3": "blue, soft", "i4": "blue",
        "i5": "red, soft", "i6": "blue, hard", "i7": "red, hard", "i8": ""}  # fmt: skip
# a fixed score per user and item, no ties: u1 and u3 prefer low item numbers, u2 i4 then high numbers
SCORES = {
    "u1": {"i1": 8, "i2": 7, "i3": 6, "i4": 5, "i5": 4, "i6": 3, "i7": 2, "i8": 1},
    "u2": {"i1": 1, "i2": 2, "i3": 3, "i4": 9, "i5": 5, "i6": 6, "i7": 4, "i8": 8},
    "u3": {"i1": 8, "i2": 7, "i3": 6, "i4": 5, "i5": 4, "i6": 3, "i7": 2, "i8": 4.5},
}
LOG2_3 = 1 / math.log2(3)  # the discount of rank 2


def write_split(root, name: str = "cold", split: dict = SPLIT) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for part, pairs in split.items():
        lines = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u, i in pairs]
        (folder / f"{name}.{part}.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\ttags:token_seq"] + [f"{i}\t{tags}" for i, tags in TAGS.items()]
    (folder / f"{name}.item").write_text("\n".join(items) + "\n")


def cold_config(root, **overrides) -> dict:
    config = tiny_config_dict(root, load_col={"inter": ["user_id", "item_id"]}, benchmark_filename=["train", "valid", "test"],
                              item_text_template="{tags}.", user_text_template=None, metrics=["Recall", "NDCG", "PaperRecall"],
                              topk=[1, 2], valid_metric="Recall@2", eval_batch_size=18)  # fmt: skip
    config.update(overrides)  # eval_batch_size 18 over 9 item ids: 2 users a batch
    return config


class FixedScores(torch.nn.Module):
    """A model whose full-sort scores are a fixed table."""

    USER_ID = "user_id"
    device = torch.device("cpu")

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def full_sort_predict(self, interaction):
        return self.table[interaction[self.USER_ID]].flatten().clone()


def views_of_fixed_scores(root, name: str = "cold", split: dict = SPLIT):
    from recbole.data import create_dataset, data_preparation

    from recbole_cllm4rec.cold_items import cold_item_mask, cold_item_views
    from recbole_cllm4rec.registry import Config

    write_split(root, name, split)
    config = Config(model="Pop", dataset=name, config_dict=cold_config(root))
    train, valid, test = data_preparation(config, create_dataset(config))
    dataset = train.dataset
    table = torch.zeros(dataset.user_num, dataset.item_num)
    for user, scores in SCORES.items():
        for item, score in scores.items():
            table[dataset.token2id("user_id", user), dataset.token2id("item_id", item)] = score
    model, cold = FixedScores(table), cold_item_mask(dataset)
    assert dataset.id2token("item_id", torch.nonzero(cold).squeeze(1)).tolist() == (
        ["i5", "i6", "i7", "i8"] if name == "cold" else []
    )
    return cold_item_views(model, valid, cold, config), cold_item_views(model, test, cold, config)


def test_views_of_a_fixed_ranking_are_the_hand_computed_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    valid, test = views_of_fixed_scores(tmp_path)
    # validation, training items masked; u3 has no cold target.
    # u1: i3 i4 i5* ... (i1 i2 masked): i5 3rd; among the cold: i5 1st.
    # u2: i4 i8 i6* i5 ... (i2 i3 masked): i6 3rd; among the cold: i8 i6, 2nd
    assert valid == pytest.approx({
        "cold-item recall@1": 0, "cold-item recall@2": 0, "cold-item ndcg@1": 0, "cold-item ndcg@2": 0,
        "cold-item paperrecall@1": 0, "cold-item paperrecall@2": 0,
        "cold-only recall@1": 0.5, "cold-only recall@2": 1, "cold-only ndcg@1": 0.5, "cold-only ndcg@2": (1 + LOG2_3) / 2,
        "cold-only paperrecall@1": 0.5, "cold-only paperrecall@2": 1,
    }, abs=1e-4)  # fmt: skip
    # test, training and validation items masked.
    # u1: i4 i6* i7* i8 (i1 i2 i3 i5 masked): 1 of 2 in the top 2; among the cold: i6 i7 i8, both.
    # u2: i4 i8 i5* i7 i1 (i2 i3 i6 masked): i5 3rd; among the cold: i8 i5, 2nd.
    # u3: i3 i8* i5 ... (i1 i4 i2 masked): 2nd; among the cold: 1st.
    u1_ndcg2 = LOG2_3 / (1 + LOG2_3)
    assert test == pytest.approx({
        "cold-item recall@1": 0, "cold-item recall@2": (0.5 + 0 + 1) / 3, "cold-item ndcg@1": 0,
        "cold-item ndcg@2": (u1_ndcg2 + 0 + LOG2_3) / 3, "cold-item paperrecall@1": 0, "cold-item paperrecall@2": (0.5 + 0 + 1) / 3,
        "cold-only recall@1": (0.5 + 0 + 1) / 3, "cold-only recall@2": 1, "cold-only ndcg@1": 2 / 3,
        "cold-only ndcg@2": (1 + LOG2_3 + 1) / 3, "cold-only paperrecall@1": 2 / 3, "cold-only paperrecall@2": 1,
    }, abs=1e-4)  # fmt: skip


def test_a_split_without_cold_items_has_no_views(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    warm = {**SPLIT, "train": SPLIT["train"] + [("u3", f"i{i}") for i in range(5, 9)]}
    assert views_of_fixed_scores(tmp_path, "warm", warm) == ({}, {})


def text_knn(root):
    from recbole.data import create_dataset, data_preparation

    from recbole_cllm4rec.registry import Config, get_model

    write_split(root)
    config = Config(model="TextKNN", dataset="cold", config_dict=cold_config(root))
    train, _, _ = data_preparation(config, create_dataset(config))
    return get_model("TextKNN")(config, train.dataset), train.dataset


def test_text_knn_scores_are_the_training_row_times_the_text_cosine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, dataset = text_knn(tmp_path)
    # u1 took i1 (red, soft) and i2 (red); the cosine of each item with them, an item not its own neighbour
    r = 1 / math.sqrt(2)
    expected = {"i1": r, "i2": r, "i3": 0.5, "i4": 0, "i5": 1 + r, "i6": 0, "i7": 0.5 + r, "i8": 0}
    u1 = dataset.token2id("user_id", "u1")
    scores = model.full_sort_predict({"user_id": torch.tensor([u1])}).numpy()
    items = dataset.token2id("item_id", list(expected))
    np.testing.assert_allclose(scores[items], list(expected.values()), rtol=1e-6, atol=1e-7)
    pairs = model.predict({"user_id": torch.tensor([u1, u1]), "item_id": torch.tensor(items[[6, 4]])})
    np.testing.assert_allclose(pairs.numpy(), [0.5 + r, 1 + r], rtol=1e-6)


def test_text_knn_refuses_a_run_without_item_text(tmp_path, monkeypatch):
    from recbole.data import create_dataset, data_preparation

    from recbole_cllm4rec.registry import Config, get_model

    monkeypatch.chdir(tmp_path)
    write_split(tmp_path)
    config = Config(model="TextKNN", dataset="cold", config_dict=cold_config(tmp_path, item_text_template=None))
    train, _, _ = data_preparation(config, create_dataset(config))
    with pytest.raises(ValueError, match=r"^TextKNN ranks items by their text: set item_text_template"):
        get_model("TextKNN")(config, train.dataset)


def test_every_model_of_a_comparison_reports_the_views(tmp_path, monkeypatch):
    import csv

    monkeypatch.chdir(tmp_path)
    write_split(tmp_path)
    # NeuMF has no full_sort_predict: its views come from predict, as RecBole's own
    results = run(["Pop", "TextKNN", "NeuMF"], "cold", config_dict=cold_config(tmp_path), results_dir=tmp_path / "results")
    for result in results:
        assert list(result["cold_result"]) == [f"{part} {view} {metric}@{k}" for part in ("test", "valid")
                                               for view in ("cold-item", "cold-only")
                                               for metric in ("recall", "ndcg", "paperrecall") for k in (1, 2)]  # fmt: skip
    # TextKNN, test among the cold items (scores as in the test above): u1 i7* first, u2 i5* first, u3's i8* has no text
    assert results[1]["cold_result"]["test cold-only recall@1"] == pytest.approx((0.5 + 1 + 0) / 3, abs=1e-4)
    (table,) = (tmp_path / "results").glob("*.csv")
    header, pop, knn, neumf = list(csv.reader(table.open()))
    assert "test cold-item recall@2" in header and "valid cold-only ndcg@1" in header
    column = header.index("test cold-only recall@1")
    assert float(knn[column]) == pytest.approx(0.5, abs=1e-4)


def test_two_gloo_processes_give_the_views_of_one_process(tmp_path, monkeypatch):
    from test_distributed import free_port

    from recbole_cllm4rec.quick_start import run_model

    monkeypatch.chdir(tmp_path)
    write_split(tmp_path)
    config = cold_config(tmp_path, epochs=2, stopping_step=10)
    single = run_model("CLLM4Rec", "cold", config_dict={**config, "checkpoint_dir": str(tmp_path / "one")})
    # 3 users on 2 ranks: rank 1's share is padded with a repeat of rank 0's first user
    (double,) = run(["CLLM4Rec"], "cold", config_dict={**config, "checkpoint_dir": str(tmp_path / "two")}, nproc=2,
                    port=free_port(), results_dir=tmp_path / "results")  # fmt: skip
    assert len(single["cold_result"]) == 24
    assert double["cold_result"] == pytest.approx(single["cold_result"], abs=1e-4)


def test_the_cold_items_benchmark_scores_each_configuration_as_the_model_itself(tmp_path, monkeypatch):
    """benchmarks/cold_items.py reads each user's prompt once and rescores per configuration: every
    row is the model's own full evaluation with that configuration set."""
    from conftest import load_benchmark
    from recbole.trainer import Trainer

    from recbole_cllm4rec.cold_items import cold_item_results
    from recbole_cllm4rec.quick_start import load_data_and_model, run_model

    monkeypatch.chdir(tmp_path)
    write_split(tmp_path)
    result = run_model("CLLM4Rec", "cold", config_dict=cold_config(tmp_path, cold_item_rows="text_map"))
    rows = load_benchmark("cold_items").main(["--checkpoint", result["checkpoint"], "--ridges", "0.3,3",
                                              "--bias-shifts", "0,2", "--pseudo-interactions", "0,1", "--test"])  # fmt: skip
    grid = [["text_map", r, b, k] for r in (0.3, 3.0) for b in (0.0, 2.0) for k in (0.0, 1.0)]
    assert [row[:4] for row in rows] == [["trained", None, None, None], ["content", None, None, None]] + grid
    config, model, _, train, valid, test = load_data_and_model(result["checkpoint"])
    model.eval()
    best = max(rows, key=lambda row: row[4])
    for row in rows:
        model.cold_item_rows = row[0]
        if row[1] is not None:
            model.text_map_ridge, model.text_map_bias_shift, model.text_map_pseudo_interactions = row[1:4]
        for part, data, columns in [("valid", valid, row[4:7])] + [("test", test, row[7:])] * (row is best):
            views = cold_item_results(model, {part: data}, train.dataset, config)
            own = [Trainer(config, model).evaluate(data, load_best_model=False)["recall@2"]]
            own += [views[f"{part} cold-item recall@2"], views[f"{part} cold-only recall@2"]]
            assert columns == pytest.approx(own, abs=1e-4), (row, part)
    assert len({tuple(row[4:7]) for row in rows}) > 1  # the configurations do score differently
