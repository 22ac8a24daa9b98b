"""benchmarks/reproduce.py (the GPU recipe's script) on CPU with the tiny recipe: rows, files, resume."""
import csv
import json
from pathlib import Path

import pytest
from conftest import BENCHMARKS, load_benchmark


def load_script():
    return load_benchmark("reproduce")


def test_reproduce_runs_every_model_once_and_writes_the_table(tiny_data, monkeypatch):
    reproduce = load_script()
    monkeypatch.setitem(reproduce.SWEEPS, "EASE", [{"reg_weight": 1.0}, {"reg_weight": 1000.0}])
    args = [
        "--dataset=tiny", f"--data_path={tiny_data}", "--models=CLLM4Rec,Pop,EASE", "--recipe=tiny",
        f"--work={tiny_data / 'work'}", f"--out={tiny_data / 'out'}",
        "--config=load_col={inter: [user_id, item_id], item: [item_id, title, genre], user: [user_id, age]}",
        "--config=topk=[20, 40]", "--config=item_text_template='{title}. Genre: {genre}.'", "--config=llm_cache_dir=" + str(tiny_data / "cache"),
    ]  # fmt: skip
    rows = reproduce.main(args)
    assert [row[0] for row in rows] == ["CLLM4Rec", "Pop", "EASE"]
    with open(tiny_data / "out" / "tiny.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == ["CLLM4Rec", "Pop", "EASE"]
    assert {"recall@20", "recall@40", "ndcg@100", "paperrecall@20"} <= set(table[0])
    assert all(float(r["paperrecall@20"]) >= float(r["recall@20"]) for r in table)
    assert len({r["split"] for r in table}) == 1
    assert len(list((tiny_data / "work" / "tiny").glob("EASE-*.json"))) == 2  # both sweep points ran
    assert (tiny_data / "out" / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cllm4rec = json.loads(next((tiny_data / "work" / "tiny").glob("CLLM4Rec-*.json")).read_text())
    assert len(cllm4rec["valid_history"]) == 1  # one finetuning epoch: one point of the validation curve
    assert cllm4rec["valid_history"][0]["recall@20"] == cllm4rec["best_valid_result"]["recall@20"]

    # a rerun trains nothing: every finished run is read back
    monkeypatch.setattr(load_benchmark("common"), "run_model", lambda *a, **k: pytest.fail("ran a finished model again"))
    assert reproduce.main(args) == rows

    # --keep copies rows of the earlier table instead of rerunning those models
    kept = [a for a in args if not a.startswith("--models")] + ["--models=CLLM4Rec", "--keep=EASE,Pop"]
    again = reproduce.main(kept)
    assert [row[0] for row in again] == ["CLLM4Rec", "EASE", "Pop"]
    assert again[1] == ["" if v is None else str(v) for v in rows[2]]  # as the CSV holds them
    with open(tiny_data / "out" / "tiny.csv") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["CLLM4Rec", "EASE", "Pop"]
    with pytest.raises(SystemExit, match="no row for BPR"):
        reproduce.main(kept[:-1] + ["--keep=BPR"])

    # a kept row of a cold split keeps its cold views: the csv is rewritten with them
    with open(tiny_data / "out" / "tiny.csv") as f:
        header, *old = list(csv.reader(f))
    with open(tiny_data / "out" / "tiny.csv", "w", newline="") as f:
        csv.writer(f).writerows([header[:-1] + reproduce.COLD + ["hardware"]] + [r[:-1] + ["0.5"] * 8 + [r[-1]] for r in old])
    cold = reproduce.main(kept)
    assert cold[1][-8:] == ["0.5"] * 8


def test_gpu_script_runs_the_gpu_recipe_on_cpu_with_a_tiny_backbone(tiny_data):
    """benchmarks/gpu_reproduce.sh as a lent GPU machine runs it (no pack here: nothing to unpack)."""
    import os
    import subprocess
    import sys

    script = BENCHMARKS / "gpu_reproduce.sh"
    out = tiny_data / "out"
    tiny = [
        "--config=llm=tiny-random", "--config=content_warmup_epochs=1", "--config=pretrain_epochs=1",
        "--config=epochs=2", "--config=train_batch_tokens=256", f"--config=llm_cache_dir={tiny_data / 'cache'}",
        "--config=load_col={inter: [user_id, item_id], item: [item_id, title, genre]}",
        "--config=item_text_template='{title}.'", "--config=topk=[20, 40]",
    ]  # fmt: skip
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(
        ["bash", str(script), "no-pack", str(tiny_data), str(out), "--dataset=tiny", "--recipe=gpu",
         "--models=CLLM4Rec,Pop", *tiny],
        check=True, env=env, cwd=tiny_data, capture_output=True,
    )  # fmt: skip
    with open(out / "tiny.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == ["CLLM4Rec", "Pop"]
    run = json.loads(next((out / "work" / "tiny").glob("CLLM4Rec-*.json")).read_text())
    # the gpu recipe's own keys, under the tiny overrides
    assert run["config"]["finetune_content"] is True and run["config"]["learning_rate"] == 1e-4
    assert run["config"]["pretrain_epochs"] == 1 and len(run["valid_history"]) == 2
    assert "finetune/content" in run["stage_seconds"]
    assert (out / "reproduce.log").stat().st_size > 0


def test_unknown_variant_is_refused(tiny_data):
    with pytest.raises(SystemExit, match="unknown CLLM4Rec variant"):
        load_script().main(["--dataset=tiny", f"--data_path={tiny_data}", "--models=CLLM4Rec-nope"])
    with pytest.raises(SystemExit, match="unknown recipe"):
        load_script().main(["--dataset=tiny", f"--data_path={tiny_data}", "--models=CLLM4Rec-paper@nope"])


def test_a_row_of_a_registered_subclass_runs_that_model_and_resumes_its_checkpoints(tmp_path, monkeypatch):
    reproduce, common = load_script(), load_benchmark("common")
    model, configs = reproduce.row_runs("CLLM4Rec-words-start", "tiny", no_sweep=False)
    assert model == "CLLM4RecWordsStart" and configs == [reproduce.RECIPES["tiny"]]
    runs = []

    def run_model(model, dataset, config_dict):
        runs.append((model, config_dict))
        return {"test_result": {}}

    monkeypatch.setattr(common, "run_model", run_model)
    work = tmp_path / "work"
    stored = common.run_once("CLLM4Rec-words-start", model, "ml-100k", configs[0], work)
    assert stored["config"] == {"model": "CLLM4RecWordsStart", **configs[0]}  # the table shows which model ran
    (name, first), checkpoints = runs[0], Path(runs[0][1]["checkpoint_dir"])
    assert name == "CLLM4RecWordsStart" and "model" not in first and "resume" not in first
    assert checkpoints.parent == work / "saved" and checkpoints.name.startswith("CLLM4Rec-words-start-")
    # the same row again: read back; cut off before it finished: resumed from the model's own checkpoints
    assert common.run_once("CLLM4Rec-words-start", model, "ml-100k", configs[0], work) == stored and len(runs) == 1
    next(work.glob("CLLM4Rec-words-start-*.json")).unlink()
    checkpoints.mkdir(parents=True)
    (checkpoints / "CLLM4RecWordsStart-Dec-07-2025_12-00-00-last.pth").touch()
    common.run_once("CLLM4Rec-words-start", model, "ml-100k", configs[0], work)
    assert runs[1][1]["resume"] is True and runs[1][1]["checkpoint_dir"] == str(checkpoints)
    # the plain model's rows keep their names (and stored runs): the model is not part of their key
    common.run_once("CLLM4Rec", "CLLM4Rec", "ml-100k", configs[0], work)
    assert "model" not in runs[2][1] and "resume" not in runs[2][1]
