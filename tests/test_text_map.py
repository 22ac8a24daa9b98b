"""Items without interactions in the item head: the text map and each ``cold_item_rows`` mode, checked by hand."""
import logging

import pytest
import torch

from recbole_cllm4rec.cache import cached_value
from recbole_cllm4rec.model.text_map import cold_head_rows, fit_text_map


def test_fit_text_map_by_hand():
    states = torch.tensor([[1.0], [2.0], [3.0]])
    rows = torch.tensor([[2.0, 1.0], [4.0, 1.0], [6.0, 1.0]])
    weight, bias = fit_text_map(states, rows, ridge=0.0)  # exact: rows = 2 x, 1
    assert torch.allclose(weight, torch.tensor([[2.0, 0.0]]), atol=1e-6)
    assert torch.allclose(bias, torch.tensor([0.0, 1.0]), atol=1e-6)
    # ridge 1: centred x = (-1, 0, 1), Gram 2, penalty 1 x 2 -> slope 4 / (2 + 2) = 1, bias 4 - 2 x 1 = 2
    weight, bias = fit_text_map(states, rows, ridge=1.0)
    assert torch.allclose(weight, torch.tensor([[1.0, 0.0]]), atol=1e-6)
    assert torch.allclose(bias, torch.tensor([2.0, 1.0]), atol=1e-6)


def test_fit_text_map_weighs_each_row():
    states = torch.tensor([[0.0], [1.0], [2.0]])
    rows = torch.tensor([[0.0], [1.0], [5.0]])
    # weights 1, 1, 2 (mean 4/3: 0.75, 0.75, 1.5): weighted means x 1.25, y 2.75; centred x (-1.25, -0.25,
    # 0.75), y (-2.75, -1.75, 2.25); slope sum w x y / sum w x^2 = (2.578125 + 0.328125 + 2.53125) /
    # (1.171875 + 0.046875 + 0.84375) = 5.4375 / 2.0625 = 2.636..., bias 2.75 - 1.25 x 2.636... = -0.545...
    weight, bias = fit_text_map(states, rows, ridge=0.0, weights=torch.tensor([1, 1, 2]))
    assert weight.item() == pytest.approx(5.4375 / 2.0625, abs=1e-5)
    assert bias.item() == pytest.approx(2.75 - 1.25 * 5.4375 / 2.0625, abs=1e-5)
    # an item with twice the weight counts as that row twice
    twice = fit_text_map(torch.tensor([[0.0], [1.0], [2.0], [2.0]]), torch.tensor([[0.0], [1.0], [5.0], [5.0]]), ridge=0.0)
    assert torch.allclose(weight, twice[0], atol=1e-5) and torch.allclose(bias, twice[1], atol=1e-5)


def tables():
    # items 0 (padding), 1-3 warm, 4 cold; head rows = [embedding (1 dim), bias]
    head = torch.tensor([[9.0, 9.0], [1.0, 0.5], [2.0, 1.5], [3.0, 2.5], [-5.0, -3.0]])
    content = torch.tensor([[0.0], [0.1], [0.2], [0.3], [0.7]])
    interactions = torch.tensor([0, 2, 1, 1, 0])
    states = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    return head, content, interactions, states


def test_trained_keeps_the_rows():
    head, content, warm, states = tables()
    assert torch.equal(cold_head_rows("trained", head, content, warm, lambda: states, 0.0), head)


def test_content_takes_the_content_row_and_the_mean_warm_bias():
    head, content, warm, states = tables()
    rows = cold_head_rows("content", head, content, warm, lambda: states, 0.0)
    assert rows[4].tolist() == pytest.approx([0.7, 1.5])  # mean bias of items 1-3: (0.5 + 1.5 + 2.5) / 3
    assert torch.equal(rows[:4], head[:4])  # warm rows and padding untouched
    assert torch.equal(warm, tables()[2])  # the caller's counts are not modified


def test_text_map_extrapolates_from_the_warm_items():
    head, content, warm, states = tables()
    rows = cold_head_rows("text_map", head, content, warm, lambda: states, 0.0)
    # on items 1-3 the row is (x, x - 0.5), whatever their weights: item 4 (x = 4) gets (4, 3.5)
    assert rows[4].tolist() == pytest.approx([4.0, 3.5], abs=1e-5)
    assert torch.equal(rows[:4], head[:4])


def test_text_map_bias_shift_lifts_the_mapped_bias_alone():
    head, content, warm, states = tables()
    rows = cold_head_rows("text_map", head, content, warm, lambda: states, 0.0, bias_shift=1.5)
    assert rows[4].tolist() == pytest.approx([4.0, 5.0], abs=1e-5)  # (4, 3.5) with the bias 1.5 higher
    assert torch.equal(rows[:4], head[:4])


def test_pseudo_interactions_shrink_each_warm_row_toward_the_row_its_text_maps_to():
    head, content, interactions, states = tables()
    head[3, 1] = 4.0  # item 3 off the line of items 1 and 2: the map no longer fits every warm row
    weight, bias = fit_text_map(states[1:4], head[1:4], 0.0, interactions[1:4])
    mapped = states @ weight + bias
    rows = cold_head_rows("text_map", head, content, interactions, lambda: states, 0.0, bias_shift=1.0, pseudo_interactions=2.0)
    for item in (1, 2, 3):  # n = 2, 1, 1 training interactions against 2 pseudo-interactions of the mapped row
        n = float(interactions[item])
        assert rows[item].tolist() == pytest.approx(((n * head[item] + 2 * mapped[item]) / (n + 2)).tolist(), abs=1e-5)
    assert rows[4].tolist() == pytest.approx([mapped[4, 0].item(), mapped[4, 1].item() + 1.0], abs=1e-5)  # the cold row, shifted
    assert torch.equal(rows[0], head[0]) and not torch.allclose(rows[3], head[3])
    # without cold items too; without pseudo-interactions the warm rows stay as trained
    every_item_warm = torch.tensor([0, 2, 1, 1, 3])
    assert not torch.equal(cold_head_rows("text_map", head, content, every_item_warm, lambda: states, 0.0, pseudo_interactions=2.0), head)
    assert torch.equal(cold_head_rows("text_map", head, content, interactions, lambda: states, 0.0)[:4], head[:4])


