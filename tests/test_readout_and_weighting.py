"""Readout, loss weighting, regularization scope and checkpoint contents, against hand-computed values."""
import pytest
import torch
from conftest import make_model, tiny_config_dict

import recbole_cllm4rec.model.frozen_lm as frozen_lm_module
from recbole_cllm4rec.documents import stored_history


def scoring_states(model, users):
    ids, length, _, _ = model.documents.recommendation(users, mask=False)
    return ids, length, model.hidden_states(ids, length, "collaborative")


@pytest.mark.parametrize("readout", ["last", "mean", "items"])
def test_readout_pools_the_right_positions(tiny_data, readout):
    _, model, _ = make_model(tiny_data, readout=readout, readout_skip=0.0)
    users = torch.tensor([1, 4, 9])
    ids, length, hidden = scoring_states(model, users)
    got = model.readout_state(hidden, ids, length)
    item_offset = model.layout.vocab_size + model.n_users
    for row in range(3):
        n = int(length[row])
        states = hidden[row, :n]
        if readout == "last":
            expected = states[-1]
        elif readout == "mean":
            expected = states.mean(0)
        elif readout == "items":
            keep = [p for p in range(n) if ids[row, p] >= item_offset or p == n - 1]
            assert len(keep) == int(model.documents.history_len[users[row]]) + 1
            expected = states[keep].mean(0)
        torch.testing.assert_close(got[row], expected, rtol=1e-5, atol=1e-6)
    # without the skip the head reads the pooled states at weight 1 (the paper), the skip term is 0
    states_part, skip_part = model.head_input_parts(ids, length)
    torch.testing.assert_close(states_part, got)
    assert not skip_part.any()


def test_an_unknown_or_removed_readout_is_refused(tiny_data):
    with pytest.raises(ValueError, match="readout=.* must be one of"):
        make_model(tiny_data, readout="max")
    with pytest.raises(ValueError, match="readout='attention' must be one of last, mean, items"):
        make_model(tiny_data, readout="attention")


def test_every_user_weighs_the_same_whatever_batch_they_are_packed_in(tiny_data, monkeypatch):
    config, model, _ = make_model(tiny_data, readout="mean")
    unshuffled = model.documents.history
    monkeypatch.setattr(model.documents, "history", lambda users, shuffle: unshuffled(users, shuffle=False))
    short, long_ = torch.tensor([3]), torch.tensor([7, 8, 12, 15])
    from recbole_cllm4rec.trainer import CLLM4RecTrainer

    # the constant: train_batch_tokens over the mean finetuning document length of training users
    users = torch.nonzero(model.documents.history_len > 0).squeeze(1)
    mean_length = model.documents.lengths("recommendation", users).float().mean().item()
    per_batch = CLLM4RecTrainer(config, model).users_per_batch
    assert per_batch == pytest.approx(256 / mean_length)
    alone = model.recommendation_loss(short, per_batch)[0] + model.recommendation_loss(long_, per_batch)[0]
    together = model.recommendation_loss(torch.cat([short, long_]), per_batch)[0]
    assert together.item() == pytest.approx(alone.item(), rel=1e-5)


@pytest.mark.parametrize("item_init", ["random", "svd"])
def test_regularization_skips_rows_the_other_side_never_trains(tiny_data, item_init):
    # no user text: the content user table never trains. From a random init its rows are noise, and
    # user tokens are not pulled toward them; from the SVD they are the SVD's rows, an anchor.
    _, model, _ = make_model(tiny_data, user_text_template=None, lambda_c=0.5, mutual_reg_reduction="sum",
                             item_reorder=False, item_init=item_init)
    anchored = item_init == "svd"
    assert model.content_trained[: model.n_users].all() == anchored
    assert model.content_trained[model.n_users + 1 :].all()
    with torch.no_grad():  # the two sides apart, as after some training
        model.content_user_emb.weight.add_(0.01)
        model.content_item_emb.weight.add_(0.01)
    users = torch.tensor([2, 5])
    _, reg = model.collaborative_lm_loss(users)
    diff = lambda a, b, r: ((a.weight[r] - b.weight[r]) ** 2).sum().item()  # noqa: E731
    expected = 0.0
    for u in users.tolist():
        if anchored:
            expected += diff(model.collaborative_user_emb, model.content_user_emb, u)
        for i in model.documents.history_items[u, : model.documents.history_len[u]].tolist():
            expected += diff(model.collaborative_item_emb, model.content_item_emb, i)
    assert reg.item() == pytest.approx(0.5 * expected, rel=1e-5)


