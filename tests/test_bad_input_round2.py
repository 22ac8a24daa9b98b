"""Bad inputs, second round (docs/reliability.md): each gets the correct result or one line naming what to fix."""
import re
from pathlib import Path

import pytest
from conftest import a_checkpoint_then_failing_saves, make_model

from recbole_cllm4rec.recommend import internal_user_ids


def test_recommend_refuses_the_padding_user_and_takes_real_ones(tiny_data):
    _, _, (train, _, _) = make_model(tiny_data)
    dataset = train.dataset
    with pytest.raises(SystemExit, match=r"^'\[PAD\]' is RecBole's padding user, not a user of the dataset: give a raw user id$"):
        internal_user_ids(dataset, ["u1", "[PAD]"])
    with pytest.raises(SystemExit, match=r"unknown user id\(s\) \['nobody'\]"):
        internal_user_ids(dataset, ["nobody"])
    assert internal_user_ids(dataset, ["u1", "u2"]).tolist() == [dataset.field2token_id["user_id"][u] for u in ("u1", "u2")]


def test_an_item_with_two_rows_in_the_item_file_is_refused_with_its_lines(tiny_data):
    path = tiny_data / "tiny" / "tiny.item"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + ["i3\tAnother film\tdrama"]) + "\n")
    with pytest.raises(ValueError, match=r"^tiny.item: 1 item_id value\(s\) have more than one row, e.g. 'i3' on lines 4, 42: "
                                         r"keep one row per item \(which text is meant\?\)$"):  # fmt: skip
        make_model(tiny_data)


def test_a_backbone_whose_attention_is_not_causal_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    from recbole_cllm4rec.backbone import _byte_level_tokenizer, load_backbone

    folder = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)  # fmt: skip
    _byte_level_tokenizer().save_pretrained(folder)
    with pytest.raises(ValueError, match=r"^llm='.*bert' \(BertLMHeadModel\) is not a causal LM: its earlier positions see later tokens"):
        load_backbone(str(folder))
    model, _ = load_backbone("tiny-random")  # a causal one passes
    assert not model.training


def finished_run(root):
    from conftest import tiny_config_dict

    from recbole_cllm4rec.quick_start import run_model

    return run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(root))


def test_a_second_process_on_one_run_is_refused_until_the_first_is_gone(tiny_data):
    import subprocess
    import sys

    from conftest import tiny_config_dict

    from recbole_cllm4rec.quick_start import run_model

    first = finished_run(tiny_data)
    lock = tiny_data / "saved" / (Path(first["checkpoint"]).stem + ".lock")
    assert not lock.exists()  # released after the test
    holder = subprocess.Popen(  # another process on this run: it holds the lock as a run would
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'process 4242 on elsewhere'); print(flush=True); time.sleep(60)",
         str(lock)], stdout=subprocess.PIPE)  # fmt: skip
    try:
        holder.stdout.readline()  # it holds the lock now
        with pytest.raises(RuntimeError, match=rf"^{re.escape(first['checkpoint'])} is in use by another run \(process 4242 on elsewhere\): wait"):
            run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data, resume=True))
    finally:
        holder.kill()  # as kill -9 would: the kernel drops its hold, its file stays
        holder.wait()
    assert lock.exists()
    stale = Path(first["checkpoint"] + f".tmp{holder.pid}")  # what a kill -9 during a write leaves
    stale.write_bytes(b"")
    again = run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data, resume=True))
    assert again["test_result"] == first["test_result"] and not lock.exists() and not stale.exists()


def test_a_full_disk_says_so_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import shutil

    import torch

    from recbole_cllm4rec import checkpoint

    path = tmp_path / "run-last.pth"
    full_disk = RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/0: file write failed")
    good = a_checkpoint_then_failing_saves(monkeypatch, path, full_disk)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError, match=rf"^could not write {re.escape(str(path))} \(no space left on its disk, 0 MiB free\): "
                                      r"the previous run-last.pth is kept as it was; free space and resume with --resume=True$"):  # fmt: skip
        checkpoint.atomic_save({"state_dict": {"w": torch.zeros(2)}}, str(path))
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["run-last.pth"]


@pytest.mark.parametrize("suffix", ["inter", "item"])
def test_bytes_that_are_not_utf8_are_named_with_file_and_line(tiny_data, suffix):
    from conftest import tiny_config_dict

    from recbole_cllm4rec.quick_start import run_model

    path = tiny_data / "tiny" / f"tiny.{suffix}"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"i", b"\xe9", 1)  # a latin-1 byte in the item id
    path.write_bytes(b"\n".join(lines))
    column = lines[3].index(b"\xe9") + 1
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: line 4 is not UTF-8 text \(column {column}: b'\\xe9.*'\): save the file as UTF-8$"):
        run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data))