def test_a_bias_shift_without_an_item_bias_is_refused(tiny_data):
    from conftest import make_model

    with pytest.raises(ValueError, match=r"^text_map_bias_shift shifts the item bias: it needs item_bias=True"):
        make_model(tiny_data, item_bias=False, text_map_bias_shift=1.0)


def test_text_map_leaves_a_cold_item_without_text_alone():
    head, content, warm, states = tables()
    states[4] = 0.0
    rows = cold_head_rows("text_map", head, content, warm, lambda: states, 0.0)
    assert torch.equal(rows, head)


def test_cached_value_builds_once(tmp_path):
    calls = []
    path = tmp_path / "sub" / "x.pt"
    build = lambda: calls.append(1) or torch.arange(3)  # noqa: E731
    assert cached_value(path, build, "x").tolist() == [0, 1, 2]
    assert cached_value(path, build, "x").tolist() == [0, 1, 2]
    assert len(calls) == 1 and [p.name for p in path.parent.iterdir()] == ["x.pt"]


def test_cached_value_rebuilds_a_damaged_file(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"not a tensor")
    assert cached_value(path, lambda: torch.ones(2), "x").tolist() == [1.0, 1.0]
    assert torch.load(path).tolist() == [1.0, 1.0] and [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def without_interactions(root, item: str) -> None:
    inter = root / "tiny" / "tiny.inter"
    inter.write_text("\n".join(line for line in inter.read_text().splitlines() if f"\t{item}\t" not in line) + "\n")


def test_warm_rows_stay_and_a_cold_item_is_scored_as_the_mode_says(tiny_data):
    """One model, its mode set in turn: the scoring rows are remade for each mode, not kept from the last."""
    from conftest import make_model

    without_interactions(tiny_data, "i40")  # in tiny.item (with text), in no interaction: cold
    _, model, (train, _, _) = make_model(tiny_data, text_map_ridge=0.5, text_map_bias_shift=0.25)
    model.eval()
    item = train.dataset.token2id("item_id", "i40")
    trained, warm = model.head_rows().detach(), model.item_interactions > 0
    assert not warm[item] and warm.sum() == model.n_items - 2  # padding and i40
    expected = {
        "trained": trained[item],
        "content": torch.cat([model.content_item_emb.weight[item].detach(), trained[warm, -1:].mean(0)]),
        # a new item with i40's text gets the row i40 is scored with
        "text_map": model.text_map_rows(["The comedy film number 40. Genre: comedy."])[0],
    }
    for mode in ("text_map", "content", "trained"):
        model.cold_item_rows = mode
        rows = model.scoring_rows()
        assert torch.equal(rows[warm], trained[warm])
        assert torch.allclose(rows[item], expected[mode], atol=1e-5), mode
    assert not torch.allclose(expected["text_map"], expected["content"]) and not torch.allclose(expected["content"], trained[item])


def test_recommend_ranks_a_new_item_from_its_text_as_the_same_text_cold_item(tiny_data, capsys):
    from conftest import tiny_config_dict

    from recbole_cllm4rec.quick_start import run_model
    from recbole_cllm4rec.recommend import main

    without_interactions(tiny_data, "i40")
    result = run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data, cold_item_rows="text_map"))
    (tiny_data / "new.item").write_text("item_id:token\ttitle:token_seq\tgenre:token\nn1\tThe comedy film number 40\tcomedy\n")
    out = tiny_data / "recs.tsv"
    (tiny_data / "users.txt").write_text("u1\nu2\n")
    main(["--checkpoint", result["checkpoint"], "--users-file", "users.txt", "--topk", "40", "--new-items", "new.item",
          "--out", str(out)])
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    for user in ("u1", "u2"):
        scores = {item: float(score) for u, _, item, score, _ in rows if u == user}
        assert "n1" in scores and scores["n1"] == pytest.approx(scores["i40"], abs=2e-4)
    (tiny_data / "old.item").write_text("item_id:token\ttitle:token_seq\tgenre:token\ni3\tx\tcomedy\n")
    with pytest.raises(SystemExit, match="already in the catalog"):
        main(["--checkpoint", result["checkpoint"], "--user", "u1", "--new-items", "old.item"])


def test_cached_value_rebuilds_a_value_its_check_refuses(tmp_path, caplog):
    path = tmp_path / "x.pt"
    torch.save({"ids": torch.zeros(3)}, path)

    def two_ids(value):
        if len(value["ids"]) != 2:
            raise ValueError(f"{len(value['ids'])} ids")

    with caplog.at_level(logging.WARNING, logger="recbole_cllm4rec.cache"):
        value = cached_value(path, lambda: {"ids": torch.ones(2)}, "x", check=two_ids)
    assert value["ids"].tolist() == [1.0, 1.0] and torch.load(path)["ids"].tolist() == [1.0, 1.0]
    assert f"x: the cached {path} is damaged (3 ids): building it again" in caplog.text
    assert cached_value(path, lambda: {"ids": torch.zeros(5)}, "x", check=two_ids)["ids"].tolist() == [1.0, 1.0]
