"""benchmarks/sparse_anchor.py (under trial): mutual regularization weighted up for sparse users and items."""
import torch
from conftest import load_benchmark, make_model

from recbole_cllm4rec.model.cllm4rec import CLLM4Rec


def test_sparsity_weights_are_the_capped_power_of_median_over_degree():
    weights = load_benchmark("sparse_anchor").sparsity_weights(torch.tensor([0, 1, 4, 16]), torch.tensor([0, 2, 8, 8, 100]), 0.5)
    # users: median 4 over the positive degrees; items: median 8; degree 0 counts as 1
    expected = [2.0, 2.0, 1.0, 0.5, 8**0.5, 2.0, 1.0, 1.0, (8 / 100) ** 0.5]
    torch.testing.assert_close(weights, torch.tensor(expected))
    assert load_benchmark("sparse_anchor").sparsity_weights(torch.tensor([1, 50, 50]), torch.tensor([1]), 2.0)[0] == 10.0  # 2500, capped
    floored = load_benchmark("sparse_anchor").sparsity_weights(torch.tensor([1, 4, 16]), torch.tensor([2, 8, 100]), 0.5, 1.0)
    torch.testing.assert_close(floored, torch.tensor([2.0, 1.0, 1.0, 2.0, 1.0, 1.0]))  # 0.5 and 0.28 raised to 1


def test_the_weighted_regularization_weighs_each_id_token_by_its_row(tiny_data):
    sparse_anchor = load_benchmark("sparse_anchor")
    before = (CLLM4Rec.build_item_head, CLLM4Rec.mutual_regularization)
    CLLM4Rec.build_item_head = getattr(before[0], "before_sparse_anchor", before[0])
    try:
        sparse_anchor.install()
        hook = CLLM4Rec.mutual_regularization
        _, model, _ = make_model(tiny_data, llm_layers=1, lambda_c=2.0, mutual_reg_sparsity=0.5)
        _, plain, _ = make_model(tiny_data, llm_layers=1, lambda_c=2.0)
    finally:
        CLLM4Rec.build_item_head, CLLM4Rec.mutual_regularization = before
    with torch.no_grad():
        for table in model.tables("content"):
            table.weight.add_(0.01)  # the two sides apart
    ids = model.documents.recommendation(torch.tensor([1, 2]), mask=False)[0]
    tokens = ids[model.layout.is_id(ids)]
    rows = model.layout.id_rows(tokens)
    by_hand = sum(
        model.anchor_weights[r] * ((model.embed(t[None], "collaborative") - model.embed(t[None], "content")) ** 2).sum()
        for t, r in zip(tokens, rows)
    ) * 2.0 / len(tokens)
    torch.testing.assert_close(hook(model, ids, "collaborative", ids), by_hand)
    assert not plain.sparse_anchor and not model.anchor_weights.eq(1).all()
