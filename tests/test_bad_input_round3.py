"""Bad inputs, third round (docs/reliability.md): each gets the correct result or one line naming what to fix."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import a_checkpoint_then_failing_saves, tiny_config_dict

from recbole_cllm4rec import backbone
from recbole_cllm4rec.cli import interrupted
from recbole_cllm4rec.hyper import check_hyper_file, run_hyper
from recbole_cllm4rec.preflight import check_cache_dir, unwritable
from recbole_cllm4rec.registry import Config

ROOT = Path(__file__).resolve().parent.parent


def command(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})  # fmt: skip


def refused_in_one_line(done: subprocess.CompletedProcess, line: str) -> None:
    assert done.returncode == 1 and done.stdout == "", done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(line), done.stderr[-2000:]


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder this process cannot create files in: read-only bits, or for root (who ignores them) a
    folder under /sys."""
    folder = Path("/sys/recbole-cllm4rec-cache") if os.geteuid() == 0 else tmp_path / "read-only"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o500)
    if unwritable(folder) is None:
        pytest.skip(f"{folder} can be written here")
    yield folder
    if os.geteuid() != 0:
        folder.chmod(0o700)


# ---------------------------------------------------------------------- 6: search spaces
def test_a_hyper_value_that_breaks_a_rule_stops_the_search_before_its_first_trial(tiny_data):
    (tiny_data / "space.hyper").write_text("lambda_c choice [1,2]\nmask_ratio choice [0.2, 1.5]\n")
    done = command([str(ROOT / "run_hyper.py"), "--params_file=space.hyper", "--dataset=tiny", "--data_path=.",
                    "--llm=tiny-random"], tiny_data)  # fmt: skip
    refused_in_one_line(done, "run_hyper.py: error: space.hyper:2: config key mask_ratio=1.5 must be below 1: every trial that draws it would stop")
    assert not (tiny_data / "saved").exists() and not list(tiny_data.glob("hyper-*"))


STOPS = ": every trial that draws it would stop"


@pytest.mark.parametrize(
    "line, refusal",
    [
        ("mask_ratio loguniform -3,0.5", f"config key mask_ratio=1.6487212707001282 must be below 1{STOPS}"),  # exp(0.5)
        ("pretrain_epochs quniform 1,5,1", "config key pretrain_epochs takes integers and quniform draws floats: use pretrain_epochs choice [...]"),
        ("readout choice ['last','lastt']", f"config key readout='lastt' must be one of last, mean, items{STOPS}"),
        ("lamda_c choice [1,2]", "unknown config key 'lamda_c' (did you mean 'lambda_c'?): nothing reads it"),
        ("lora_learning_rate choice [0.1]", "config key 'lora_learning_rate' was renamed: use backbone_learning_rate (it covers every trainable backbone part)"),
    ],
)
def test_hyper_keys_and_values_go_through_the_config_rules(tmp_path, line, refusal):
    space = tmp_path / "space.hyper"
    space.write_text(f"lambda_c choice [1,2]\n{line}\n")
    with pytest.raises(ValueError) as refused:
        check_hyper_file(space, "CLLM4Rec")
    assert str(refused.value) == f"{space}:2: {refusal}"


def test_retired_options_in_a_search_space_are_refused(tmp_path):
    space = tmp_path / "space.hyper"
    space.write_text("readout choice ['items','queries']\n")
    with pytest.raises(ValueError, match=rf"^{space}:1: readout='queries' is a research option that was removed"):
        check_hyper_file(space, "CLLM4Rec")


