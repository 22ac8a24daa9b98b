"""Tried, not promoted (`docs/results.md`): ``lambda_c`` per stage. A hook in this process only
(``install()``); the model file and the trainer are untouched.

    python benchmarks/reproduce.py --dataset=amazon-beauty-paper --data_path=../shared/datasets \\
        --recipe=main --models=CLLM4Rec-stage-anchor

``finetune_lambda_c: x``: pretraining ties the two sides at ``lambda_c``, finetuning anchors the
collaborative tables to the (then frozen) content tables at ``x``. Why: ``lambda_c`` does two jobs.
In pretraining it is how much of what the content LM writes into the content tables reaches the
collaborative ones; in finetuning it is how far the collaborative tables may leave their start.
A looser anchor (300 against 1000) helped Beauty on its long histories and head items
(``docs/results.md``); a tight tie in pretraining may carry more of the text. ``~``: one value.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import recbole_cllm4rec  # noqa: E402,F401

from recbole_cllm4rec.trainer import CLLM4RecTrainer  # noqa: E402


def install() -> None:
    """``finetune_lambda_c``, as a hook on ``CLLM4RecTrainer.pretrain`` in this process only."""
    if hasattr(CLLM4RecTrainer.pretrain, "before_stage_anchor"):
        return
    pretrain = CLLM4RecTrainer.pretrain

    def staged(trainer: CLLM4RecTrainer, show_progress: bool = False) -> None:
        pretrain(trainer, show_progress)  # also on a resumed run (its finished epochs skipped)
        value = trainer.config["finetune_lambda_c"]
        if value is not None:
            trainer.logger.info(f"finetuning anchors at lambda_c {float(value)} (pretraining: {trainer.model.lambda_c})")
            trainer.model.lambda_c = float(value)

    staged.before_stage_anchor = pretrain
    CLLM4RecTrainer.pretrain = staged
