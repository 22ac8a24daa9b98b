"""The ID tables' starts: the SVD of the training matrix, and the text start (``text_start_dims``)."""
import pytest
import torch
from conftest import make_model

from recbole_cllm4rec.model.starts import svd_factors, text_components, write_text_start


def test_item_text_states_are_the_content_sides_states_on_the_plain_text(tiny_data):
    _, model, _ = make_model(tiny_data, llm_layers=1)
    states = model.item_text_states(max_tokens=64)  # several forward passes
    content, layout = model.documents.content, model.layout
    seen = set()
    for d in range(len(content)):
        ids = content.ids[d, : content.length[d]].long()
        if layout.is_user(ids).any():
            continue
        item = int(layout.id_rows(ids[layout.is_item(ids)])[0]) - model.n_users
        words = layout.as_words(ids, *model.plain_words)
        # the whole backbone (content_layers ~), last layer after the final norm, text tokens only
        hidden = model.backbone.base_model(input_ids=words[None]).last_hidden_state[0]
        by_hand = hidden[int(content.prompt_length[d]) :].mean(0)
        torch.testing.assert_close(states[item], by_hand, rtol=1e-4, atol=1e-5)
        seen.add(item)
    assert seen and not states[[i for i in range(model.n_items) if i not in seen]].any()  # no document: zero


def test_catalogs_without_text_do_not_share_their_cached_readings(tiny_data):
    """A corpus without item text is the same (empty) for every dataset: the cache key holds the catalog's size."""
    no_text = {"item_text_template": None, "user_text_template": None, "llm_layers": 1}
    _, model, _ = make_model(tiny_data, **no_text)
    assert model.item_text_states(max_tokens=64).shape[0] == model.n_items
    inter = tiny_data / "tiny" / "tiny.inter"  # a smaller catalog: the last 10 of the 40 items leave
    kept = [line for line in inter.read_text().splitlines() if not any(f"\ti{n}\t" in line for n in range(31, 41))]
    inter.write_text("\n".join(kept) + "\n")
    item = tiny_data / "tiny" / "tiny.item"
    item.write_text("\n".join(line for line in item.read_text().splitlines() if not any(line.startswith(f"i{n}\t") for n in range(31, 41))) + "\n")
    _, smaller, _ = make_model(tiny_data, **no_text)
    assert smaller.n_items < model.n_items and smaller.item_text_states(max_tokens=64).shape[0] == smaller.n_items


def test_the_text_takes_the_last_dimensions_at_its_share_of_the_squared_norm():
    table = torch.tensor([[9.0, 9.0, 9.0, 9.0], [1.0, 1.0, 5.0, 5.0], [3.0, 1.0, 5.0, 5.0]])
    components = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    write_text_start(table, components, share=0.5)
    # rows 1-2: the rest's mean squared norm is (2 + 10) / 2 = 6, the components' (1 + 4) / 2 = 2.5: scale sqrt(6 / 2.5)
    scale = (6 / 2.5) ** 0.5
    torch.testing.assert_close(table, torch.tensor([[9.0, 9.0, 9.0, 9.0], [1.0, 1.0, scale, 0.0], [3.0, 1.0, 0.0, 2 * scale]]))
    assert table[1:, 2:].pow(2).sum(1).mean() == pytest.approx(table[1:, :2].pow(2).sum(1).mean())


def test_text_components_are_whitened_principal_components_of_the_rows_with_text():
    states = torch.tensor([[0.0, 0.0], [3.0, 1.0], [1.0, 1.0], [2.0, 1.0]])  # row 0: no text
    components = text_components(states, dims=1, seed=0)
    # centred (mean (2, 1)): (1, 0), (-1, 0), (0, 0); one component along x, up to its sign, unit norm
    torch.testing.assert_close(components.abs(), torch.tensor([[0.0], [0.5**0.5], [0.5**0.5], [0.0]]), atol=1e-5, rtol=0)


def test_the_start_writes_the_text_into_both_sides_item_tables_only(tiny_data):
    _, plain, _ = make_model(tiny_data, llm_layers=1, text_start_dims=0)
    _, model, _ = make_model(tiny_data, llm_layers=1, text_start_dims=2, text_start_share=0.25)
    for side in ("collaborative", "content"):
        user, item = model.tables(side)
        plain_user, plain_item = plain.tables(side)
        torch.testing.assert_close(user.weight, plain_user.weight)
        torch.testing.assert_close(item.weight[:, :-2], plain_item.weight[:, :-2])
        assert not torch.allclose(item.weight[1:, -2:], plain_item.weight[1:, -2:])
        share = item.weight[1:, -2:].pow(2).sum(1).mean() / item.weight[1:].pow(2).sum(1).mean()
        assert share.item() == pytest.approx(0.25, rel=1e-4)
    torch.testing.assert_close(model.collaborative_item_emb.weight, model.content_item_emb.weight)


@pytest.mark.parametrize("overrides", [{"item_text_template": None}, {"item_init": "random"}, {"text_start_share": 0.0}])
def test_the_start_is_the_svd_alone_without_item_text_an_svd_start_or_a_share(tiny_data, overrides):
    _, plain, _ = make_model(tiny_data, llm_layers=1, text_start_dims=0, **overrides)
    _, model, _ = make_model(tiny_data, llm_layers=1, text_start_dims=2, **overrides)
    for ours, theirs in zip(model.id_tables(), plain.id_tables()):
        torch.testing.assert_close(ours.weight, theirs.weight)


def test_the_text_takes_at_most_half_of_a_row(tiny_data):
    _, plain, _ = make_model(tiny_data, llm_layers=1, text_start_dims=0)
    _, model, _ = make_model(tiny_data, llm_layers=1, text_start_dims=10_000)
    width = model.collaborative_item_emb.embedding_dim
    torch.testing.assert_close(model.collaborative_item_emb.weight[:, : width - width // 2], plain.collaborative_item_emb.weight[:, : width - width // 2])
    assert not torch.allclose(model.collaborative_item_emb.weight[1:, -(width // 2) :], plain.collaborative_item_emb.weight[1:, -(width // 2) :])


def test_svd_factors_rebuild_the_degree_normalized_training_matrix_at_full_rank():
    history = torch.tensor([[0, 0], [1, 2], [2, 0], [1, 3]])  # user 0 has no items; 0 pads
    (users, items), (user_degree, item_degree) = svd_factors(history, 4, 4, rank=3, seed=0)
    assert user_degree.tolist() == [0, 2, 1, 2] and item_degree.tolist() == [0, 2, 2, 1]
    matrix = torch.zeros(4, 4)
    matrix[[1, 1, 2, 3, 3], [1, 2, 2, 1, 3]] = 1.0
    normalized = matrix / (user_degree.clamp(min=1)[:, None] * item_degree.clamp(min=1)[None, :]).float().sqrt()
    assert torch.allclose(users @ items.T, normalized, atol=1e-5)
