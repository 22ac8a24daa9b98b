"""Data-parallel CLLM4Rec: 2 gloo processes on CPU give the one-process run's losses and metrics."""
import socket

import pytest
import torch.multiprocessing as mp
from conftest import tiny_config_dict

from recbole_cllm4rec.quick_start import _run_rank, run, run_model
from recbole_cllm4rec.trainer import CLLM4RecTrainer


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def schedule(root, **overrides):
    # 4 pretraining passes and 2 finetuning epochs; odd batch sizes so ranks get unequal shards
    return tiny_config_dict(root, content_warmup_epochs=1, pretrain_epochs=1, epochs=2, stopping_step=10,
                            train_batch_tokens=300, **overrides)  # fmt: skip


def assert_same_losses(a: list, b: list) -> None:
    """(phase, stage, epoch) equal, (loss, mutual reg) equal to float tolerance."""
    assert [row[:3] for row in a] == [row[:3] for row in b]
    for x, y in zip(a, b):
        assert x[3:] == pytest.approx(y[3:], rel=1e-4, abs=1e-6)


def assert_same_run(a: dict, b: dict) -> None:
    assert_same_losses(a["losses"], b["losses"])
    assert a["test_result"] == pytest.approx(b["test_result"], abs=1e-4)
    assert a["split"] == b["split"]


def test_two_gloo_processes_match_one_process(tiny_data):
    single = run_model("CLLM4Rec", "tiny", config_dict=schedule(tiny_data, checkpoint_dir=str(tiny_data / "one")))
    config = schedule(tiny_data, checkpoint_dir=str(tiny_data / "two"))
    (double,) = run(["CLLM4Rec"], "tiny", config_dict=config, nproc=2, port=free_port(), results_dir=tiny_data / "results")
    assert len(single["losses"]) == 7  # warm-up, collaborative + content, 2 x (recommendation, content)
    assert_same_run(double, single)
    # one run, one set of files: written by rank 0 only
    assert sorted(p.name for p in (tiny_data / "two").iterdir()) == sorted(
        [double["checkpoint"].split("/")[-1], double["checkpoint"].split("/")[-1].replace(".pth", "-last.pth")]
    )
    assert len(list((tiny_data / "results").glob("*.md"))) == len(list((tiny_data / "results").glob("*.csv"))) == 1


def _crashing_rank(rank, crash_at, *args):
    """A rank whose ``crash_at``-th pass dies, as a killed job would (every rank at the same pass)."""
    real, calls = CLLM4RecTrainer._run_pass, {"n": 0}

    def run_pass(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise RuntimeError(f"killed in pass {crash_at}")
        return real(self, *a, **k)

    CLLM4RecTrainer._run_pass = run_pass
    _run_rank(rank, *args)


def test_kill_and_resume_under_two_processes(tiny_data):
    config = schedule(tiny_data, checkpoint_dir=str(tiny_data / "saved"))
    launch = {"world_size": 2, "nproc": 2, "ip": "localhost", "offset": 0}
    (uninterrupted,) = run(["CLLM4Rec"], "tiny", config_dict=dict(config), nproc=2, port=free_port())
    queue = mp.get_context("spawn").SimpleQueue()
    killed = {**config, **launch, "port": free_port()}
    with pytest.raises(mp.ProcessRaisedException, match="killed in pass 6"):
        # passes: warm-up (1), pretraining (2, 3), finetuning epoch 0 (4, 5), epoch 1 (6: killed)
        mp.spawn(_crashing_rank, args=(6, "CLLM4Rec", "tiny", None, killed, True, queue), nprocs=2, join=True)
    (resumed,) = run(["CLLM4Rec"], "tiny", config_dict={**config, "resume": True}, nproc=2, port=free_port())
    assert len(resumed["losses"]) == 2  # finetuning epoch 1 only
    assert_same_losses(resumed["losses"], uninterrupted["losses"][-2:])
    assert resumed["test_result"] == pytest.approx(uninterrupted["test_result"], abs=1e-4)


def test_torchrun_launches_the_same_run(tiny_data):
    import csv
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    config = schedule(tiny_data, checkpoint_dir=str(tiny_data / "saved"))
    single = run_model("CLLM4Rec", "tiny", config_dict=dict(config))
    (tiny_data / "run.yaml").write_text(yaml.safe_dump(config))
    script = Path(__file__).resolve().parent.parent / "run_recbole.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               "--model=CLLM4Rec", "--dataset=tiny", "--config_files=run.yaml", "--results_dir=torchrun"]  # fmt: skip
    out = subprocess.run(command, cwd=tiny_data, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (table,) = (tiny_data / "torchrun").glob("*.csv")
    row = next(csv.DictReader(table.open()))
    for metric, value in single["test_result"].items():
        assert float(row[f"test {metric}"]) == pytest.approx(value, abs=1e-4)
    assert row["split"] == single["split"]
