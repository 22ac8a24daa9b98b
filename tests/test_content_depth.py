"""The content LM at its own depth: its loss beside the plain prompt's, in the log; old checkpoints."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, tiny_config_dict

from recbole_cllm4rec.quick_start import run_model


def test_the_plain_prompt_loss_is_the_backbones_own_loss_on_the_text(tiny_data):
    """content_lm_loss(plain=True) by hand: the words user / item in place of the ID tokens, fed to the
    whole Hugging Face model as input_ids, cross-entropy over the text tokens only."""
    _, model, _ = make_model(tiny_data, llm_layers=1)
    content = model.documents.content
    docs = torch.tensor([0, 3, len(content) - 1])  # items and users
    loss, reg = model.content_lm_loss(docs, plain=True)
    user_word, item_word = model.plain_words
    nll, n = 0.0, 0
    for d in docs.tolist():
        ids = content.ids[d, : content.length[d]].long()
        assert model.layout.is_id(ids).any()
        words = torch.where(model.layout.is_user(ids), user_word, torch.where(model.layout.is_item(ids), item_word, ids))
        logits = model.backbone(input_ids=words[None]).logits[0].float()
        p = int(content.prompt_length[d])
        nll += F.cross_entropy(logits[p - 1 : -1, : model.layout.vocab_size], words[p:], reduction="sum").item()
        n += len(words) - p
    assert reg.item() == 0.0
    assert loss.item() == pytest.approx(nll / n, rel=1e-5)
    # with the ID tokens, the content tables change the loss; the plain one does not see them
    with torch.no_grad():
        model.content_item_emb.weight.mul_(50)
        model.content_user_emb.weight.mul_(50)
    assert model.content_lm_loss(docs, plain=True)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    assert abs(model.content_lm_loss(docs)[0].item() - loss.item()) > 1e-4


def test_each_content_pass_is_logged_beside_the_plain_prompt_and_a_uniform_guess(tiny_data):
    config = tiny_config_dict(tiny_data, llm_layers=1, state="INFO", content_warmup_epochs=1, pretrain_epochs=1, epochs=1)
    run_model("CLLM4Rec", "tiny", config_dict=config)
    log = next((tiny_data / "log" / "CLLM4Rec").glob("*.log")).read_text()
    lines = [line for line in log.splitlines() if " content [" in line]
    assert len(lines) == 2  # the warm-up epoch and the pretraining epoch
    plains = {line.split("plain prompt: ")[1].split(",")[0] for line in lines}
    assert len(plains) == 1  # computed once: the frozen backbone does not change
    uniform = float(lines[0].split("uniform: ")[1].rstrip("]"))
    assert uniform == pytest.approx(math.log(257), abs=1e-4)  # the tiny backbone's 257 word rows, its softmax


def test_a_checkpoint_from_before_content_layers_loads_with_the_depth_it_was_trained_with(tiny_data, tmp_path):
    from recbole_cllm4rec.quick_start import load_data_and_model

    result = run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data, llm_layers=1, content_layers=1))
    checkpoint = torch.load(result["checkpoint"], weights_only=False)
    del checkpoint["config"].final_config_dict["content_layers"]  # as saved before the key
    old = tmp_path / "old.pth"
    torch.save(checkpoint, old)
    config, model, *_ = load_data_and_model(str(old))
    assert config["content_layers"] == 1 and model.depths == {"collaborative": 1, "content": 1}


def test_a_finite_loss_with_a_non_finite_gradient_stops_before_the_step(tiny_data):
    """A zero ID row at full depth gave NaN gradients with a finite loss; Adam would have spread them."""
    from recbole_cllm4rec.trainer import CLLM4RecTrainer

    config, model, _ = make_model(tiny_data)
    trainer = CLLM4RecTrainer(config, model)
    before = model.content_item_emb.weight.detach().clone()
    model.content_item_emb.weight.register_hook(lambda grad: grad * float("nan"))
    with pytest.raises(ValueError, match=r"content loss or its gradient is not finite in epoch 0, batch 0"):
        trainer._run_pass("content", trainer.pretrain_optimizer, 0, False)
    assert torch.equal(model.content_item_emb.weight, before)
