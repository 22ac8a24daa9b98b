"""CLLM4Rec's algorithm on the tiny backbone, checked against hand-computed values."""
import math

import pytest
import torch
from conftest import make_model, tiny_config_dict

from recbole_cllm4rec.ids import SoftHardPrompt


def manual_embed(model, ids: list[int], side: str) -> torch.Tensor:
    """Token-by-token lookup in the extended vocabulary, independent of ``model.embed``."""
    user_emb, item_emb = model.tables(side)
    v, u = model.layout.vocab_size, model.n_users
    rows = []
    for t in ids:
        if t < v:
            rows.append(model.backbone.get_input_embeddings().weight[t])
        elif t < v + u:
            rows.append(user_emb.weight[t - v])
        else:
            rows.append(item_emb.weight[t - v - u])
    return torch.stack(rows)


def words(model, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def history(model, user: int) -> list[int]:
    n = int(model.documents.history_len[user])
    return model.documents.history_items[user, :n].tolist()


@pytest.mark.parametrize("item_bias", [False, True])
def test_only_the_id_tables_and_the_item_bias_get_gradients(tiny_data, item_bias):
    _, model, _ = make_model(tiny_data, item_bias=item_bias)
    users = torch.arange(1, 9)
    for loss, reg in (
        model.collaborative_lm_loss(users),
        model.content_lm_loss(torch.arange(6)),
        model.recommendation_loss(users, users_per_batch=8.0),
    ):
        (loss + reg).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    tables = {f"{side}_{kind}_emb.weight" for side in ("collaborative", "content") for kind in ("user", "item")}
    tables |= {"item_bias.weight"} if item_bias else set()
    assert trainable == tables == {n for n, p in model.named_parameters() if any(p is q for q in model.trainable_parameters())}
    assert with_grad == tables
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_id_token_ids_extend_the_vocabulary(tiny_data):
    _, model, _ = make_model(tiny_data, item_reorder=False)
    v, n_users = model.layout.vocab_size, model.n_users
    assert v == 257  # the tiny byte-level tokenizer
    users = torch.tensor([3, 7])
    ids, length, items = model.documents.collaborative(users)
    assert ids[:, 0].tolist() == [v + 3, v + 7]
    p = len(words(model, " has interacted with")) + 1
    for row, u in enumerate(users.tolist()):
        assert ids[row, p : length[row]].tolist() == [v + n_users + i for i in history(model, u)]


def test_prompt_drops_the_space_before_an_id_token(tiny_data):
    _, model, _ = make_model(tiny_data)
    prompt = SoftHardPrompt("{user} will, {item} x", model.tokenizer, model.layout)
    ids = prompt.ids(users=torch.tensor([2]), items=torch.tensor([5]))[0].tolist()
    v = model.layout.vocab_size
    assert ids == [v + 2] + words(model, " will,") + [v + model.n_users + 5] + words(model, " x")


def test_collaborative_loss_is_cross_entropy_over_items_only(tiny_data):
    _, model, _ = make_model(tiny_data, item_reorder=False, lambda_c=0.5)
    users = [2, 5, 11]
    loss, reg = model.collaborative_lm_loss(torch.tensor(users))

    v, n_users = model.layout.vocab_size, model.n_users
    prompt = words(model, " has interacted with")
    total, count, expected_reg = 0.0, 0, 0.0
    for u in users:
        items = history(model, u)
        ids = [v + u] + prompt + [v + n_users + i for i in items]
        hidden = model.backbone.base_model(inputs_embeds=manual_embed(model, ids, "collaborative")[None]).last_hidden_state[0]
        logits = hidden @ model.collaborative_item_emb.weight.T  # item vocabulary only
        logits[:, 0] = -math.inf  # padding item
        log_probs = logits.log_softmax(-1)
        for k, item in enumerate(items):
            total -= log_probs[len(prompt) + k, item].item()  # position of the token before item k
            count += 1
        tokens = [u] + items
        tables = [(model.collaborative_user_emb, model.content_user_emb)] + [
            (model.collaborative_item_emb, model.content_item_emb)
        ] * len(items)
        for t, (mine, other) in zip(tokens, tables):
            expected_reg += ((mine.weight[t] - other.weight[t]) ** 2).sum().item()
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    assert reg.item() == pytest.approx(0.5 * expected_reg, rel=1e-5)


def test_regularizer_leaves_the_other_side_alone(tiny_data):
    _, model, _ = make_model(tiny_data, item_init="random")  # (svd starts both sides equal: no pull yet)
    _, reg = model.collaborative_lm_loss(torch.tensor([1, 2]))
    reg.backward()
    assert model.content_user_emb.weight.grad is None and model.content_item_emb.weight.grad is None
    assert model.collaborative_user_emb.weight.grad[1:3].abs().sum() > 0
    model.zero_grad(set_to_none=True)
    _, reg = model.content_lm_loss(torch.arange(4))
    reg.backward()
    assert model.collaborative_user_emb.weight.grad is None and model.collaborative_item_emb.weight.grad is None
    assert model.content_item_emb.weight.grad.abs().sum() > 0


def test_content_loss_is_cross_entropy_over_words_after_the_prompt(tiny_data):
    _, model, _ = make_model(tiny_data)
    docs = model.documents.content
    loss, _ = model.content_lm_loss(torch.tensor([0, 3]), regularize=False)
    total, count = 0.0, 0
    for d in (0, 3):
        ids = docs.ids[d, : docs.length[d]].tolist()
        p = int(docs.prompt_length[d])
        v = model.layout.vocab_size
        assert ids[0] >= v and all(t < v for t in ids[p:])
        hidden = model.backbone.base_model(inputs_embeds=manual_embed(model, ids, "content")[None]).last_hidden_state[0]
        log_probs = model.backbone.lm_head(hidden).log_softmax(-1)
        for pos in range(p, len(ids)):
            total -= log_probs[pos - 1, ids[pos]].item()
            count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_item_text_documents_follow_the_template(tiny_data):
    _, model, (train, _, _) = make_model(tiny_data)
    docs = model.documents.content
    dataset = train.dataset
    item = dataset.token2id(dataset.iid_field, "i7")
    v, n_users = model.layout.vocab_size, model.n_users
    row = [d for d in range(len(docs)) if docs.ids[d, 0] == v + n_users + item][0]
    text = model.tokenizer.decode(docs.ids[row, docs.prompt_length[row] : docs.length[row]])
    assert text == " The horror film number 7. Genre: horror."
    assert len(docs) == (model.n_items - 1) + (model.n_users - 1)  # every item and user has text


@pytest.mark.parametrize("visible_weight", [1.0, 0.25, 0.0])
def test_masking_hides_the_right_share_of_items(tiny_data, visible_weight):
    _, model, _ = make_model(tiny_data, mask_ratio=0.2, visible_target_weight=visible_weight)
    v, n_users = model.layout.vocab_size, model.n_users
    users = torch.arange(1, model.n_users)
    ids, length, goal, not_shown = model.documents.recommendation(users, mask=True)
    suffix = model.documents.recommendation_suffix.ids(users=users)
    for row, u in enumerate(users.tolist()):
        full = set(history(model, u))
        row_ids = ids[row, : length[row]].tolist()
        visible = [t - v - n_users for t in row_ids if t >= v + n_users]
        hidden = full - set(visible)
        assert len(hidden) == max(1, math.floor(0.2 * len(full)))
        assert len(visible) == len(set(visible)) and set(visible) <= full
        assert row_ids[-suffix.shape[1] :] == suffix[row].tolist()
        assert sorted(goal[row][goal[row] > 0].tolist()) == sorted(full)  # every training item is a target
        assert set(goal[row][not_shown[row]].tolist()) == hidden
        assert not not_shown[row][goal[row] == 0].any()


def test_a_single_item_history_keeps_an_empty_prompt(tiny_data):
    _, model, _ = make_model(tiny_data, visible_target_weight=0.0)
    documents = model.documents
    documents.history_len[4] = 1
    ids, length, goal, not_shown = documents.recommendation(torch.tensor([4]), mask=True)
    assert length.item() == len(documents.recommendation_prefix) + len(documents.recommendation_suffix)
    assert goal[0][not_shown[0]].tolist() == [int(documents.history_items[4, 0])]


def test_items_beyond_max_seq_len_are_hidden_targets_and_scoring_shows_the_most_recent(tiny_data):
    _, model, (train, _, _) = make_model(tiny_data, mask_ratio=0.2, visible_target_weight=0.5)
    v, n_users = model.layout.vocab_size, model.n_users
    documents = model.documents
    budget = 5  # items the prompt has room for (the byte-level tiny tokenizer spells the prompt out)
    documents.max_seq_len = len(documents.recommendation_prefix) + len(documents.recommendation_suffix) + budget
    documents.scoring_max_seq_len = documents.max_seq_len + 2  # scoring may show more: two items more here
    users = torch.nonzero(documents.history_len > budget + 2).squeeze(1)
    assert len(users) > 0
    ids, length, goal, not_shown = documents.recommendation(users, mask=True)
    shown = ((ids >= v + n_users).sum(1)).tolist()
    assert shown == [budget] * len(users)
    for row in range(len(users)):
        n_hidden = int(not_shown[row].sum())
        assert n_hidden == int(documents.history_len[users[row]]) - budget  # masked + cut off
    # scoring: the first `budget + 2` stored items, which are the most recent training interactions
    budget += 2
    assert documents.lengths("scoring", users).tolist() == [documents.scoring_max_seq_len] * len(users)
    ids, length, _, _ = documents.recommendation(users, mask=False)
    inter = train.dataset.inter_feat
    for row, u in enumerate(users.tolist()):
        times = inter["timestamp"][inter["user_id"] == u]
        items = inter["item_id"][inter["user_id"] == u]
        recent = set(items[times.argsort(descending=True)][:budget].tolist())
        assert {t - v - n_users for t in ids[row].tolist() if t >= v + n_users} == recent


@pytest.mark.parametrize(
    "readout, skip, bias, visible_weight",
    [("last", 0.0, False, 1.0), ("items", 0.0, True, 0.3), ("items", 3.0, True, 1.0)],
)
def test_recommendation_loss_is_multinomial(tiny_data, readout, skip, bias, visible_weight):
    config, model, _ = make_model(
        tiny_data, readout=readout, readout_skip=skip, item_bias=bias, visible_target_weight=visible_weight
    )
    if model.has_item_bias:
        with torch.no_grad():
            model.item_bias.weight.normal_()
    torch.manual_seed(0)
    users = torch.tensor([1, 2, 3])
    ids, length, goal, not_shown = model.documents.recommendation(users, mask=True)
    torch.manual_seed(0)
    loss, _ = model.recommendation_loss(users, users_per_batch=2.5)
    hidden = model.hidden_states(ids, length, "collaborative")
    item_offset = model.layout.vocab_size + model.n_users
    expected = 0.0
    for row in range(3):
        n = int(length[row])
        if readout == "last":
            h = hidden[row, n - 1]
        else:  # the visible item tokens' states and the last token's, averaged
            h = hidden[row, [p for p in range(n) if ids[row, p] >= item_offset or p == n - 1]].mean(0)
            shown = [t - item_offset for t in ids[row, :n].tolist() if t >= item_offset]
            if skip:  # the states weighed against the skip: the mean embedding of the shown items / init_std
                h = config["readout_state_weight"] * h
            if skip and shown:
                h = h + skip / config["init_std"] * model.collaborative_item_emb.weight[shown].mean(0)
        logits = h @ model.collaborative_item_emb.weight.T
        if model.has_item_bias:
            logits = logits + model.item_bias.weight[:, 0]
        log_probs = logits[1:].log_softmax(-1)  # padding item 0 is not a candidate
        for item, hidden_from_prompt in zip(goal[row].tolist(), not_shown[row].tolist()):
            if item:
                expected -= (1.0 if hidden_from_prompt else visible_weight) * log_probs[item - 1].item()
    assert loss.item() == pytest.approx(expected / 2.5, rel=1e-5)
    if model.has_item_bias:
        loss.backward()
        assert model.item_bias.weight.grad.abs().sum() > 0
        assert any(p is model.item_bias.weight for p in model.trainable_parameters())


def test_full_sort_scores_are_the_same_batched_and_one_by_one(tiny_data):
    _, model, _ = make_model(tiny_data, eval_batch_tokens=150)  # 11 users: several length-sorted packs
    model.eval()
    users = torch.arange(1, 12)
    with torch.no_grad():
        batched = model.full_sort_predict({model.USER_ID: users})
        single = torch.cat([model.full_sort_predict({model.USER_ID: users[k : k + 1]}) for k in range(len(users))])
    assert batched.shape == (len(users), model.n_items)
    assert torch.isinf(batched[:, 0]).all()
    torch.testing.assert_close(batched[:, 1:], single[:, 1:], rtol=1e-5, atol=1e-5)


def test_training_moves_the_embeddings_and_lowers_the_collaborative_loss(tiny_data):
    from recbole_cllm4rec.trainer import CLLM4RecTrainer

    config, model, _ = make_model(tiny_data, item_reorder=False, lambda_c=0.0)
    trainer = CLLM4RecTrainer(config, model)
    users = trainer.train_users
    before = model.collaborative_lm_loss(users)[0].item()
    optimizer = trainer._build_optimizer(learning_rate=0.01)
    for epoch in range(5):
        trainer._run_pass("collaborative", optimizer, epoch, show_progress=False)
    after = model.collaborative_lm_loss(users)[0].item()
    assert after < before - 0.3


def test_max_seq_len_beyond_the_backbone_context_is_refused(tiny_data):
    with pytest.raises(ValueError, match="exceeds the backbone's context"):
        make_model(tiny_data, max_seq_len=4096)
    make_model(tiny_data, max_seq_len=1024, scoring_max_seq_len=1024)  # the tiny context: 1024
    with pytest.raises(ValueError, match="scoring_max_seq_len=1025 exceeds the backbone's context of 1024"):
        make_model(tiny_data, max_seq_len=1024, scoring_max_seq_len=1025)


def test_a_missing_text_field_is_named(tiny_data):
    with pytest.raises(ValueError, match=r"\['plot'\]"):
        make_model(tiny_data, item_text_template="{title}: {plot}")


def test_runs_are_reproducible_with_a_fixed_seed(tiny_data):
    from recbole_cllm4rec.quick_start import run_model

    config = tiny_config_dict(tiny_data)
    first = run_model("CLLM4Rec", "tiny", config_dict=dict(config))
    second = run_model("CLLM4Rec", "tiny", config_dict=dict(config))
    assert first["test_result"] == second["test_result"]
    assert first["split"] == second["split"]


def test_llm_dtype_choice():
    from recbole_cllm4rec.model.adapters import autocast_dtype, cpu_has_native_bf16
    from recbole_cllm4rec.model.cllm4rec import CLLM4Rec

    assert autocast_dtype("auto", "cuda") is torch.bfloat16
    assert autocast_dtype("auto", "cpu") is (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert autocast_dtype("float32", "cuda") is None
    from recbole_cllm4rec.config_rules import check_config_values

    with pytest.raises(ValueError, match="llm_dtype='fp8' must be one of auto, float32, bfloat16, float16"):
        check_config_values({"llm_dtype": "fp8"}, {"llm_dtype": CLLM4Rec.CONFIG_RULES["llm_dtype"]})


def test_bf16_autocast_gives_nearly_the_fp32_losses(tiny_data):
    _, fp32, _ = make_model(tiny_data, item_reorder=False)
    _, bf16, _ = make_model(tiny_data, item_reorder=False, llm_dtype="bfloat16")
    users = torch.arange(1, 9)
    exact, _ = fp32.collaborative_lm_loss(users)
    approx, _ = bf16.collaborative_lm_loss(users)
    assert approx.dtype == torch.float32
    assert approx.item() == pytest.approx(exact.item(), rel=2e-2)


def test_mean_mutual_regularization_divides_by_the_batch_id_tokens(tiny_data):
    users = torch.tensor([2, 5, 11])
    _, summed = make_model(tiny_data, lambda_c=0.5)[1].collaborative_lm_loss(users)
    _, model, _ = make_model(tiny_data, lambda_c=0.5, mutual_reg_reduction="mean")
    _, mean = model.collaborative_lm_loss(users)
    # one user token plus one token per training item in each document
    n_id_tokens = sum(1 + int(model.documents.history_len[u]) for u in users)
    assert mean.item() == pytest.approx(summed.item() / n_id_tokens, rel=1e-6)
    with pytest.raises(ValueError, match="mutual_reg_reduction"):
        make_model(tiny_data, mutual_reg_reduction="max")


def test_random_backbone_keeps_the_architecture_and_drops_the_weights(tiny_data):
    _, pretrained, _ = make_model(tiny_data)
    _, random_a, _ = make_model(tiny_data, llm_pretrained=False)
    _, random_b, _ = make_model(tiny_data, llm_pretrained=False)
    weights = lambda m: m.backbone.get_input_embeddings().weight  # noqa: E731
    assert weights(random_a).shape == weights(pretrained).shape
    assert not torch.equal(weights(random_a), weights(pretrained))
    assert torch.equal(weights(random_a), weights(random_b))  # seeded by `seed`
    assert not torch.equal(random_a.backbone_fingerprint, pretrained.backbone_fingerprint)


def test_llm_dropout_is_on_while_training_only(tiny_data):
    users = torch.tensor([2, 5, 11])
    _, model, _ = make_model(tiny_data, llm_dropout=0.5, item_reorder=False)
    model.train()
    assert model.backbone.training
    torch.manual_seed(0)
    first, _ = model.collaborative_lm_loss(users)
    second, _ = model.collaborative_lm_loss(users)
    assert first.item() != second.item()
    model.eval()
    assert model.collaborative_lm_loss(users)[0].item() == model.collaborative_lm_loss(users)[0].item()
    _, plain, _ = make_model(tiny_data)
    plain.train()
    assert not plain.backbone.training