def test_finetuning_regularization_covers_the_hidden_targets(tiny_data):
    _, model, _ = make_model(tiny_data, lambda_c=0.5, mask_ratio=0.5, mutual_reg_reduction="sum")
    with torch.no_grad():  # the two sides apart, as after some training
        model.content_user_emb.weight.add_(0.01)
        model.content_item_emb.weight.mul_(1.5)
    users = torch.tensor([1, 6])
    torch.manual_seed(3)
    ids, _, target, not_shown = model.documents.recommendation(users, mask=True)
    torch.manual_seed(3)
    _, reg = model.recommendation_loss(users, users_per_batch=2.0)
    diff = lambda a, b, r: ((a.weight[r] - b.weight[r]) ** 2).sum().item()  # noqa: E731
    expected = 0.0
    for row, u in enumerate(users.tolist()):
        expected += 2 * diff(model.collaborative_user_emb, model.content_user_emb, u)  # {user} twice
        # every training item: the shown ones in the prompt, the hidden ones as targets
        for i in model.documents.history_items[u, : model.documents.history_len[u]].tolist():
            expected += diff(model.collaborative_item_emb, model.content_item_emb, i)
    assert reg.item() == pytest.approx(0.5 * expected, rel=1e-5)


def test_stored_history_is_most_recent_first_without_repeats(tiny_data):
    _, model, (train, _, _) = make_model(tiny_data)
    inter = train.dataset.inter_feat
    for u in range(1, model.n_users):
        mine = inter["user_id"] == u
        expected = inter["item_id"][mine][inter["timestamp"][mine].argsort(descending=True)].tolist()
        assert model.documents.history_items[u, : model.documents.history_len[u]].tolist() == expected
        assert model.documents.history_items[u, model.documents.history_len[u] :].abs().sum() == 0


def test_stored_history_keeps_a_repeated_item_once_at_its_latest_time():
    class Toy:
        time_field = "t"
        inter_feat = {"t": None}

        def history_item_matrix(self, value_field=None):
            items = torch.tensor([[0, 0, 0, 0], [5, 3, 5, 2]])
            times = torch.tensor([[0.0, 0, 0, 0], [1.0, 2.0, 9.0, 4.0]])
            return items, times, torch.tensor([0, 4])

    history = stored_history(Toy(), seed=0)
    assert history.tolist() == [[0, 0, 0, 0], [5, 2, 3, 0]]


def test_id_tables_start_from_the_seed_whatever_loading_consumed(tiny_data, monkeypatch):
    _, first, _ = make_model(tiny_data)
    load = frozen_lm_module.load_backbone

    def load_and_consume(*args, **kwargs):
        torch.rand(1000)  # as converting a backbone on first use does
        return load(*args, **kwargs)

    monkeypatch.setattr(frozen_lm_module, "load_backbone", load_and_consume)
    _, second, _ = make_model(tiny_data)
    for a, b in zip(first.id_tables(), second.id_tables()):
        assert torch.equal(a.weight, b.weight)


def test_svd_init_factorizes_the_normalized_training_matrix(tiny_data):
    config, model, _ = make_model(tiny_data, item_init="svd", text_start_dims=0)  # the SVD alone
    users, items = model.collaborative_user_emb.weight[1:], model.collaborative_item_emb.weight[1:]
    matrix = torch.zeros(model.n_users, model.n_items)
    for u in range(1, model.n_users):
        matrix[u, model.documents.history_items[u, : model.documents.history_len[u]]] = 1.0
    matrix = matrix / matrix.sum(1, keepdim=True).clamp(min=1).sqrt() / matrix.sum(0, keepdim=True).clamp(min=1).sqrt()
    product = (users @ items.T).detach().flatten()
    # up to one global scale, user . item reproduces the normalized matrix (rank >= its rank here)
    cosine = torch.nn.functional.cosine_similarity(product, matrix[1:, 1:].flatten(), dim=0)
    assert cosine.item() > 0.99
    # a row without training interactions (here the padding rows) has no factor: it keeps a random
    # start, never the zero vector (non-finite gradients through a deep backbone)
    for table in model.id_tables():
        assert table.weight[0].norm() > 0.5 * config["init_std"] * table.weight.shape[1] ** 0.5
    assert items.std().item() == pytest.approx(config["init_std"], rel=0.2)
    assert torch.equal(model.content_item_emb.weight, model.collaborative_item_emb.weight)  # both sides start equal
    assert torch.equal(model.content_user_emb.weight, model.collaborative_user_emb.weight)


