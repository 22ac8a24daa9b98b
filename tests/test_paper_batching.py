"""``train_batch_documents``: N documents per step in random order, as the public code batches (20)."""
import math

import pytest
import torch
from conftest import make_model

from recbole_cllm4rec.trainer import CLLM4RecTrainer


@pytest.mark.parametrize("per_step", [7, 20])
def test_n_documents_per_step_in_every_pass(tiny_data, per_step):
    config, model, _ = make_model(tiny_data, train_batch_documents=per_step)
    trainer = CLLM4RecTrainer(config, model)
    users = int((model.documents.history_len > 0).sum())  # 30 users, every one with training items
    docs = len(model.documents.content)  # 40 item texts + 30 user texts
    assert (users, docs) == (30, 70)
    for pass_name, units in (("collaborative", users), ("content", docs), ("recommendation", users)):
        torch.manual_seed(0)
        batches, _ = trainer.pass_batches(pass_name)
        assert len(batches) == math.ceil(units / per_step)  # 30 / 7 -> 5 steps, 70 / 20 -> 4 ...
        assert [len(b) for b in batches[:-1]] == [per_step] * (len(batches) - 1)
        expected = torch.arange(len(model.documents.content)) if pass_name == "content" else trainer.train_users
        assert sorted(torch.cat(batches).tolist()) == sorted(expected.tolist())  # each document once
        torch.manual_seed(1)
        assert [b.tolist() for b in trainer.pass_batches(pass_name)[0]] != [b.tolist() for b in batches]  # random order
    assert trainer.users_per_batch == per_step  # the finetuning loss is the mean over a step's N users


def test_the_paper_preset_takes_twenty_documents_per_step():
    from pathlib import Path

    import yaml

    preset = Path(__file__).resolve().parent.parent / "properties" / "presets" / "CLLM4Rec-paper.yaml"
    assert yaml.safe_load(preset.read_text())["train_batch_documents"] == 20
