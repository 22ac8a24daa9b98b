"""benchmarks/diagnose.py: per-bucket recall of a checkpoint and EASE on the checkpoint's own split."""
import pytest
from conftest import load_benchmark, tiny_config_dict


def load_script():
    return load_benchmark("diagnose")


def test_diagnosis_overall_recall_is_recboles_test_recall(tiny_data):
    from recbole_cllm4rec.quick_start import run_model

    config = tiny_config_dict(tiny_data, topk=[20], valid_metric="Recall@20", metrics=["Recall"])
    result = run_model("CLLM4Rec", "tiny", config_dict=config)
    ease = run_model("EASE", "tiny", config_dict={**config, "reg_weight": 10.0})
    text = load_script().main(["--checkpoint", result["checkpoint"], "--ease_reg_weight=10", "--out", str(tiny_data / "d.md")])
    overall = next(line for line in text.splitlines() if line.startswith("overall:"))
    # the same users, masking and recall definition as RecBole's evaluation of both models
    assert f"CLLM4Rec {result['test_result']['recall@20']:.4f}" in overall
    assert f"EASE {ease['test_result']['recall@20']:.4f}" in overall
    assert (tiny_data / "d.md").read_text().startswith("Test Recall@20 by the user's number of training items")
    user_rows = [line for line in text.splitlines() if line.startswith("| ") and "-" in line.split("|")[1]]
    assert sum(int(line.split("|")[2]) for line in user_rows) == int(text.split("(")[1].split()[0])
    # the parts of what the head reads: the full model's row is RecBole's number again
    assert f"| both (the model) | {result['test_result']['recall@20']:.4f} |" in text
    assert "| the skip alone (w 3) |" in text and "| the layers' pooled states (x " in text
    with pytest.raises(SystemExit):
        load_script().main([])


def test_scoring_lengths_rescore_validation_with_longer_prompts(tiny_data):
    module = load_benchmark("scoring_lengths")
    from recbole_cllm4rec.quick_start import run_model

    config = tiny_config_dict(tiny_data, valid_metric="Recall@10")
    result = run_model("CLLM4Rec", "tiny", config_dict=config)
    prompt = 60  # the byte-level tiny tokenizer spells the prompt out: 60 tokens leave room for a few items
    scores = module.main(["--checkpoint", result["checkpoint"], f"--lengths=128,{prompt}"])
    assert scores[128]["recall@10"] == result["best_valid_result"]["recall@10"]  # as trained and validated
    assert set(scores) == {128, prompt}


def test_diagnosis_against_easetext_on_a_cold_split_sets_the_cold_items_apart(tmp_path, monkeypatch):
    from test_cold_items import cold_config, write_split

    from recbole_cllm4rec.quick_start import run_model

    monkeypatch.chdir(tmp_path)
    write_split(tmp_path)
    config = cold_config(tmp_path, cold_item_rows="text_map", metrics=["Recall"], topk=[2], valid_metric="Recall@2")
    result = run_model("CLLM4Rec", "cold", config_dict=config)
    easetext = run_model("EASEText", "cold", config_dict={**config, "reg_weight": 10.0, "text_weight": 2.0})
    text = load_script().main(["--checkpoint", result["checkpoint"], "--baseline=EASEText", "--ease_reg_weight=10",
                               "--text_weight=2", "--k=2"])  # fmt: skip
    overall = next(line for line in text.splitlines() if line.startswith("overall:"))
    assert overall == f"overall: CLLM4Rec {result['test_result']['recall@2']:.4f}, EASEText {easetext['test_result']['recall@2']:.4f}"
    # test: i1 (2 training interactions) and the cold i5, i6, i7, i8, one test interaction each
    assert "| CLLM4Rec | EASEText | CLLM4Rec / EASEText |" in text
    assert "| cold (no training interactions): 4 items | 0 | 4 |" in text
    # where the baseline reaches none (EASEText and ml-100k-cold's cold items), no ratio, not a division by zero
    assert load_script().ratio(0.1219, 0.0) == "-" and load_script().ratio(0.5, 0.25) == "2.00"