def test_a_search_keeps_its_finished_trials_when_one_fails_later(tiny_data, monkeypatch):
    from recbole_cllm4rec import quick_start

    real_run_model = quick_start.run_model

    def nan_at_lambda_two(model, dataset, config_file_list, config_dict, saved):
        if config_dict["lambda_c"] == 2:
            raise ValueError("collaborative loss is not finite in epoch 0, batch 0")
        return real_run_model(model, dataset, config_file_list, config_dict, saved)

    monkeypatch.setattr(quick_start, "run_model", nan_at_lambda_two)
    (tiny_data / "space.hyper").write_text("lambda_c choice [2,1]\n")
    out = tiny_data / "trials.txt"
    best = run_hyper("CLLM4Rec", "tiny", str(tiny_data / "space.hyper"), config_dict=tiny_config_dict(tiny_data), output_file=str(out))
    assert best["params"] == {"lambda_c": 1}
    text = out.read_text()
    assert "lambda_c:2\nFailed: ValueError: collaborative loss is not finite in epoch 0, batch 0\n" in text
    assert "lambda_c:1\nValid result:\nrecall@5 : " in text and "Test result:\n" in text
    assert [p.name for p in tiny_data.iterdir() if ".tmp" in p.name] == []

    (tiny_data / "space.hyper").write_text("lambda_c choice [2]\n")
    with pytest.raises(RuntimeError, match=rf"^every trial failed \(the first: lambda_c:2: ValueError: .*\); each one's error is in {out}$"):
        run_hyper("CLLM4Rec", "tiny", str(tiny_data / "space.hyper"), config_dict=tiny_config_dict(tiny_data), output_file=str(out))
    assert out.read_text().startswith("lambda_c:2\nFailed: ValueError")


def test_ctrl_c_in_a_search_writes_the_finished_trials(tiny_data, monkeypatch):
    from recbole_cllm4rec import quick_start

    trials = []

    def interrupted_run(model, dataset, config_file_list, config_dict, saved):
        trials.append(config_dict["lambda_c"])
        if len(trials) == 2:  # Ctrl-C in the second trial (the order of an exhaustive search is drawn)
            raise KeyboardInterrupt
        return {"best_valid_score": 0.5, "valid_score_bigger": True, "best_valid_result": {"recall@10": 0.5}, "test_result": {"recall@10": 0.4}}

    monkeypatch.setattr(quick_start, "run_model", interrupted_run)
    (tiny_data / "space.hyper").write_text("lambda_c choice [1,2,3]\n")
    out = tiny_data / "trials.txt"
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_hyper("CLLM4Rec", "tiny", str(tiny_data / "space.hyper"), config_dict=tiny_config_dict(tiny_data), output_file=str(out))
    assert out.read_text().count("Valid result:") == 1 and out.read_text().startswith(f"lambda_c:{trials[0]}\n")
    assert "Failed" not in out.read_text()
    assert interrupted(stopped.value) == f"interrupted; the 1 finished trial(s) are in {out}"


# ---------------------------------------------------------------------- 7: cache folders
@pytest.mark.parametrize("how", ["RECBOLE_CLLM4REC_CACHE", "HOME"])
def test_a_cache_folder_that_cannot_be_written_is_named_before_any_work(tiny_data, unwritable_folder, how):
    env = {how: str(unwritable_folder), "XDG_CACHE_HOME": ""} if how == "HOME" else {how: str(unwritable_folder)}
    folder = unwritable_folder / ".cache" / "recbole_cllm4rec" / "corpus" if how == "HOME" else unwritable_folder / "corpus"
    done = command([str(ROOT / "run_recbole.py"), "--dataset=tiny", "--data_path=.", "--llm=tiny-random",
                    "--item_text_template={title}", "--valid_metric=Recall@10"], tiny_data, **env)  # fmt: skip
    refused_in_one_line(done, f"run_recbole.py: error: cache folder {folder} cannot be written (")
    assert "set RECBOLE_CLLM4REC_CACHE (or the config key llm_cache_dir) to a folder you can write" in done.stderr
    assert not (tiny_data / "saved").exists()


