"""The paper preset trains as the public code: its selection rule (``PaperScore``), finetuning from
each side's lowest-loss pretraining epoch (``finetune_start``), its sequence length."""
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config_dict

from recbole_cllm4rec.checkpoint import load_checkpoint
from recbole_cllm4rec.metrics import PaperScore
from recbole_cllm4rec.quick_start import run_model
from recbole_cllm4rec.trainer import CLLM4RecTrainer

PRESET = Path(__file__).resolve().parent.parent / "properties" / "presets" / "CLLM4Rec-paper.yaml"


def test_paper_score_is_paper_recall_at_20_and_40_plus_ndcg_at_100_by_hand(monkeypatch):
    import numpy as np
    from recbole.evaluator.collector import DataStruct

    monkeypatch.setattr(np, "float", float, raising=False)  # RecBole's NDCG needs the alias its Config sets

    hits = torch.zeros(2, 101, dtype=torch.long)
    hits[0, [0, 29, 89]] = 1  # user A: hits at ranks 1, 30, 90 of 3 held-out items
    hits[0, 100] = 3
    hits[1, 49] = 1  # user B: its 1 held-out item at rank 50
    hits[1, 100] = 1
    struct = DataStruct()
    struct.set("rec.topk", hits)
    score = PaperScore({"topk": [20, 40, 100], "metric_decimal_place": 6}).calculate_metric(struct)
    ideal_a = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    user_a = 1 / 3 + 2 / 3 + (1 + 1 / math.log2(31) + 1 / math.log2(91)) / ideal_a
    user_b = 0 + 0 + 1 / math.log2(51)
    assert score == {"paperscore": round((user_a + user_b) / 2, 6)}
    with pytest.raises(ValueError, match="add 100 to topk"):
        PaperScore({"topk": [20, 40], "metric_decimal_place": 4})


def test_paper_score_runs_as_a_recbole_metric_and_refuses_a_small_catalog(tiny_data):
    config = tiny_config_dict(tiny_data, metrics=["Recall", "PaperScore"], topk=[20, 40, 100], valid_metric="PaperScore")
    with pytest.raises(ValueError, match="PaperScore reads the top 100 items and tiny has 40"):
        run_model("Pop", "tiny", config_dict=config)


def scripted_validation(monkeypatch, results: list[dict]) -> None:
    """Validation results of successive finetuning epochs, in place of the evaluator's."""
    from recbole.trainer import Trainer

    remaining = iter(results)
    monkeypatch.setattr(Trainer, "evaluate", lambda self, *args, **kwargs: dict(next(remaining)))


def test_the_selection_keeps_the_epoch_with_the_best_sum_over_every_epoch(tiny_data, monkeypatch):
    # Recall@20 peaks in epoch 1, the sum in epoch 3; no improvement in epoch 2 does not stop the run
    results = [
        {"recall@20": 0.50, "paperscore": 1.00},
        {"recall@20": 0.60, "paperscore": 0.90},
        {"recall@20": 0.40, "paperscore": 0.95},
        {"recall@20": 0.45, "paperscore": 1.20},
    ]
    scripted_validation(monkeypatch, results + [{"recall@20": 0.0, "paperscore": 0.0}])  # then the test
    saved = {}
    real_save = CLLM4RecTrainer._save_checkpoint

    def save(self, epoch, verbose=True, **kwargs):
        saved[epoch] = [t.weight.detach().clone() for t in self.model.id_tables()]
        return real_save(self, epoch, verbose, **kwargs)

    monkeypatch.setattr(CLLM4RecTrainer, "_save_checkpoint", save)
    paper = yaml.safe_load(PRESET.read_text())
    # validation is scripted: the 40-item catalog's missing top 100 (PaperScore's) never gets read
    from recbole_cllm4rec import quick_start

    monkeypatch.setattr(quick_start, "fit_topk_to_catalog", lambda config, n_items: None)
    config = tiny_config_dict(
        tiny_data, valid_metric=paper["valid_metric"], epochs=4, stopping_step=paper["stopping_step"], pretrain_epochs=0,
        content_warmup_epochs=0, eval_step=1, metrics=["Recall", "PaperScore"], topk=[20, 100],
    )
    trainer = {}
    monkeypatch.setattr(CLLM4RecTrainer, "release_files", lambda self: trainer.setdefault("t", self))
    result = run_model("CLLM4Rec", "tiny", config_dict=config)
    assert result["best_valid_result"] == results[3]
    assert set(saved) == {0, 3}  # the best model was replaced when the sum improved, not the recall
    best = load_checkpoint(result["checkpoint"], "cpu")
    assert best["epoch"] == 3
    torch.testing.assert_close(best["state_dict"]["collaborative_item_emb.weight"], saved[3][1])
    assert [r["paperscore"] for r in trainer["t"].valid_history] == [r["paperscore"] for r in results]