@pytest.mark.parametrize("state_weight", [1.0, 0.25])
def test_readout_skip_adds_the_pooled_item_embeddings_scaled_by_the_init_std(tiny_data, state_weight):
    config, model, _ = make_model(tiny_data, readout="items", readout_skip=2.0, readout_state_weight=state_weight)
    users = torch.tensor([1, 4, 9])
    ids, length, hidden = scoring_states(model, users)
    pooled = model.readout_state(hidden, ids, length)
    got = model.head_input(ids, length)
    states_part, skip_part = model.head_input_parts(ids, length)  # the two terms, each as weighted in the sum
    item_offset = model.layout.vocab_size + model.n_users
    for row in range(3):
        history = ids[row, : int(length[row])]
        shown = model.collaborative_item_emb.weight[history[history >= item_offset] - item_offset]
        assert len(shown) > 1  # so the mean differs from a sum
        skip = 2.0 / config["init_std"] * shown.sum(0) / len(shown)
        torch.testing.assert_close(got[row], state_weight * pooled[row] + skip, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(states_part[row], state_weight * pooled[row], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(skip_part[row], skip, rtol=1e-4, atol=1e-5)
    # a prompt without item tokens (a one-item user's masked prompt) gets no skip term
    no_items = ids[:1, :3]
    torch.testing.assert_close(model.head_input(no_items, torch.tensor([3])),
                               state_weight * model.readout_state(model.hidden_states(no_items, torch.tensor([3]), "collaborative"),
                                                   no_items, torch.tensor([3])))  # fmt: skip
    scores = model.full_sort_predict({model.USER_ID: users})
    features, head = model.item_head(got)
    torch.testing.assert_close(scores[:, 1:], (features @ head.T)[:, 1:], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="readout_skip needs a pooling readout"):
        make_model(tiny_data, readout="last", readout_skip=1.0)


def test_backbone_parameters_that_train_are_saved_and_frozen_ones_are_not(tiny_data):
    _, model, _ = make_model(tiny_data)
    norm = model.backbone.base_model.norm.weight
    norm.requires_grad_(True)
    with torch.no_grad():
        norm.mul_(3.0)
    state = model.state_dict()
    backbone_keys = [k for k in state if k.startswith("backbone.")]
    assert backbone_keys == ["backbone.model.norm.weight"]
    _, fresh, _ = make_model(tiny_data)
    fresh.backbone.base_model.norm.weight.requires_grad_(True)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.backbone.base_model.norm.weight, norm)
    del state["backbone.model.norm.weight"]
    with pytest.raises(RuntimeError, match="missing"):
        fresh.load_state_dict(state)


def test_the_backbone_builds_no_kv_cache(tiny_data):
    _, model, _ = make_model(tiny_data)
    seen = []

    def recording(body):
        def call(**kwargs):
            out = body(**kwargs)
            seen.append((kwargs.get("use_cache"), out.past_key_values))
            return out

        return call

    model.bodies = {side: recording(body) for side, body in model.bodies.items()}
    model.recommendation_loss(torch.tensor([1, 2]), users_per_batch=2.0)
    model.collaborative_lm_loss(torch.tensor([1, 2]))
    model.content_lm_loss(torch.tensor([0, 1]))
    assert len(seen) == 3 and all(flag is False and cache is None for flag, cache in seen)


def test_item_bias_starts_at_centred_log_popularity_and_adds_to_every_logit(tiny_data):
    _, model, _ = make_model(tiny_data, item_bias=True, readout="items")
    counts = torch.zeros(model.n_items)
    for u in range(1, model.n_users):
        counts[model.documents.history_items[u, : model.documents.history_len[u]]] += 1
    expected = (counts + 1).log()
    expected = expected - expected[1:].mean()
    torch.testing.assert_close(model.item_bias.weight[1:, 0], expected[1:])
    users = torch.tensor([1, 2])
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict({model.USER_ID: users})
        ids, length, _ = scoring_states(model, users)
        states = model.head_input(ids, length)
    plain = states @ model.collaborative_item_emb.weight.T + model.item_bias.weight[:, 0]
    torch.testing.assert_close(scores[:, 1:], plain[:, 1:], rtol=1e-5, atol=1e-5)
    assert any(p is model.item_bias.weight for p in model.trainable_parameters())


def test_lora_adapters_train_at_their_own_rate_and_travel_in_checkpoints(tiny_data):
    from recbole_cllm4rec.trainer import CLLM4RecTrainer

    config, model, _ = make_model(tiny_data, lora_rank=2, lora_targets=["q_proj", "v_proj"], backbone_learning_rate=0.05)
    _, plain, _ = make_model(tiny_data)
    adapters = model.backbone_parameters()
    assert len(adapters) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert all(any(p is a for a in model.trainable_parameters()) for p in adapters)
    assert torch.equal(model.backbone_fingerprint, plain.backbone_fingerprint)  # the frozen weights' identity
    users = torch.tensor([1, 2, 3])
    model.eval()
    plain.eval()
    with torch.no_grad():  # B starts at zero: the adapted backbone starts as the frozen one
        torch.testing.assert_close(model.full_sort_predict({model.USER_ID: users}), plain.full_sort_predict({plain.USER_ID: users}))
    optimizer = CLLM4RecTrainer(config, model)._build_optimizer(learning_rate=0.001)
    assert [g["lr"] for g in optimizer.param_groups] == [0.001, 0.05]
    loss, reg = model.recommendation_loss(users, users_per_batch=float(len(users)))
    (loss + reg).backward()
    optimizer.step()
    assert all(p.grad is not None for p in adapters)
    state = model.state_dict()
    lora_keys = [k for k in state if "lora_" in k]
    assert len(lora_keys) == 8 and not [k for k in state if k.startswith("backbone.") and "lora_" not in k]
    _, fresh, _ = make_model(tiny_data, lora_rank=2, lora_targets=["q_proj", "v_proj"])
    fresh.load_state_dict(state)
    fresh.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.full_sort_predict({fresh.USER_ID: users}), model.full_sort_predict({model.USER_ID: users}))