def test_a_read_only_cache_that_holds_what_a_run_needs_serves_it(tmp_path, unwritable_folder, monkeypatch):
    settings = {"llm_cache_dir": str(unwritable_folder), "llm": "tiny-random", "item_text_template": None}
    check_cache_dir(settings)  # nothing to write: no text, no conversion
    monkeypatch.setattr(backbone, "converted_folder_problem", lambda folder: None)  # as if converted there
    check_cache_dir({**settings, "llm": "smollm2-135m"})
    with pytest.raises(ValueError, match=rf"^cache folder {unwritable_folder}/corpus cannot be written"):
        check_cache_dir({**settings, "item_text_template": "{title}"})


# ---------------------------------------------------------------------- 8: the converted backbone
def save_tiny(folder: Path) -> None:
    model, tokenizer = backbone.load_backbone("tiny-random")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_a_damaged_converted_backbone_is_named_and_converted_again(tmp_path, monkeypatch, caplog):
    conversions = []
    monkeypatch.setattr(backbone, "_convert_smollm2", lambda gguf_dir, folder: conversions.append(folder) or save_tiny(folder))
    first, _ = backbone.load_backbone("smollm2-135m", cache_dir=tmp_path)
    first = [tensor.clone() for tensor in first.state_dict().values()]  # not the file's memory map: it is cut below
    target = tmp_path / "smollm2-135m"
    assert len(conversions) == 1 and (target / "complete.json").is_file() and [p.name for p in tmp_path.iterdir()] == ["smollm2-135m"]
    backbone.load_backbone("smollm2-135m", cache_dir=tmp_path)
    assert len(conversions) == 1  # whole: loaded as it is

    weights = target / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])  # a truncated copy
    with caplog.at_level(logging.WARNING, logger="recbole_cllm4rec.backbone"):
        again, _ = backbone.load_backbone("smollm2-135m", cache_dir=tmp_path)
    assert len(conversions) == 2 and weights.stat().st_size == size
    assert f"{target} is damaged: model.safetensors has {size // 2} bytes, not {size} bytes: converting" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m"]  # neither the damaged folder nor a temporary one
    assert all((a == b).all() for a, b in zip(first, again.state_dict().values()))

    (target / "complete.json").unlink()  # a folder of a version without the marker, or an unfinished one
    backbone.load_backbone("smollm2-135m", cache_dir=tmp_path)
    assert len(conversions) == 3 and backbone.converted_folder_problem(target) is None


