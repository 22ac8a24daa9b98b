"""run_recbole.py: RecBole's flags, both override spellings, the multi-model comparison."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config_dict

from recbole_cllm4rec.cli import parse_args
from recbole_cllm4rec.quick_start import run

ROOT = Path(__file__).resolve().parent.parent


def test_both_override_spellings_and_runner_flags():
    args, overrides = parse_args(
        ["-m", "CLLM4Rec,BPR", "--dataset=tiny", "--epochs=3", "--llm", "tiny-random", "--topk=[5,10]", "--reproducibility"]
    )
    assert args.model == "CLLM4Rec,BPR" and args.dataset == "tiny"
    assert overrides == {"epochs": "3", "llm": "tiny-random", "topk": "[5,10]", "reproducibility": "True"}


def test_a_stray_positional_argument_is_refused():
    with pytest.raises(SystemExit, match="unexpected argument 'oops'"):
        parse_args(["--epochs=1", "oops"])


def test_comparison_uses_one_split_and_writes_the_table(tiny_data, capsys):
    results = run(
        ["BPR", "Pop", "MultiVAE"],
        "tiny",
        config_dict=tiny_config_dict(tiny_data, epochs=2),
        results_dir=tiny_data / "results",
    )
    assert [r["model"] for r in results] == ["BPR", "Pop", "MultiVAE"]
    assert len({r["split"] for r in results}) == 1
    out = capsys.readouterr().out
    assert "| model | test recall@5 |" in out and "| MultiVAE |" in out
    (csv_file,) = (tiny_data / "results").glob("*.csv")
    rows = list(csv.reader(open(csv_file)))
    assert rows[0][:2] == ["model", "test recall@5"] and [r[0] for r in rows[1:]] == ["BPR", "Pop", "MultiVAE"]
    assert {"train time (s)", "eval time (s)", "split"} <= set(rows[0])
    assert float(rows[2][1]) == results[1]["test_result"]["recall@5"]


def test_unknown_model_fails_before_anything_trains(tiny_data):
    with pytest.raises(ValueError, match="Unknown model 'BRP'"):
        run(["BPR", "BRP"], "tiny", config_dict=tiny_config_dict(tiny_data), results_dir=tiny_data / "results")
    assert not (tiny_data / "results").exists() and not (tiny_data / "saved").exists()


def test_run_recbole_script_end_to_end(tiny_data):
    config = tiny_config_dict(tiny_data)
    cmd = [sys.executable, str(ROOT / "run_recbole.py"), "--model=CLLM4Rec,Pop", "--dataset", "tiny"]
    for key in ("data_path", "llm", "item_text_template", "topk", "valid_metric", "load_col", "checkpoint_dir"):
        cmd.append(f"--{key}={config[key]}".replace("'", '"') if key == "load_col" else f"--{key}={config[key]}")
    cmd += ["--pretrain_epochs=1", "--content_warmup_epochs=0", "--epochs=1", "--show_progress=False"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tiny_data)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| CLLM4Rec |" in done.stdout and "| Pop |" in done.stdout
    assert "pretraining epoch 0 collaborative" in done.stderr + done.stdout