def test_a_lora_run_tests_the_adapters_it_trained(tiny_data):
    from conftest import tiny_config_dict

    from recbole_cllm4rec.quick_start import run_model
    from recbole_cllm4rec.checkpoint import load_checkpoint

    result = run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data, lora_rank=2, epochs=2))
    state = load_checkpoint(result["checkpoint"], "cpu")["state_dict"]
    lora = {k: v for k, v in state.items() if "lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values())  # trained, and saved with the best model


def test_learning_rate_decay_scales_every_group_per_finetuning_epoch(tiny_data, monkeypatch):
    from recbole_cllm4rec.quick_start import run_model
    from recbole_cllm4rec.trainer import CLLM4RecTrainer

    seen = []
    real = CLLM4RecTrainer._run_pass

    def record(self, stage, optimizer, epoch_idx, *args, **kwargs):
        if stage == "recommendation":
            seen.append([group["lr"] for group in optimizer.param_groups])
        return real(self, stage, optimizer, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(CLLM4RecTrainer, "_run_pass", record)
    config = tiny_config_dict(tiny_data, epochs=3, stopping_step=10, learning_rate=0.004, learning_rate_decay=0.5,
                              lora_rank=2, backbone_learning_rate=0.002, content_warmup_epochs=0)  # fmt: skip
    run_model("CLLM4Rec", "tiny", config_dict=config)
    assert seen == [[0.004, 0.002], [0.002, 0.001], [0.001, 0.0005]]