def test_a_conversion_that_fails_leaves_nothing_behind(tmp_path):
    def half_written(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        backbone.write_folder_whole(tmp_path / "smollm2-135m", half_written)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- 9: Ctrl-C
DRIVER = """import os, signal, sys
from recbole_cllm4rec import trainer
from recbole_cllm4rec.cli import command_line, main
save = trainer.CLLM4RecTrainer._save_resume_point
def save_then_interrupt(self, epoch):  # Ctrl-C right after the first finetuning epoch's resume point
    save(self, epoch)
    if self.stage == "finetune":
        os.kill(os.getpid(), signal.SIGINT)
trainer.CLLM4RecTrainer._save_resume_point = save_then_interrupt
command_line(main)
"""


def test_ctrl_c_says_where_to_resume_in_one_line_with_status_130(tiny_data):
    from recbole_cllm4rec.quick_start import run_model

    (tiny_data / "driver.py").write_text(DRIVER)
    settings = {"data_path": str(tiny_data), "llm": "tiny-random", "llm_cache_dir": str(tiny_data / "cache"), "llm_dtype": "float32",
                "item_text_template": "{title}", "pretrain_epochs": "1", "content_warmup_epochs": "0", "epochs": "3",
                "train_batch_tokens": "256", "show_progress": "False", "topk": "[5,10]", "valid_metric": "Recall@10",
                "state": "WARNING", "checkpoint_dir": "saved"}  # fmt: skip
    done = command(["driver.py", "--dataset=tiny", *[f"--{key}={value}" for key, value in settings.items()]], tiny_data)
    resume_points = list((tiny_data / "saved").glob("*-last.pth"))
    assert done.returncode == 130 and "Traceback" not in done.stderr and len(resume_points) == 1
    assert done.stderr.splitlines()[-1] == f"driver.py: interrupted; resume with --resume={resume_points[0]}"
    assert [p.name for p in (tiny_data / "saved").iterdir() if ".tmp" in p.name] == []
    resumed = run_model("CLLM4Rec", "tiny", config_dict={**settings, "resume": str(resume_points[0])})
    assert Path(resumed["checkpoint"]).stat().st_size > 0 and len(resumed["valid_history"]) == 3


def test_ctrl_c_before_the_first_resume_point_and_outside_a_run():
    assert interrupted(KeyboardInterrupt("/nowhere/CLLM4Rec-1-last.pth")) == (
        "interrupted before the run's first resume point was written: start it again"
    )
    assert interrupted(KeyboardInterrupt()) == "interrupted"


# ---------------------------------------------------------------------- 10: recommend and run settings
@pytest.mark.parametrize(
    "args, line",
    [
        (["--users-file", "missing.txt"], "--users-file missing.txt cannot be read (No such file or directory)"),
        (["--users-file", "empty.txt"], "--users-file empty.txt is empty: write one raw user id per line"),
        (["--user", "u1", "--checkpoint", "."], "--checkpoint . is a folder: give a checkpoint file in it"),
        (["--users-file", "users.txt", "--out", "empty.txt/recs.tsv"], "--out empty.txt/recs.tsv cannot be written ({root}/empty.txt is a file)"),
    ],
)
def test_recommend_refuses_bad_files_before_loading_the_model(tmp_path, args, line):
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "users.txt").write_text("u1\n")
    checkpoint = [] if "--checkpoint" in args else ["--checkpoint", "missing.pth"]
    done = command(["-m", "recbole_cllm4rec.recommend", *checkpoint, *args], tmp_path)
    refused_in_one_line(done, line.format(root=tmp_path))


@pytest.mark.parametrize(
    "overrides, refusal",
    [
        ({"metrics": "[]"}, "config key metrics=[] names no metric: give at least one (--metrics=\"['Recall','NDCG']\")"),
        ({"metrics": "[NDCG]"}, "config key metrics='[NDCG]' is text, not a list: quote each name"),
        ({"metrics": "['Recal']"}, "config key metrics: there is no metric named 'Recal' (did you mean 'recall'?)"),
        ({"metrics": "['NDCG']"}, "config key valid_metric='Recall@10' is not one of metrics ['NDCG']: the first validation would stop on it"),
        ({"topk": "[5]"}, "config key valid_metric='Recall@10' needs the cut-off 10 in topk=[5]"),
        ({"checkpoint_dir": "notes.txt"}, "config key checkpoint_dir='{root}/notes.txt' cannot be written ({root}/notes.txt is a file)"),
    ],
)
def test_metrics_and_checkpoint_dir_are_checked_with_the_config(tiny_data, overrides, refusal):
    (tiny_data / "notes.txt").write_text("a file\n")
    with pytest.raises(ValueError) as refused:
        Config(model="CLLM4Rec", dataset="tiny", config_dict={**tiny_config_dict(tiny_data), **overrides})
    assert str(refused.value).startswith(refusal.format(root=tiny_data))


def test_a_checkpoint_dir_that_is_a_file_is_one_line_on_the_command_line(tiny_data):
    (tiny_data / "notes.txt").write_text("a file\n")
    done = command([str(ROOT / "run_recbole.py"), "--dataset=tiny", "--data_path=.", "--llm=tiny-random", "--checkpoint_dir=notes.txt"], tiny_data)
    refused_in_one_line(done, f"run_recbole.py: error: config key checkpoint_dir='{tiny_data}/notes.txt' cannot be written")