class Crash(Exception):
    pass


def scripted_pretraining(monkeypatch, losses: dict[str, list[float]], crash_at: int | None = None):
    """Pretraining passes report ``losses[side][epoch]`` (after really training); the tables after
    every pass, and those the first finetuning pass starts from, are recorded."""
    record = {"after": {}, "finetune_start": None, "calls": 0}
    real = CLLM4RecTrainer._run_pass

    def run_pass(self, side, optimizer, epoch_idx, show_progress, regularize=True):
        record["calls"] += 1
        if record["calls"] == crash_at:
            raise Crash(f"killed in pass {crash_at}")
        if self.stage == "finetune":
            if record["finetune_start"] is None:
                record["finetune_start"] = [t.weight.detach().clone() for t in self.model.id_tables()]
            return real(self, side, optimizer, epoch_idx, show_progress, regularize)
        real(self, side, optimizer, epoch_idx, show_progress, regularize)
        record["after"][(side, epoch_idx)] = [t.weight.detach().clone() for t in self.model.tables(side)]
        return losses[side][epoch_idx], 0.0

    monkeypatch.setattr(CLLM4RecTrainer, "_run_pass", run_pass)
    return record


LOSSES = {"collaborative": [3.0, 1.0, 2.0], "content": [5.0, 6.0, 4.0]}  # lowest: epoch 1, epoch 2


@pytest.mark.parametrize("rule", ["lowest_loss", "last"])
def test_finetuning_starts_from_each_sides_lowest_loss_epoch(tiny_data, monkeypatch, rule):
    config = tiny_config_dict(tiny_data, content_warmup_epochs=0, pretrain_epochs=3, epochs=1, finetune_start=rule)
    record = scripted_pretraining(monkeypatch, LOSSES)
    result = run_model("CLLM4Rec", "tiny", config_dict=config)
    start = record["finetune_start"]
    expected = {"lowest_loss": {"collaborative": 1, "content": 2}, "last": {"collaborative": 2, "content": 2}}[rule]
    for k, side in enumerate(("collaborative", "collaborative", "content", "content")):
        after = record["after"][(side, expected[side])][k % 2]
        torch.testing.assert_close(start[k], after, rtol=0, atol=0)
    if rule == "lowest_loss":
        assert not torch.equal(start[0], record["after"][("collaborative", 2)][0])  # not the last epoch's
        kept = load_checkpoint(result["checkpoint"].replace(".pth", "-pretrain.pth"), "cpu")
        assert kept["lowest_pretrain_loss"] == {"collaborative": (1, 1.0), "content": (2, 4.0)}


def test_a_resumed_pretraining_remembers_the_lowest_loss_epochs(tiny_data, monkeypatch):
    config = tiny_config_dict(tiny_data, content_warmup_epochs=0, pretrain_epochs=3, epochs=1, finetune_start="lowest_loss")
    with monkeypatch.context() as patch:
        uninterrupted = scripted_pretraining(patch, LOSSES)
        run_model("CLLM4Rec", "tiny", config_dict=config)
    with monkeypatch.context() as patch:
        scripted_pretraining(patch, LOSSES, crash_at=5)  # passes: c0 t0 c1 t1 | c2 dies
        with pytest.raises(Crash):
            run_model("CLLM4Rec", "tiny", config_dict={**config, "checkpoint_dir": str(tiny_data / "other")})
    resumed = scripted_pretraining(monkeypatch, LOSSES)
    run_model("CLLM4Rec", "tiny", config_dict={**config, "checkpoint_dir": str(tiny_data / "other"), "resume": True})
    assert set(resumed["after"]) == {("collaborative", 2), ("content", 2)}  # only the epoch left
    for mine, theirs in zip(resumed["finetune_start"], uninterrupted["finetune_start"]):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_the_paper_preset_uses_the_public_codes_length_start_and_selection():
    preset = yaml.safe_load(PRESET.read_text())
    assert preset["max_seq_len"] == 1024 and preset["finetune_start"] == "lowest_loss"
    assert preset["valid_metric"] == "PaperScore" and "PaperScore" in preset["metrics"]
    assert preset["stopping_step"] >= preset["epochs"] == 150  # every epoch is validated, none stops the run
