"""Lean atomic checkpoints, resume after a crash, the recommend CLI, and clear errors on bad input."""
import glob
import logging

import pytest
import torch
from conftest import make_model, tiny_config_dict, write_tiny_dataset

from recbole_cllm4rec import recommend
from recbole_cllm4rec.model.cllm4rec import CLLM4Rec
from recbole_cllm4rec.quick_start import load_data_and_model, run_model
from recbole_cllm4rec.checkpoint import load_checkpoint
from recbole_cllm4rec.trainer import CLLM4RecTrainer


class Crash(Exception):
    pass


def crash_on_call(monkeypatch, n: int) -> None:
    """Make the n-th pass (1-based) of any stage die, as a killed process would."""
    real = CLLM4RecTrainer._run_pass
    calls = {"n": 0}

    def run_pass(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise Crash(f"killed in pass {n}")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CLLM4RecTrainer, "_run_pass", run_pass)


def schedule(root, **overrides):
    # passes: warm-up content (1), pretrain epoch 0: collab (2) content (3), epoch 1: collab (4)
    # content (5), finetune epoch 0: rec (6) content (7), epoch 1: rec (8) content (9), epoch 2 ...
    return tiny_config_dict(root, content_warmup_epochs=1, pretrain_epochs=2, epochs=3, stopping_step=10, **overrides)


def test_checkpoints_hold_only_what_trains(tiny_data):
    result = run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data))
    checkpoint = load_checkpoint(result["checkpoint"], "cpu")
    tables = {f"{side}_{kind}_emb.weight" for side in ("collaborative", "content") for kind in ("user", "item")}
    assert set(checkpoint["state_dict"]) == tables | {"item_bias.weight", "backbone_fingerprint"}
    assert checkpoint["stage"] == "finetune" and "optimizer" not in checkpoint
    resume_point = load_checkpoint(result["checkpoint"].replace(".pth", "-last.pth"), "cpu")
    assert resume_point["epoch"] == 0 and resume_point["rng"]["torch"].dtype == torch.uint8
    assert resume_point["optimizer"]["state"]  # Adam moments of the ID tables
    with pytest.raises(ValueError, match="resume from the run's -last.pth"):
        run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data, resume=result["checkpoint"]))
    assert not glob.glob(str(tiny_data / "saved" / "*.tmp*"))  # atomic writes leave no temp files


@pytest.mark.parametrize("crash_at", [3, 8])  # mid pretraining; mid finetuning
def test_kill_and_resume_matches_the_uninterrupted_run(tiny_data, monkeypatch, crash_at):
    uninterrupted = run_model("CLLM4Rec", "tiny", config_dict=schedule(tiny_data))
    with monkeypatch.context() as patch:
        crash_on_call(patch, crash_at)
        with pytest.raises(Crash):
            run_model("CLLM4Rec", "tiny", config_dict=schedule(tiny_data))
    with monkeypatch.context() as patch:  # the resume point holds the tables: their starts are not redone
        refuse_table_starts(patch)
        resumed = run_model("CLLM4Rec", "tiny", config_dict=schedule(tiny_data, resume=True))
    assert resumed["test_result"] == uninterrupted["test_result"]
    assert resumed["best_valid_result"] == uninterrupted["best_valid_result"]


def refuse_table_starts(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the ID tables' start ran for a model whose tables are loaded")

    monkeypatch.setattr(CLLM4Rec, "init_from_svd", refuse)
    monkeypatch.setattr(CLLM4Rec, "init_from_text", refuse)


def test_a_loaded_model_skips_the_starts_and_holds_the_checkpoints_tables(tiny_data, monkeypatch):
    result = run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data))
    state = load_checkpoint(result["checkpoint"], "cpu")["state_dict"]
    refuse_table_starts(monkeypatch)
    config, model, *_ = load_data_and_model(result["checkpoint"])
    assert config["item_init"] == "svd" and config["text_start_dims"] > 0  # the starts it skipped
    for name, weight in model.state_dict().items():
        if name in state and name != "backbone_fingerprint":
            torch.testing.assert_close(weight, state[name], rtol=0, atol=0)


