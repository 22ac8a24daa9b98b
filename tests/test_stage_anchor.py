"""benchmarks/stage_anchor.py (under trial): lambda_c per stage."""
import logging
from types import SimpleNamespace

from conftest import load_benchmark

from recbole_cllm4rec.trainer import CLLM4RecTrainer


def test_finetuning_anchors_at_finetune_lambda_c_once_pretraining_is_done(monkeypatch):
    seen = []
    monkeypatch.setattr(CLLM4RecTrainer, "pretrain", lambda trainer, show_progress=False: seen.append(trainer.model.lambda_c))
    load_benchmark("stage_anchor").install()
    for value, after in ((300.0, 300.0), (None, 1000.0)):
        trainer = SimpleNamespace(config={"finetune_lambda_c": value}, model=SimpleNamespace(lambda_c=1000.0),
                                  logger=logging.getLogger("test"))  # fmt: skip
        CLLM4RecTrainer.pretrain(trainer)
        assert seen[-1] == 1000.0 and trainer.model.lambda_c == after  # pretraining ties at lambda_c
