"""The plugin's entry points as a RecBole user meets them: per-model logs, charts, sampled
evaluation, small catalogs, hyperparameter search."""
import importlib.util
import random
from pathlib import Path

import pytest
from conftest import tiny_config_dict

from recbole_cllm4rec.hyper import run_hyper
from recbole_cllm4rec.quick_start import run, run_model


def write_dataset(root: Path, name: str, n_users: int, n_items: int, per_user: int, seed: int = 0) -> None:
    """``root/name/name.inter``: each user with ``per_user`` random items (timestamps in order)."""
    rng = random.Random(seed)
    (root / name).mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, n_users + 1):
        lines += [f"u{u}\ti{i}\t{len(lines)}" for i in rng.sample(range(1, n_items + 1), per_user)]
    (root / name / f"{name}.inter").write_text("\n".join(lines) + "\n")


def plain(root, **overrides) -> dict:
    """The plugin's defaults on the tiny backbone, without text (the generated data has none)."""
    return {"data_path": str(root), "llm": "tiny-random", "llm_cache_dir": str(root / "cache"), "state": "WARNING",
            "checkpoint_dir": str(root / "saved"), "show_progress": False, **overrides}  # fmt: skip


def test_a_comparison_gives_each_model_its_own_log_file_and_draws_a_chart(tiny_data):
    run(["Pop", "BPR"], "tiny", config_dict=tiny_config_dict(tiny_data, epochs=1, state="INFO"), results_dir=tiny_data / "results")
    for model in ("Pop", "BPR"):
        logs = list((tiny_data / "log" / model).glob("*.log"))
        assert len(logs) == 1 and f"INFO  {model}(" in logs[0].read_text()  # RecBole logs the model's structure
    assert "Trainable parameters" in next((tiny_data / "log" / "BPR").glob("*.log")).read_text()
    assert "BPR" not in next((tiny_data / "log" / "Pop").glob("*.log")).read_text()
    assert len(list((tiny_data / "results").glob("tiny-Pop-BPR-*.png"))) == 1
    if importlib.util.find_spec("tensorboard"):
        folders = sorted(p.name.split("-")[0] for p in (tiny_data / "log_tensorboard").iterdir())
        assert folders == ["BPR", "Pop"]


def test_pretraining_losses_reach_tensorboard(tiny_data):
    if not importlib.util.find_spec("tensorboard"):
        pytest.skip("tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data))
    (folder,) = (tiny_data / "log_tensorboard").iterdir()
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"Pretrain/collaborative loss", "Pretrain/content loss", "Pretrain/content mutual reg", "Loss/Train0"} <= tags


def test_sampled_evaluation_scores_each_user_once(tmp_path, monkeypatch):
    from recbole_cllm4rec.documents import Documents

    write_dataset(tmp_path, "small", n_users=12, n_items=150, per_user=12)
    monkeypatch.chdir(tmp_path)
    prompts = []
    real = Documents.recommendation

    def counting(self, users, mask):
        if not mask:
            prompts.extend(users.tolist())
        return real(self, users, mask)

    monkeypatch.setattr(Documents, "recommendation", counting)
    config = plain(tmp_path, epochs=1, pretrain_epochs=0, eval_args={"split": {"RS": [0.8, 0.1, 0.1]}, "group_by": "user",
                   "order": "RO", "mode": "uni100"}, metrics=["Recall", "NDCG"], valid_metric="Recall@10")  # fmt: skip
    result = run_model("CLLM4Rec", "small", config_dict=config)
    assert 0 <= result["test_result"]["recall@10"] <= 1
    assert sorted(prompts) == sorted(list(range(1, 13)) * 2)  # every user once for validation, once for test


def test_a_catalog_of_60_items_runs_with_the_defaults(tmp_path, monkeypatch, caplog):
    write_dataset(tmp_path, "sixty", n_users=30, n_items=60, per_user=10)
    monkeypatch.chdir(tmp_path)
    result = run_model("CLLM4Rec", "sixty", config_dict=plain(tmp_path, epochs=1))
    assert "topk [10, 20, 40, 100] reaches beyond the 60 items of sixty: topk [10, 20, 40]" in caplog.text
    assert set(result["test_result"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20, 40)}
    with pytest.raises(ValueError, match=r"valid_metric Recall@100 needs a top-100 of sixty's 60 items: .*Recall@40"):
        run_model("CLLM4Rec", "sixty", config_dict=plain(tmp_path, epochs=1, valid_metric="Recall@100"))


def test_run_hyper_searches_two_cllm4rec_keys(tiny_data):
    pytest.importorskip("hyperopt")
    space = tiny_data / "space.hyper"
    space.write_text("lambda_c choice [0.5,2.0]\nmask_ratio choice [0.2,0.4]\n")
    fixed = tiny_config_dict(tiny_data, content_warmup_epochs=0, finetune_content=False)
    best = run_hyper("CLLM4Rec", "tiny", str(space), config_dict=fixed, output_file=str(tiny_data / "trials.txt"))
    trials = (tiny_data / "trials.txt").read_text()
    assert trials.count("Test result:") == 4
    for lambda_c in (0.5, 2.0):
        for mask_ratio in (0.2, 0.4):
            assert f"lambda_c:{lambda_c}, mask_ratio:{mask_ratio}" in trials
    assert best["params"]["lambda_c"] in (0.5, 2.0) and "recall@10" in best["test_result"]