def test_a_corrupted_checkpoint_is_refused(tiny_data):
    result = run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data))
    path = result["checkpoint"]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="unreadable"):
        load_checkpoint(path, "cpu")
    with pytest.raises(RuntimeError, match="unreadable"):
        run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data, resume=path))


def test_a_checkpoint_of_another_backbone_is_refused(tiny_data):
    result = run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data))
    checkpoint = load_checkpoint(result["checkpoint"], "cpu")
    checkpoint["state_dict"]["backbone_fingerprint"][0] ^= 1
    _, model, _ = make_model(tiny_data)
    with pytest.raises(RuntimeError, match="different backbone"):
        model.load_state_dict(checkpoint["state_dict"])


def test_nan_loss_stops_with_stage_and_batch_and_keeps_the_last_epoch(tiny_data, monkeypatch):
    from recbole_cllm4rec.model.cllm4rec import CLLM4Rec

    real = CLLM4Rec.collaborative_lm_loss
    calls = {"n": 0}

    def poisoned(self, users, shard=(0, 1)):
        calls["n"] += 1
        loss, reg = real(self, users, shard)
        return (loss * float("nan"), reg) if calls["n"] > 4 else (loss, reg)  # epoch 0 has 4 batches

    monkeypatch.setattr(CLLM4Rec, "collaborative_lm_loss", poisoned)
    with pytest.raises(ValueError, match=r"collaborative loss or its gradient is not finite .* epoch 2, batch 0") as error:
        run_model("CLLM4Rec", "tiny", config_dict=schedule(tiny_data))
    resume_point = str(error.value).rsplit(" ", 1)[-1]
    assert load_checkpoint(resume_point, "cpu")["epoch"] == 1  # warm-up (0) and pretraining epoch 1 done


def test_recommend_cli_prints_unseen_items_with_titles(tiny_data, capsys):
    result = run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data))
    recommend.main(["--checkpoint", result["checkpoint"], "--user", "u3", "--topk", "5"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    seen = {line.split("\t")[1] for line in open(tiny_data / "tiny" / "tiny.inter").read().splitlines()[1:] if line.startswith("u3\t")}
    for rank, line in enumerate(lines, start=1):
        fields = line.split()
        assert int(fields[0]) == rank and fields[1] not in seen
        number = fields[1][1:]
        assert line.endswith(f"film number {number}")


def test_recommend_cli_batches_a_users_file_to_tsv(tiny_data):
    result = run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data))
    (tiny_data / "users.txt").write_text("u1\nu2\nu7\n")
    out = tiny_data / "recs.tsv"
    recommend.main(["--checkpoint", result["checkpoint"], "--users-file", str(tiny_data / "users.txt"), "--topk", "3", "--batch-size", "2", "--out", str(out)])
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert rows[0] == ["user", "rank", "item", "score", "title"]
    assert [r[0] for r in rows[1:]] == ["u1"] * 3 + ["u2"] * 3 + ["u7"] * 3
    with pytest.raises(SystemExit, match=r"unknown user id\(s\) \['nobody'\]"):
        recommend.main(["--checkpoint", result["checkpoint"], "--user", "nobody"])


def test_users_missing_from_the_user_file_are_counted(tmp_path, monkeypatch, caplog):
    write_tiny_dataset(tmp_path)
    user_file = tmp_path / "tiny" / "tiny.user"
    lines = user_file.read_text().splitlines()
    user_file.write_text("\n".join(lines[:-5]) + "\n")  # the last 5 users have no row
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="recbole_cllm4rec.documents"):
        _, model, _ = make_model(tmp_path)
    assert model.n_users == 31  # no interaction is dropped
    assert "5 of 30 users have no text" in caplog.text
    assert len(model.documents.content) == 40 + 25
