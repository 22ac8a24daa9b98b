"""benchmarks/text_states.py: the LM's reading of the item text as EASE features, by source."""
import numpy as np
import torch
from conftest import load_benchmark


def test_text_states_average_the_texts_own_tokens_and_skip_empty_texts():
    from recbole_cllm4rec.backbone import load_backbone

    text_states = load_benchmark("text_states")
    backbone, tokenizer = load_backbone("tiny-random")
    states = text_states.text_states(backbone, tokenizer, "item is described as:", ["", "a red film", "blue"], [1, 2])
    assert sorted(states) == [0, 1, 2] and not states[0][0].any()  # row 0: no text, no features
    words = tokenizer(" a red film", add_special_tokens=False).input_ids
    by_hand = backbone.get_input_embeddings().weight[words].mean(0).detach().numpy()
    np.testing.assert_allclose(states[0][1], by_hand, rtol=1e-5, atol=1e-6)  # the text's tokens, not the prompt's
    units = text_states.unit_rows(np.array([[0.0, 0.0], [3.0, 1.0], [1.0, 1.0]], dtype=np.float32))
    # centred over the rows with text (mean (2, 1)), then unit rows: (1, 0), (-1, 0); the empty row stays 0
    np.testing.assert_allclose(units, [[0, 0], [1, 0], [-1, 0]], atol=1e-7)


def test_text_states_prints_a_row_per_source(tiny_data):
    text_states = load_benchmark("text_states")
    report = text_states.main(["--dataset=tiny", f"--data_path={tiny_data}", "--depths=1,2", "--reg=10", "--weights=1",
                               "llm=tiny-random", f"llm_cache_dir={tiny_data / 'cache'}", "item_text_template='{title}.'",
                               "load_col={inter: [user_id, item_id, rating, timestamp], item: [item_id, title]}"])  # fmt: skip
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row[0] for row in rows] == ["| none (EASE)", "| word embeddings (no layer)", "| LM states, 1 layers",
                                        "| LM states, 2 layers", "| tags and words (EASEText's features)"]  # fmt: skip
    assert all(0.0 <= float(row[1].split()[0]) <= 1.0 for row in rows)


def test_ease_with_text_rows_is_ease_on_the_stacked_matrix():
    text_states = load_benchmark("text_states")
    torch.manual_seed(0)
    train = (torch.rand(6, 5) > 0.5).float().numpy()
    features = torch.randn(5, 3).numpy()
    stacked = np.vstack([train, 2.0 * features.T])  # X = [R; a F^T], a = 2
    gram = stacked.T.astype(np.float64) @ stacked + 10.0 * np.eye(5)
    inverse = np.linalg.inv(gram)
    weights = inverse / -np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    scores = text_states.ease_scores(train, features @ features.T, 2.0, 10.0)
    np.testing.assert_allclose(scores, train @ weights, rtol=1e-4, atol=1e-5)
