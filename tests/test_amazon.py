"""The Amazon converter on small generated dumps in the real 2014 and 2023 formats."""
import gzip
import json
import random

import pytest

from recbole_cllm4rec.data_files import unescape
from recbole_cllm4rec.datasets.amazon import convert, main

# (user, item, rating, time): after rating > 3 and a 2-core only u1, u2, u3 with a, b, c survive:
# e (only u5) goes, so u5 goes; d (only u4) goes, so u4 keeps one item and goes.
CASCADE = [
    ("u1", "a", 5, 10), ("u1", "a", 4, 99), ("u1", "b", 4, 11), ("u1", "c", 5, 12),
    ("u2", "a", 5, 13), ("u2", "b", 4, 14),
    ("u3", "b", 5, 15), ("u3", "c", 4, 16),
    ("u4", "d", 5, 17), ("u4", "c", 5, 18),
    ("u5", "a", 2, 19), ("u5", "e", 5, 20),
]  # fmt: skip
SURVIVORS = {("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "a"), ("u2", "b"), ("u3", "b"), ("u3", "c")}


def write_2014(folder, rows):
    reviews = folder / "reviews_Test_5.json.gz"
    with gzip.open(reviews, "wt") as f:
        for user, item, rating, t in rows:
            text = f"{user} likes {item}\twith a tab\nand a newline"
            f.write(json.dumps({"reviewerID": user, "asin": item, "overall": float(rating), "summary": "Nice",
                                "reviewText": text, "unixReviewTime": t}) + "\n")  # fmt: skip
        f.write("{not json at all\n")
        f.write("[1, 2]\n")
    meta = folder / "meta_Test.json.gz"
    with gzip.open(meta, "wt") as f:  # Python literals, as the 2014 meta files are
        for item in "abcde":
            f.write(repr({"asin": item, "title": f"Lipstick {item}", "brand": "Acme",
                          "categories": [["Beauty", "Makeup"], ["Beauty", "Lips"]]}) + "\n")  # fmt: skip
    return reviews, meta


def write_2023(folder, rows):
    reviews = folder / "Test.jsonl"
    with open(reviews, "w") as f:
        for user, item, rating, t in rows:
            f.write(json.dumps({"user_id": user, "parent_asin": item, "asin": item + "-v", "rating": float(rating),
                                "title": "Nice", "text": f"{user} likes {item}\twith a tab\nand a newline",
                                "timestamp": t * 1000}) + "\n")  # fmt: skip
        f.write('{"user_id": "u9"}\n')  # no item, no rating: malformed
    meta = folder / "meta_Test.jsonl"
    with open(meta, "w") as f:
        for item in "abcde":
            f.write(json.dumps({"parent_asin": item, "title": f"Lipstick {item}", "categories": ["Beauty", "Makeup", "Lips"],
                                "details": {"Brand": "Acme"}, "description": ["Red", "and shiny"]}) + "\n")  # fmt: skip
    return reviews, meta


def read_rows(path):
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


@pytest.mark.parametrize("fmt", ["2014", "2023"])
def test_rating_filter_dedup_and_iterative_k_core(tmp_path, fmt):
    reviews, meta = (write_2014 if fmt == "2014" else write_2023)(tmp_path, CASCADE)
    report = convert(reviews, meta, tmp_path / "out" / "test", k=2)
    assert report["malformed review lines"] == (2 if fmt == "2014" else 1)
    assert report["rating > 3"] == 11 and report["unique (user, item)"] == 10
    assert (report["users"], report["items"], report["2-core interactions"]) == (3, 3, 7)

    header, rows = read_rows(tmp_path / "out" / "test" / "test.inter")
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert {(u, i) for u, i, _, _ in rows} == SURVIVORS
    assert ["u1", "a", "5", "10"] in rows  # the earliest of a repeated (user, item) is kept

    header, rows = read_rows(tmp_path / "out" / "test" / "test.review")
    assert header == ["user_id:token", "item_id:token", "review:text"]
    assert all(len(row) == 3 for row in rows)  # tabs and newlines escaped: one line, three columns
    text = {(u, i): r for u, i, r in rows}[("u2", "b")]
    assert unescape(text) == "Nice. u2 likes b\twith a tab\nand a newline"

    header, rows = read_rows(tmp_path / "out" / "test" / "test.item")
    assert header == ["item_id:token", "title:token", "categories:token", "brand:token", "description:token"]
    a = rows[0]
    assert a[:4] == ["a", "Lipstick a", "Beauty, Makeup, Lips", "Acme"]
    assert a[4] == ("" if fmt == "2014" else "Red and shiny")


def test_split_gives_every_user_valid_and_test_items(tmp_path):
    rng = random.Random(0)
    rows = [(f"u{u}", f"i{i}", 5, rng.randint(0, 10**6)) for u in range(30) for i in rng.sample(range(40), rng.randint(5, 25))]
    reviews, meta = write_2014(tmp_path, rows)
    report = convert(reviews, meta, tmp_path / "out" / "bench", k=5, split=(0.8, 0.1, 0.1), seed=7)
    parts = {}
    for part in ("train", "valid", "test"):
        _, part_rows = read_rows(tmp_path / "out" / "bench" / f"bench.{part}.inter")
        parts[part] = [(u, i) for u, i, _, _ in part_rows]
        assert report[f"{part} interactions"] == len(parts[part])
    _, all_rows = read_rows(tmp_path / "out" / "bench" / "bench.inter")
    everything = [(u, i) for u, i, _, _ in all_rows]
    assert sorted(parts["train"] + parts["valid"] + parts["test"]) == sorted(everything)
    per_user = {u: sum(1 for v, _ in everything if v == u) for u, _ in everything}
    for user, n in per_user.items():
        n_valid = sum(1 for v, _ in parts["valid"] if v == user)
        n_test = sum(1 for v, _ in parts["test"] if v == user)
        assert n_valid == n_test == max(1, round(0.1 * n))
    # the same seed gives the same split
    convert(reviews, meta, tmp_path / "again" / "bench", k=5, split=(0.8, 0.1, 0.1), seed=7)
    for part in ("train", "valid", "test"):
        name = f"bench.{part}.inter"
        assert (tmp_path / "again" / "bench" / name).read_text() == (tmp_path / "out" / "bench" / name).read_text()


def test_swapped_files_give_a_clear_error(tmp_path):
    reviews, meta = write_2014(tmp_path, CASCADE)
    with pytest.raises(SystemExit, match="no Amazon reviews found.*swap"):
        main([str(meta), str(reviews), "--out", str(tmp_path / "x")])


def test_a_converted_dataset_trains_cllm4rec_with_its_reviews(tmp_path, monkeypatch):
    from conftest import tiny_config_dict

    from recbole_cllm4rec.quick_start import run_model

    rng = random.Random(1)
    rows = [(f"u{u}", f"i{i}", 5, rng.randint(0, 10**6)) for u in range(25) for i in rng.sample(range(30), rng.randint(5, 12))]
    reviews, meta = write_2014(tmp_path, rows)
    main([str(reviews), str(meta), "--out", str(tmp_path / "data" / "beauty"), "--split"])
    monkeypatch.chdir(tmp_path)
    config = tiny_config_dict(
        tmp_path / "data",
        load_col={"inter": ["user_id", "item_id"]},
        benchmark_filename=["train", "valid", "test"],
        item_text_template="{title}. {categories}. {brand}",
        user_text_template=None,
        review_text_field="review",
        max_seq_len=96,
    )
    result = run_model("CLLM4Rec", "beauty", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0
