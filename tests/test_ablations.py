"""Ablations that are registered subclasses of CLLM4Rec: found by name, CLLM4Rec's defaults, trainer
and checkpoints, and only their own step changed."""
import pytest
import torch
from conftest import make_model, tiny_config_dict
from test_checkpoint import Crash, crash_on_call, schedule

from recbole_cllm4rec import cli
from recbole_cllm4rec.model.ablations import CLLM4RecWordsStart
from recbole_cllm4rec.quick_start import load_data_and_model, run_model
from recbole_cllm4rec.registry import Config, get_model, get_trainer
from recbole_cllm4rec.trainer import CLLM4RecTrainer


def words_start_model(root, **overrides) -> CLLM4RecWordsStart:
    """``conftest.make_model``'s model, as the subclass."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    config = Config(model="CLLM4RecWordsStart", dataset="tiny", config_dict=tiny_config_dict(root, **overrides))
    init_seed(config["seed"], config["reproducibility"])
    train, _, _ = data_preparation(config, create_dataset(config))
    return CLLM4RecWordsStart(config, train.dataset)


def test_a_subclass_is_found_by_name_with_cllm4recs_trainer_and_defaults(tiny_data):
    from recbole.utils import ModelType

    assert get_model("CLLM4RecWordsStart") is CLLM4RecWordsStart
    assert get_trainer(ModelType.GENERAL, "CLLM4RecWordsStart") is CLLM4RecTrainer
    config = Config(model="CLLM4RecWordsStart", dataset="ml-100k", config_dict={"state": "WARNING"})
    plain = Config(model="CLLM4Rec", dataset="ml-100k", config_dict={"state": "WARNING"})
    keys = ("llm", "llm_layers", "lambda_c", "text_start_dims", "readout_skip", "epochs", "item_text_template")
    assert {k: config[k] for k in keys} == {k: plain[k] for k in keys}  # properties/CLLM4Rec.yaml and the dataset preset
    assert config["model"] == "CLLM4RecWordsStart" and config["text_start_dims"] == 256


def test_the_words_start_reads_the_bag_of_word_embeddings_and_changes_only_the_start(tiny_data):
    model = words_start_model(tiny_data, llm_layers=1, text_start_dims=2)
    bags = model.item_text_states(max_tokens=64)
    content, layout = model.documents.content, model.layout
    for d in range(len(content)):
        ids = content.ids[d, : content.length[d]].long()
        if layout.is_user(ids).any():
            continue
        item = int(layout.id_rows(ids[layout.is_item(ids)])[0]) - model.n_users
        words = layout.as_words(ids, *model.plain_words)[int(content.prompt_length[d]) :]
        torch.testing.assert_close(bags[item], model.backbone.get_input_embeddings()(words).mean(0), rtol=1e-5, atol=1e-6)
    _, plain, _ = make_model(tiny_data, llm_layers=1, text_start_dims=2)
    width = model.collaborative_item_emb.embedding_dim
    for ours, theirs in zip(model.tables("collaborative"), plain.tables("collaborative")):
        torch.testing.assert_close(ours.weight[:, : width - 2], theirs.weight[:, : width - 2])  # the SVD part
    assert not torch.allclose(model.collaborative_item_emb.weight[1:, -2:], plain.collaborative_item_emb.weight[1:, -2:])


def test_the_command_line_runs_a_subclass(tiny_data):
    cli.main(["--model=CLLM4RecWordsStart", "--dataset=tiny", f"--data_path={tiny_data}", "--llm=tiny-random",
              f"--llm_cache_dir={tiny_data / 'cache'}", "--llm_layers=1", "--item_text_template={title}.",
              "--load_col={'inter': ['user_id', 'item_id'], 'item': ['item_id', 'title']}", "--content_warmup_epochs=0",
              "--pretrain_epochs=0", "--epochs=1", "--train_batch_tokens=256", f"--checkpoint_dir={tiny_data / 'saved'}",
              "--topk=[5]", "--valid_metric=Recall@5", "--state=WARNING"])  # fmt: skip
    assert len(list((tiny_data / "saved").glob("CLLM4RecWordsStart-*-last.pth"))) == 1


def test_a_subclass_resumes_and_loads_as_cllm4rec_does(tiny_data, monkeypatch):
    uninterrupted = run_model("CLLM4RecWordsStart", "tiny", config_dict=schedule(tiny_data))
    assert uninterrupted["checkpoint"].rsplit("/", 1)[1].startswith("CLLM4RecWordsStart-")
    with monkeypatch.context() as patch:
        crash_on_call(patch, 8)  # mid finetuning
        with pytest.raises(Crash):
            run_model("CLLM4RecWordsStart", "tiny", config_dict=schedule(tiny_data))
    resumed = run_model("CLLM4RecWordsStart", "tiny", config_dict=schedule(tiny_data, resume=True))
    assert resumed["test_result"] == uninterrupted["test_result"]
    config, model, *_ = load_data_and_model(resumed["checkpoint"])
    assert type(model) is CLLM4RecWordsStart and config["lambda_c"] == 1000.0
