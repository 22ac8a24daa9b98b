"""Text sources from atomic files: item/user columns, reviews (training interactions only), the cache."""
import pytest
import torch
from conftest import make_model


def add_reviews(root, in_inter: bool = False) -> set[tuple[str, str]]:
    """A review for every interaction of the tiny dataset, with an escaped tab and newline in each."""
    inter = root / "tiny" / "tiny.inter"
    lines = inter.read_text().splitlines()
    pairs = [tuple(line.split("\t")[:2]) for line in lines[1:]]
    reviews = [f"{u} on {i}:\\tgood\\nreally" for u, i in pairs]
    if in_inter:
        inter.write_text(
            "\n".join([lines[0] + "\treview:token_seq"] + [f"{row}\t{r}" for row, r in zip(lines[1:], reviews)]) + "\n"
        )
    else:
        body = [f"{u}\t{i}\t{r}" for (u, i), r in zip(pairs, reviews)]
        (root / "tiny" / "tiny.review").write_text("\n".join(["user_id:token\titem_id:token\treview:text"] + body) + "\n")
    return set(pairs)


def review_documents(model, dataset) -> dict[tuple[str, str], str]:
    """(raw user, raw item) -> decoded text of every review document in the content corpus."""
    docs, v, n_users = model.documents.content, model.layout.vocab_size, model.n_users
    found = {}
    for d in range(len(docs)):
        ids = docs.ids[d, : docs.length[d]].long()
        prompt = ids[: docs.prompt_length[d]]
        users, items = prompt[(prompt >= v) & (prompt < v + n_users)], prompt[prompt >= v + n_users]
        if len(users) and len(items):
            key = (dataset.id2token(dataset.uid_field, int(users[0] - v)), dataset.id2token(dataset.iid_field, int(items[0] - v - n_users)))
            found[key] = model.tokenizer.decode(ids[docs.prompt_length[d] :])
    return found


@pytest.mark.parametrize("in_inter", [False, True])
def test_only_training_reviews_reach_the_content_corpus(tiny_data, in_inter):
    all_pairs = add_reviews(tiny_data, in_inter)
    _, model, (train, valid, test) = make_model(tiny_data, review_text_field="review")
    dataset = train.dataset

    def raw_pairs(data) -> set[tuple[str, str]]:
        inter = data.dataset.inter_feat
        users = dataset.id2token(dataset.uid_field, inter[dataset.uid_field].numpy())
        items = dataset.id2token(dataset.iid_field, inter[dataset.iid_field].numpy())
        return set(zip(users.tolist(), items.tolist()))

    training, held_out = raw_pairs(train), raw_pairs(valid) | raw_pairs(test)
    assert training | held_out == all_pairs and not training & held_out and held_out
    found = review_documents(model, dataset)
    assert set(found) == training  # every training review, no validation or test review
    u, i = next(iter(training))
    assert found[(u, i)] == f" {u} on {i}:\tgood\nreally"  # escapes undone
    # the review column stays out of RecBole's vocabularies either way
    assert "review" not in dataset.field2id_token


def test_the_content_corpus_is_loaded_from_cache_the_second_time(tiny_data, monkeypatch):
    from recbole_cllm4rec import documents

    _, first, _ = make_model(tiny_data)
    assert len(list((tiny_data / "cache" / "corpus").glob("tiny-*.pt"))) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the corpus was tokenized again")

    monkeypatch.setattr(documents, "build_content_documents", no_tokenizing)
    _, second, _ = make_model(tiny_data)
    assert torch.equal(first.documents.content.ids, second.documents.content.ids)
    # another template is another corpus: built, never a stale file
    with pytest.raises(AssertionError, match="tokenized again"):
        make_model(tiny_data, item_text_template="{title}")


def test_text_columns_need_not_be_loaded_by_recbole(tiny_data):
    _, model, (train, _, _) = make_model(tiny_data, load_col={"inter": ["user_id", "item_id", "rating", "timestamp"]})
    assert train.dataset.item_feat is None
    assert len(model.documents.content) == (model.n_items - 1) + (model.n_users - 1)


def test_a_row_of_text_fields_is_unescaped_and_filled_as_the_dataset_is():
    """``recommend --new-items`` reads its file with the two functions ``field_texts`` fills with."""
    import pandas as pd

    from recbole_cllm4rec.data_files import filled_text, unescaped_rows

    frame = pd.DataFrame({"title": ["Tab\\there", "", "x"], "genre": ["comedy", "", ""]})
    rows = unescaped_rows(frame, ["title", "genre"])
    assert rows == [("Tab\there", "comedy"), ("", ""), ("x", "")]
    assert [filled_text("{title}. Genre: {genre}.", ["title", "genre"], row) for row in rows] == [
        "Tab\there. Genre: comedy.", "", "x. Genre: ."]