def test_the_paths_a_checkpoint_records_work_from_another_folder(tiny_data, monkeypatch, capsys):
    from recbole_cllm4rec import recommend
    from recbole_cllm4rec.quick_start import run_model

    save_tiny(tiny_data / "models" / "tiny")
    settings = tiny_config_dict(tiny_data, llm="models/tiny", llm_cache_dir="cache", checkpoint_dir="saved")
    first = run_model("CLLM4Rec", "tiny", config_dict=settings)
    assert first["checkpoint"] == str(tiny_data / "saved" / Path(first["checkpoint"]).name)
    elsewhere = tiny_data / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recommend.main(["--checkpoint", first["checkpoint"], "--user", "u1", "--topk", "3"])
    assert len(capsys.readouterr().out.splitlines()) == 3
    resume_point = first["checkpoint"].replace(".pth", "-last.pth")
    settings["llm"] = str(tiny_data / "models" / "tiny")  # given from here: the command line's paths are this folder's
    again = run_model("CLLM4Rec", "tiny", config_dict={**settings, "resume": resume_point})
    assert again["checkpoint"] == first["checkpoint"] and again["test_result"] == first["test_result"]
    assert not list(elsewhere.rglob("*.pth"))  # the resumed run's files stay where its resume point says


# ---------------------------------------------------------------------- 1: resumes keep their settings
def interrupt_after_first_finetuning_epoch(monkeypatch) -> None:
    from recbole_cllm4rec import trainer

    save = trainer.CLLM4RecTrainer._save_resume_point

    def save_then_interrupt(self, epoch):
        save(self, epoch)
        if self.stage == "finetune":
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.CLLM4RecTrainer, "_save_resume_point", save_then_interrupt)


def interrupted_run(tiny_data, monkeypatch, **overrides) -> tuple[dict, str]:
    """(settings, resume point) of a run stopped after its first finetuning epoch (as a kill -9 leaves it)."""
    from recbole_cllm4rec.quick_start import run_model

    settings = tiny_config_dict(tiny_data, epochs=2, **overrides)
    with monkeypatch.context() as patched:
        interrupt_after_first_finetuning_epoch(patched)
        with pytest.raises(KeyboardInterrupt):
            run_model("CLLM4Rec", "tiny", config_dict=settings)
    (resume_point,) = (tiny_data / "saved").glob("*-last.pth")
    return settings, str(resume_point)


def test_a_resume_that_changes_a_setting_is_refused_with_both_values(tiny_data, monkeypatch):
    import yaml

    settings, resume_point = interrupted_run(tiny_data, monkeypatch)
    before = Path(resume_point).read_bytes()
    (tiny_data / "run.yaml").write_text(yaml.safe_dump(settings))
    done = command([str(ROOT / "run_recbole.py"), "--dataset=tiny", "--config_files=run.yaml", "--resume=True",
                    "--learning_rate=0.1", "--lambda_c=5", "--mask_ratio=0.5"], tiny_data)  # fmt: skip
    refused_in_one_line(done, f"run_recbole.py: error: cannot resume from {resume_point}: it ran with other settings "
                              "(lambda_c=1000.0 -> 5, learning_rate=0.0003 -> 0.1, mask_ratio=0.2 -> 0.5): a resume continues "
                              "the same run, so give the values it ran with or start a new run; a resume may change only "
                              "checkpoint_dir, data_path, epochs, eval_batch_size, llm, ")  # fmt: skip
    assert Path(resume_point).read_bytes() == before


def test_a_resume_may_change_how_long_it_trains_and_says_so(tiny_data, monkeypatch, caplog):
    from recbole_cllm4rec.quick_start import run_model

    settings, resume_point = interrupted_run(tiny_data, monkeypatch)
    with caplog.at_level(logging.WARNING):
        resumed = run_model("CLLM4Rec", "tiny", config_dict={**settings, "epochs": 3, "stopping_step": 7, "resume": resume_point})
    assert "resume changes epochs=2 -> 3, stopping_step=5 -> 7" in caplog.text
    assert len(resumed["valid_history"]) == 3  # one before the interruption, two after it


