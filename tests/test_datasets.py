"""Shipped datasets and cold-item splits: packaged files, resolution without data_path, the split protocol."""
import fnmatch
from pathlib import Path

import pytest
import yaml

import recbole_cllm4rec  # noqa: F401  (the compatibility shims before RecBole's Config)
from recbole_cllm4rec.datasets import shipped, split
from recbole_cllm4rec.datasets.split import choose_cold_items, cold_item_split, held_out_counts
from recbole_cllm4rec.registry import PROPERTIES_DIR, Config

ROOT = Path(__file__).resolve().parent.parent
ITEMS = [f"i{k}" for k in range(12)]
HEADER = "user_id:token\titem_id:token\trating:float\n"


def write(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text(HEADER + "".join(f"{u}\t{i}\t5\n" for u, i in rows))


def rows_of(frame) -> list[tuple[str, str]]:
    return sorted(zip(frame["user_id:token"], frame["item_id:token"]))


@pytest.fixture
def roles() -> tuple[str, list[str]]:
    """The one item that is cold among 12 at share 1/12, seed 0, and the eleven others."""
    cold = choose_cold_items(ITEMS, 1 / 12, seed=0)
    assert len(cold) == 1
    return next(iter(cold)), [i for i in ITEMS if i not in cold]


def test_held_out_counts_round_each_share_and_hold_out_one_from_three_items():
    assert [held_out_counts(n) for n in (1, 2, 3, 4, 10, 14, 15, 25)] == [
        (0, 0), (0, 0), (1, 1), (1, 1), (1, 1), (1, 1), (2, 2), (2, 2),  # round(2.5) is 2
    ]  # fmt: skip


def test_one_inter_file_cold_interactions_leave_training_and_the_rest_split_per_user(tmp_path, roles):
    cold, warm = roles
    folder = tmp_path / "tiny"
    folder.mkdir()
    # u1: 10 warm items (8/1/1); u2: 4 warm + the cold item (2/1/1 warm); u3: 1 warm + cold (training);
    # u4: the cold item alone (no training items left)
    rows = [("u1", i) for i in warm[:10]] + [("u2", i) for i in warm[6:10]] + [("u2", cold)]
    rows += [("u3", warm[10]), ("u3", cold), ("u4", cold), ("u1", warm[0])]  # a repeated pair: dropped
    write(folder / "tiny.inter", rows)
    (folder / "tiny.item").write_text("item_id:token\ttitle:token\n" + "".join(f"{i}\ttitle of {i}\n" for i in ITEMS))
    result = cold_item_split(folder, "tiny", 1 / 12, seed=0)
    parts = {p: rows_of(f) for p, f in result.parts.items()}
    assert result.cold == {cold}
    assert all(item != cold for _, item in parts["train"])
    assert sorted(r for p in ("valid", "test") for r in parts[p] if r[1] == cold) == [("u2", cold), ("u3", cold), ("u4", cold)]
    per_user = {p: [u for u, i in parts[p] if i != cold] for p in split.PARTS}
    assert [per_user[p].count("u1") for p in split.PARTS] == [8, 1, 1]
    assert [per_user[p].count("u2") for p in split.PARTS] == [2, 1, 1]
    assert [per_user[p].count("u3") for p in split.PARTS] == [1, 0, 0]
    counts = result.counts()
    assert (counts["items"], counts["cold items"], counts["repeated (user, item) rows dropped"]) == (12, 1, 1)
    assert counts["train interactions"] == 11 and counts["valid interactions"] + counts["test interactions"] == 7
    assert counts["valid interactions on cold items"] + counts["test interactions on cold items"] == 3
    assert counts["evaluation users without training items"] == 1  # u4
    assert cold_item_split(folder, "tiny", 1 / 12, seed=0).parts["test"].equals(result.parts["test"])  # seeded

    result.write(tmp_path / "out" / "tiny-cold", "tiny-cold")
    out = tmp_path / "out" / "tiny-cold"
    assert sorted(p.name for p in out.iterdir()) == ["tiny-cold.item", *(f"tiny-cold.{p}.inter" for p in ("test", "train", "valid"))]
    assert (out / "tiny-cold.item").read_bytes() == (folder / "tiny.item").read_bytes()
    assert (out / "tiny-cold.train.inter").read_text().startswith(HEADER)
    assert len((out / "tiny-cold.train.inter").read_text().splitlines()) == 1 + 11


def test_pre_split_files_keep_every_warm_interaction_in_its_part(tmp_path, roles):
    cold, warm = roles
    folder = tmp_path / "pre"
    folder.mkdir()
    given = {
        "train": [("u1", i) for i in warm[:8]] + [("u2", cold), ("u2", warm[8])],
        "valid": [("u1", warm[8]), ("u3", cold), ("u3", warm[9])],
        "test": [("u1", warm[9]), ("u1", cold), ("u2", warm[10])],
    }
    for part, rows in given.items():
        write(folder / f"pre.{part}.inter", rows)
    result = cold_item_split(folder, "pre", 1 / 12, seed=0)
    for part, rows in given.items():
        assert [r for r in rows_of(result.parts[part]) if r[1] != cold] == sorted(r for r in rows if r[1] != cold)
    moved = sorted(r for p in ("valid", "test") for r in rows_of(result.parts[p]) if r[1] == cold)
    assert moved == [("u1", cold), ("u2", cold), ("u3", cold)]
    assert result.counts()["train interactions"] == 9 and result.counts()["evaluation users without training items"] == 1


def test_the_command_prints_the_counts_and_refuses_a_full_output_folder(tmp_path, capsys):
    folder = tmp_path / "data" / "tiny"
    folder.mkdir(parents=True)
    write(folder / "tiny.inter", [(f"u{u}", f"i{(u + k) % 10}") for u in range(6) for k in range(5)])
    argv = ["--cold-items", "0.2", "--seed", "0", "--dataset", "tiny", "--data_path", str(tmp_path / "data"),
            "--out-name", "tiny-cold", "--out-path", str(tmp_path / "out")]  # fmt: skip
    split.main(argv)
    printed = capsys.readouterr().out
    assert "cold items" in printed and "test interactions on cold items" in printed
    assert (tmp_path / "out" / "tiny-cold" / "tiny-cold.valid.inter").is_file()
    with pytest.raises(SystemExit):
        split.main(argv)
    split.main(argv + ["--overwrite"])


def test_a_failed_write_leaves_no_folder_behind(tmp_path, monkeypatch, roles):
    folder = tmp_path / "tiny"
    folder.mkdir()
    write(folder / "tiny.inter", [("u1", i) for i in ITEMS])
    result = cold_item_split(folder, "tiny", 1 / 12, seed=0)

    def disk_full(path, frame):
        raise OSError("disk full")

    monkeypatch.setattr(split, "write_atomic", disk_full)
    with pytest.raises(OSError):
        result.write(tmp_path / "out" / "tiny-cold", "tiny-cold")
    assert list((tmp_path / "out").iterdir()) == []


def test_the_packaged_paper_split_decompresses_to_its_row_counts(tmp_path):
    folder = shipped.unpacked("amazon-beauty-paper", tmp_path)
    rows = {p.name: len(p.read_text().splitlines()) - 1 for p in folder.iterdir()}
    assert rows == {
        "amazon-beauty-paper.train.inter": 70614,
        "amazon-beauty-paper.valid.inter": 11767,
        "amazon-beauty-paper.test.inter": 11767,
        "amazon-beauty-paper.item": 6086,
    }
    assert shipped.unpacked("amazon-beauty-paper", tmp_path) == folder  # decompressed once


def test_shipped_datasets_resolve_without_data_path_and_a_given_one_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBOLE_CLLM4REC_CACHE", str(tmp_path))
    folder = Path(Config(model="Pop", dataset="amazon-beauty-paper")["data_path"])
    assert folder.parent == tmp_path / "datasets" and (folder / "amazon-beauty-paper.train.inter").is_file()
    given = Config(model="Pop", dataset="amazon-beauty-paper", config_dict={"data_path": "/elsewhere"})
    assert given["data_path"] == "/elsewhere/amazon-beauty-paper"

    config = Config(model="Pop", dataset="ml-100k-cold")
    cold = Path(config["data_path"])
    assert config["benchmark_filename"] == ["train", "valid", "test"] and cold.parent == tmp_path / "datasets"
    assert (cold / "ml-100k-cold.item").read_bytes() == (shipped.RECBOLE_ML_100K / "ml-100k.item").read_bytes()
    (cold / "ml-100k-cold.test.inter").unlink()
    assert Config(model="Pop", dataset="ml-100k-cold")["data_path"] == str(cold)
    assert (cold / "ml-100k-cold.test.inter").is_file()  # rebuilt
    assert Config(model="Pop", dataset="ml-100k")["data_path"].endswith("dataset_example/ml-100k")


@pytest.mark.parametrize("name", sorted(shipped.COLD_PRESETS))
def test_a_cold_preset_repeats_its_source_preset(name):
    source = shipped.COLD_PRESETS[name][0]
    preset = yaml.safe_load((PROPERTIES_DIR / "dataset" / f"{name}.yaml").read_text())
    parent = yaml.safe_load((PROPERTIES_DIR / "dataset" / f"{source}.yaml").read_text())
    cold_keys = {key: preset[key] for key in ("cold_item_rows", "text_map_ridge", "text_map_bias_shift", "text_map_pseudo_interactions") if key in preset}
    assert preset == {**parent, "benchmark_filename": ["train", "valid", "test"], **cold_keys}
    assert preset["cold_item_rows"] == "text_map"


def test_the_package_data_takes_the_packaged_files():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["recbole_cllm4rec.datasets"]
    packaged = [p.relative_to(shipped.PACKAGED.parent).as_posix() for p in shipped.PACKAGED.rglob("*.gz")]
    assert len(packaged) == 4 and all(any(fnmatch.fnmatch(p, pattern) for pattern in patterns) for p in packaged)