def test_a_byte_order_mark_is_named(tiny_data):
    from conftest import tiny_config_dict

    from recbole_cllm4rec.quick_start import run_model

    path = tiny_data / "tiny" / "tiny.inter"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with pytest.raises(ValueError, match=r"tiny.inter starts with a UTF-8 byte-order mark, which RecBole reads as part of its "
                                         r"first field's name: save the file without the BOM$"):  # fmt: skip
        run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data))


def test_a_model_folder_without_tokenizer_files_says_so(tmp_path):
    from recbole_cllm4rec.backbone import load_backbone

    model, _ = load_backbone("tiny-random")
    model.save_pretrained(tmp_path / "weights-only")
    with pytest.raises(ValueError, match=r"^llm='.*weights-only' has no tokenizer files \(tokenizer.json, .*\): save the "
                                         r"tokenizer beside the weights"):  # fmt: skip
        load_backbone(str(tmp_path / "weights-only"))


def test_the_log_counts_evaluation_users_and_items_never_seen_in_training():
    import torch

    from recbole_cllm4rec.cold_items import cold_start_lines

    class Part:
        uid_field, iid_field = "user_id", "item_id"

        def __init__(self, users, items):
            self.inter_feat = {"user_id": torch.tensor(users), "item_id": torch.tensor(items)}

    train = Part([1, 1, 2], [1, 2, 3])
    valid = Part([1, 2], [3, 1])  # nothing cold
    test = Part([1, 3, 3], [4, 4, 2])  # user 3 and item 4 are new
    assert cold_start_lines(train, valid, test) == [
        "test: 1 of 2 users have no training interactions, 2 of 3 interactions are of 1 items never seen in training "
        "(a model has only its priors for them; CLLM4Rec scores such items with the rows cold_item_rows gives them)"
    ]


def test_the_stored_history_does_not_depend_on_what_drew_from_the_global_rng_before(tiny_data):
    """A first run converts the backbone (random draws) before the histories are built; RecBole shuffles
    the interactions with torch's global RNG before it builds them, so items with equal times came in
    another order than in later runs."""
    import torch

    from recbole_cllm4rec.documents import stored_history

    path = tiny_data / "tiny" / "tiny.inter"
    rows = path.read_text().splitlines()
    path.write_text("\n".join([rows[0]] + [r.rsplit("\t", 1)[0] + "\t7" for r in rows[1:]]) + "\n")  # all at one time
    _, _, (train, _, _) = make_model(tiny_data)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = stored_history(train.dataset, seed=2020)
    assert torch.equal(torch.get_rng_state(), before)  # and it leaves the global RNG as it was
    torch.rand(12345)  # what a backbone conversion would draw
    assert torch.equal(stored_history(train.dataset, seed=2020), first)
    assert not torch.equal(stored_history(train.dataset, seed=1), first)  # the ties are real: the seed orders them


def test_an_empty_reservation_nobody_holds_is_removed_and_a_held_one_kept(tiny_data):
    import stat
    import subprocess
    import sys

    from recbole_cllm4rec.runfiles import RunLock

    saved = tiny_data / "saved"
    saved.mkdir()
    orphan = saved / "CLLM4Rec-Jan-01-2026_00-00-00.pth"  # a run killed before its first checkpoint
    orphan.write_bytes(b"")
    held = saved / "CLLM4Rec-Jan-01-2026_00-00-01.pth"  # a run that has just reserved its name
    held.write_bytes(b"")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print(flush=True); time.sleep(60)", str(held.with_suffix(".lock"))],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        holder.stdout.readline()
        result = finished_run(tiny_data)
    finally:
        holder.kill()
        holder.wait()
    assert not orphan.exists() and held.exists()
    mine = Path(result["checkpoint"])
    assert mine.stat().st_size > 0 and stat.S_IMODE(mine.stat().st_mode) == 0o644
    RunLock(str(held)).release()  # the holder is gone: its lock is free again


def test_a_length_cap_that_leaves_no_room_for_items_names_its_key_and_prompt(tiny_data):
    with pytest.raises(ValueError, match=r"^max_seq_len=20 leaves no room for items in collaborative_prompt$"):
        make_model(tiny_data, max_seq_len=20)  # the byte-level prompt alone is longer (the text prompts fit)
    with pytest.raises(ValueError, match=r"^scoring_max_seq_len=16 leaves no room for items in recommendation_prompt$"):
        make_model(tiny_data, scoring_max_seq_len=16)