def test_an_older_resume_point_resumes_with_what_it_could_not_check_and_finds_its_best_model(tiny_data, monkeypatch, caplog):
    """A resume point of an earlier version: a key added since is not in its settings, and its best-model
    path is relative to the folder that run started in."""
    from recbole_cllm4rec.checkpoint import atomic_save, load_checkpoint
    from recbole_cllm4rec.quick_start import run_model

    settings, resume_point = interrupted_run(tiny_data, monkeypatch)
    old = load_checkpoint(resume_point, "cpu")
    best = old["best_model_file"]
    del old["config"].final_config_dict["learning_rate_decay"], old["checksum"]
    old["best_model_file"] = os.path.join("saved", os.path.basename(best))
    atomic_save(old, resume_point)
    elsewhere = tiny_data / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with caplog.at_level(logging.WARNING):
        resumed = run_model("CLLM4Rec", "tiny", config_dict={**settings, "resume": resume_point})
    assert "the resume point records no learning_rate_decay (saved by an earlier version): not checked" in caplog.text
    assert resumed["checkpoint"] == best and len(resumed["valid_history"]) == 2
    assert not list(elsewhere.rglob("*.pth"))


# ---------------------------------------------------------------------- 2: keys only other models read
def test_keys_only_other_models_read_are_named_with_their_models(tiny_data):
    from recbole_cllm4rec.config_rules import keys_read_by, unread_key_warnings
    from recbole_cllm4rec.registry import PROPERTIES_DIR, get_model, get_trainer

    def warnings(model: str, **extra) -> list[str]:
        config = Config(model=model, dataset="tiny", config_dict={**tiny_config_dict(tiny_data), **extra})
        model_class = get_model(model)
        return unread_key_warnings(config, keys_read_by(model_class, get_trainer(model_class.type, model), PROPERTIES_DIR), PROPERTIES_DIR)

    assert warnings("CLLM4Rec") == []  # every key of the tests' runs is read
    assert warnings("CLLM4Rec", embedding_size=512, n_layers=12, dropout_prob=0.9, lamda_c=2) == [
        "config key 'dropout_prob' is a key of other models (AFM, Caser, ConvNCF, ... 33 in all), CLLM4Rec does not read it, it is ignored",
        "config key 'embedding_size' is a key of other models (AFM, AutoInt, BPR, ... 69 in all), CLLM4Rec does not read it, it is ignored",
        "unknown config key 'lamda_c' (did you mean 'lambda_c'?): nothing reads it, it is ignored",
        "config key 'n_layers' is a key of other models (AutoInt, BERT4Rec, CORE, ... 18 in all), CLLM4Rec does not read it, it is ignored",
    ]
    bpr = warnings("BPR", embedding_size=512)
    assert not any("embedding_size" in line for line in bpr)
    assert "config key 'llm' is a key of other models (CLLM4Rec), BPR does not read it, it is ignored" in bpr


def test_in_a_comparison_a_key_another_compared_model_reads_is_not_warned(tiny_data, caplog):
    from recbole_cllm4rec.quick_start import run_config

    settings = {**tiny_config_dict(tiny_data), "reg_weight": 100.0, "embedding_size": 32}
    with caplog.at_level(logging.WARNING):
        run_config("Pop", "tiny", config_dict=settings, compared=("CLLM4Rec", "Pop", "EASE"))
    assert "reg_weight" not in caplog.text and "'llm'" not in caplog.text  # EASE's, CLLM4Rec's
    assert "config key 'embedding_size' is a key of other models (AFM, AutoInt, BPR, ... 69 in all), Pop does not read it" in caplog.text


def test_a_search_over_a_key_the_model_does_not_read_is_refused(tmp_path):
    space = tmp_path / "space.hyper"
    space.write_text("lambda_c choice [1,2]\nembedding_size choice [64,128]\n")
    with pytest.raises(ValueError) as refused:
        check_hyper_file(space, "CLLM4Rec")
    assert str(refused.value) == (f"{space}:2: config key 'embedding_size' is a key of other models (AFM, AutoInt, BPR, ... 69 in all), "
                                  "CLLM4Rec does not read it: every trial would be the same run")  # fmt: skip


