"""benchmarks/reproduce.py (the GPU recipe's script) on CPU with the tiny recipe: rows, files, resume."""
import csv
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce.py"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

    # a rerun trains nothing: every finished run is read back
    monkeypatch.setattr(reproduce, "run_model", lambda *a, **k: pytest.fail("ran a finished model again"))
    assert reproduce.main(args) == rows