# ---------------------------------------------------------------------- 3: a label threshold
def test_a_label_threshold_is_refused_and_val_interval_filters(tiny_data):
    from recbole.data import create_dataset

    done = command([str(ROOT / "run_recbole.py"), "--dataset=tiny", "--data_path=.", "--llm=tiny-random", "--threshold={'rating': 4}"], tiny_data)
    refused_in_one_line(done, "run_recbole.py: error: config key threshold={'rating': 4} does nothing for CLLM4Rec: it makes a label "
                              "that only context-aware models read, and rows with rating below 4 still train and count as positives. "
                              "To keep only the rows with rating >= 4, filter them: val_interval: {rating: \"[4,inf)\"}")  # fmt: skip
    ratings = [float(line.split("\t")[2]) for line in (tiny_data / "tiny" / "tiny.inter").read_text().splitlines()[1:]]
    kept = sum(r >= 4 for r in ratings)
    assert 0 < kept < len(ratings)
    for given in ({"rating": "[4,inf)"}, "{'rating': '[4,inf)'}"):  # a yaml value, a command-line one
        config = Config(model="CLLM4Rec", dataset="tiny", config_dict={**tiny_config_dict(tiny_data), "val_interval": given})
        assert create_dataset(config).inter_num == kept


# ---------------------------------------------------------------------- 4: text templates
@pytest.mark.parametrize(
    "template, refusal",
    [
        ("{title:>10}", "{title:>10} is not a plain field: write a column of the file as {column} (no format spec, conversion, attribute or index), a literal brace as {{ or }}"),
        ("{title.upper}", "{title.upper} is not a plain field: "),
        ("{title!r}", "{title!r} is not a plain field: "),
        ("{0}", "{0} is not a plain field: "),
        ("{title", "expected '}' before end of string: write a literal brace as {{ or }}"),
        ("title}", "Single '}' encountered in format string: write a literal brace as {{ or }}"),
    ],
)
def test_a_template_field_the_parser_would_not_fill_is_refused_with_the_config(tiny_data, template, refusal):
    with pytest.raises(ValueError) as refused:
        Config(model="CLLM4Rec", dataset="tiny", config_dict={**tiny_config_dict(tiny_data), "item_text_template": template})
    assert str(refused.value).startswith(f"config key item_text_template={template!r}: {refusal}")


def test_a_bad_template_is_one_line_and_literal_braces_work(tiny_data):
    from recbole.data import create_dataset

    from recbole_cllm4rec.data_files import field_texts

    done = command([str(ROOT / "run_recbole.py"), "--dataset=tiny", "--data_path=.", "--llm=tiny-random", "--item_text_template={title.upper}"], tiny_data)
    refused_in_one_line(done, "run_recbole.py: error: config key item_text_template='{title.upper}': {title.upper} is not a plain field")
    config = Config(model="CLLM4Rec", dataset="tiny", config_dict={**tiny_config_dict(tiny_data), "item_text_template": "{{{title}}} {{x}}"})
    texts = field_texts(create_dataset(config), "item", config["item_text_template"])
    assert "{The comedy film number 4} {x}" in texts


# ---------------------------------------------------------------------- 5: a valid_metric that is not computed
def test_a_valid_metric_at_a_cut_off_outside_topk_is_one_line_before_any_work(tiny_data):
    done = command([str(ROOT / "run_recbole.py"), "--dataset=tiny", "--data_path=.", "--llm=tiny-random", "--valid_metric=Recall@20",
                    "--topk=[5,10]"], tiny_data)  # fmt: skip
    refused_in_one_line(done, "run_recbole.py: error: config key valid_metric='Recall@20' needs the cut-off 20 in topk=[5, 10]: "
                              "the first validation would stop on it. Add 20 to topk or validate at one of its cut-offs")  # fmt: skip
    assert not (tiny_data / "saved").exists() and not (tiny_data / "log").exists()


# ---------------------------------------------------------------------- 11: nothing trained
def test_a_run_without_epochs_says_what_its_test_is_of(tiny_data, caplog):
    from recbole_cllm4rec.quick_start import run_model

    settings = tiny_config_dict(tiny_data, epochs=0, pretrain_epochs=0, content_warmup_epochs=0)
    with caplog.at_level(logging.WARNING):
        result = run_model("CLLM4Rec", "tiny", config_dict=settings)
    assert "nothing trains (epochs=0, content_warmup_epochs=0, pretrain_epochs=0): the test is of the starting model, and nothing is validated" in caplog.text
    assert result["best_valid_result"] == {} and result["valid_history"] == [] and "recall@10" in result["test_result"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_model("CLLM4Rec", "tiny", config_dict={**settings, "pretrain_epochs": 1})
    assert "epochs=0: no finetuning epoch runs and nothing is validated: the test is of the model after its 1 pretraining epoch(s)" in caplog.text


# ---------------------------------------------------------------------- files written whole or not at all
def test_ctrl_c_while_a_checkpoint_is_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    import torch

    from recbole_cllm4rec import checkpoint

    path = tmp_path / "CLLM4Rec-1-last.pth"
    before = a_checkpoint_then_failing_saves(monkeypatch, path, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"state_dict": {"w": torch.zeros(2)}}, str(path))
    assert [p.name for p in tmp_path.iterdir()] == [path.name] and path.read_bytes() == before


def test_a_damaged_content_cache_is_rebuilt_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch, caplog):
    import torch

    from recbole_cllm4rec import cache, documents

    tokenizer = backbone.load_backbone("tiny-random")[1]
    sources = {"item": (torch.zeros(3, 2, dtype=torch.long), ["a film", "", "another film about cats"])}
    built = documents.cached_content_documents(sources, tokenizer, 32, tmp_path, "tiny")
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(cached.read_bytes()[:100])  # cut short
    with caplog.at_level(logging.WARNING, logger="recbole_cllm4rec.cache"):
        again = documents.cached_content_documents(sources, tokenizer, 32, tmp_path, "tiny")
    assert f"content corpus: the cached {cached} is damaged (" in caplog.text and "): building it again" in caplog.text
    assert torch.equal(again.ids, built.ids) and torch.equal(again.length, built.length)
    assert torch.equal(torch.load(cached)["ids"], built.ids)  # the file is whole again

    def failing_save(state, file, **kwargs):
        Path(file).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        documents.cached_content_documents({"user": sources["item"]}, tokenizer, 32, tmp_path, "tiny")
    assert list(tmp_path.iterdir()) == [cached]


def test_a_comparison_table_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from recbole_cllm4rec import comparison

    result = {"model": "BPR", "dataset": "tiny", "split": "abc", "test_result": {"recall@10": 0.5}, "best_valid_result": {"recall@10": 0.4},
              "train_time": 1.0, "eval_time": 0.5}  # fmt: skip
    monkeypatch.setattr(comparison, "comparison_chart", lambda results, path: False)
    comparison.save_comparison([result], tmp_path / "tiny-BPR")
    assert (tmp_path / "tiny-BPR.csv").read_bytes() == b"model,test recall@10,valid recall@10,train time (s),eval time (s),split\r\nBPR,0.5,0.4,1.0,0.5,abc\r\n"

    def interrupted_writer(stream):
        stream.write("model,te")
        raise KeyboardInterrupt

    monkeypatch.setattr(comparison.csv, "writer", interrupted_writer)
    with pytest.raises(KeyboardInterrupt):
        comparison.save_comparison([result], tmp_path / "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.md", "tiny-BPR.csv", "tiny-BPR.md"]
