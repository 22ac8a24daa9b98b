"""Cold-item splits of any RecBole dataset: a share of its items never occurs in training.

    python -m recbole_cllm4rec.datasets.split --cold-items 0.2 --seed 0 --dataset ml-100k \\
        --out-name ml-100k-cold --out-path datasets

Protocol, from one seed (three independent random streams, so the cold items do not depend on the
source's layout):

1. ``round(share * #items)`` of the items that occur in the interactions are drawn uniformly,
   without replacement: the cold items.
2. Every interaction of a cold item goes to validation or to test, with probability 1/2 each.
3. Every other interaction keeps its part when the source is pre-split (``NAME.train.inter``,
   ``NAME.valid.inter``, ``NAME.test.inter``, used when all three exist); from a single
   ``NAME.inter`` (repeated (user, item) pairs dropped, the first kept) they are split per user at
   random 80/10/10 (:func:`held_out_counts`).

Writes ``OUT.{train,valid,test}.inter`` (the source's columns and rows, unchanged) and copies of
``NAME.item``, ``NAME.user`` and ``NAME.review`` into a temporary folder renamed at the end, so a
killed run never leaves half a dataset. Read it with ``benchmark_filename: [train, valid, test]``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PARTS = ("train", "valid", "test")
SIDE_FILES = ("item", "user", "review")  # copied unchanged: CLLM4Rec reads its text from them
PER_USER_RATIOS = (0.8, 0.1, 0.1)
COLD_STREAM, MOVE_STREAM, PER_USER_STREAM = range(3)


def held_out_counts(n: int, ratios: tuple[float, float, float] = PER_USER_RATIOS) -> tuple[int, int]:
    """(validation, test) interactions of a user with ``n``: the rounded shares, at least one each
    from 3 interactions on, none below; the Amazon converter's per-user split too."""
    if n < 3:
        return 0, 0
    return max(1, round(ratios[1] * n)), max(1, round(ratios[2] * n))


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def choose_cold_items(items: Iterable[str], share: float, seed: int) -> set[str]:
    """``round(share * #items)`` distinct items drawn uniformly: the same ones for the same items and seed."""
    pool = np.array(sorted(set(items)), dtype=object)
    return set(_rng(seed, COLD_STREAM).choice(pool, size=round(share * len(pool)), replace=False))


def split_per_user(users: pd.Series, seed: int, ratios: tuple[float, float, float] = PER_USER_RATIOS) -> np.ndarray:
    """The part of each interaction: per user in random order, the first :func:`held_out_counts` to
    validation, the next to test, the rest to training."""
    keys = pd.Series(_rng(seed, PER_USER_STREAM).random(len(users)), index=users.index)
    rank = keys.groupby(users).rank(method="first").to_numpy() - 1
    sizes = keys.groupby(users).transform("size").to_numpy()
    n_valid, n_test = np.array([held_out_counts(int(n), ratios) for n in sizes], dtype=int).reshape(-1, 2).T
    return np.where(rank < n_valid, "valid", np.where(rank < n_valid + n_test, "test", "train"))


def read_atomic(path: Path) -> pd.DataFrame:
    """An atomic file as text columns named by its header (``user_id:token``, ...), values unchanged."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, encoding="utf-8")


def write_atomic(path: Path, frame: pd.DataFrame) -> None:
    lines = ["\t".join(frame.columns), *("\t".join(row) for row in frame.itertuples(index=False, name=None))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def column(frame: pd.DataFrame, field: str) -> str:
    """The header entry of ``field`` (``user_id`` -> ``user_id:token``)."""
    for name in frame.columns:
        if name.split(":")[0] == field:
            return name
    raise ValueError(f"no {field} column among {list(frame.columns)}")


def interaction_files(folder: Path, name: str) -> list[Path]:
    """The files the interactions come from: the three benchmark files when all exist, else ``NAME.inter``."""
    parts = [folder / f"{name}.{part}.inter" for part in PARTS]
    if all(path.is_file() for path in parts):
        return parts
    if (folder / f"{name}.inter").is_file():
        return [folder / f"{name}.inter"]
    raise FileNotFoundError(f"{folder} holds neither {name}.inter nor {name}.{{{','.join(PARTS)}}}.inter")


@dataclass
class ColdSplit:
    """A cold-item split of the dataset ``name`` under ``source``: its parts and its cold items."""

    source: Path
    name: str
    parts: dict[str, pd.DataFrame]
    cold: set[str]
    user: str  # the header entries of the user and item ids
    item: str
    duplicates: int = 0

    def counts(self) -> dict[str, int]:
        """What the command prints: cold items, interactions per part, their cold share, users left without training."""
        counts = {"items": len(set().union(*(f[self.item] for f in self.parts.values()))), "cold items": len(self.cold)}
        if self.duplicates:
            counts["repeated (user, item) rows dropped"] = self.duplicates
        for part, frame in self.parts.items():
            counts[f"{part} interactions"] = len(frame)
            counts[f"{part} interactions on cold items"] = int(frame[self.item].isin(self.cold).sum())
        evaluated = set(self.parts["valid"][self.user]) | set(self.parts["test"][self.user])
        counts["evaluation users without training items"] = len(evaluated - set(self.parts["train"][self.user]))
        return counts

    def write(self, out: Path, out_name: str, replace: bool = False) -> None:
        """``out/<out_name>.{train,valid,test}.inter`` and copies of the side files, all at once."""
        with atomic_folder(out, replace) as tmp:
            for part, frame in self.parts.items():
                write_atomic(tmp / f"{out_name}.{part}.inter", frame)
            for suffix in SIDE_FILES:
                if (self.source / f"{self.name}.{suffix}").is_file():
                    shutil.copyfile(self.source / f"{self.name}.{suffix}", tmp / f"{out_name}.{suffix}")


def cold_item_split(source: Path, name: str, share: float, seed: int, user_field: str = "user_id", item_field: str = "item_id") -> ColdSplit:
    """Split the dataset ``name`` under ``source`` by the module's protocol."""
    files = interaction_files(source, name)
    frames = [read_atomic(path) for path in files]
    inter = pd.concat(frames, ignore_index=True)
    user, item = column(inter, user_field), column(inter, item_field)
    duplicates = 0
    if len(files) == 1:  # a repeated pair would be one interaction in two parts
        repeated = inter.duplicated([user, item])
        inter, duplicates = inter[~repeated].reset_index(drop=True), int(repeated.sum())
    cold = choose_cold_items(inter[item], share, seed)
    is_cold = inter[item].isin(cold).to_numpy()
    part = np.empty(len(inter), dtype=object)
    part[is_cold] = np.where(_rng(seed, MOVE_STREAM).random(int(is_cold.sum())) < 0.5, "valid", "test")
    warm = ~is_cold
    if len(files) == 1:
        part[warm] = split_per_user(inter[user][warm], seed)
    else:
        part[warm] = np.repeat(PARTS, [len(f) for f in frames])[warm]
    parts = {p: inter[part == p] for p in PARTS}
    return ColdSplit(source, name, parts, cold, user, item, duplicates)


@contextlib.contextmanager
def atomic_folder(target: Path, replace: bool = False) -> Iterator[Path]:
    """A temporary sibling folder, renamed to ``target`` when the block ends without error. An
    existing ``target`` is replaced if ``replace``, else kept (another process finished it first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private
        if replace and target.exists():
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    from recbole_cllm4rec.datasets.shipped import shipped_folder  # shipped builds its cold presets with this module

    parser = argparse.ArgumentParser(prog="python -m recbole_cllm4rec.datasets.split", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="the dataset to split")
    parser.add_argument("--data_path", type=Path, help="the folder holding DATASET/ (default: a dataset the plugin or RecBole ships)")
    parser.add_argument("--cold-items", type=float, required=True, help="the share of the items made cold, above 0 and below 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-name", required=True, help="the new dataset's name")
    parser.add_argument("--out-path", type=Path, required=True, help="the folder to write OUT_NAME/ into")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder that already holds files")
    args = parser.parse_args(argv)
    if not 0 < args.cold_items < 1:
        parser.error(f"--cold-items {args.cold_items} is not a share above 0 and below 1")
    out = args.out_path / args.out_name
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        parser.error(f"{out} already holds files: choose another --out-name / --out-path or pass --overwrite")
    source = args.data_path / args.dataset if args.data_path else shipped_folder(args.dataset)
    if source is None:
        parser.error(f"{args.dataset} ships with neither the plugin nor RecBole: give --data_path")
    split = cold_item_split(source, args.dataset, args.cold_items, args.seed)
    split.write(out, args.out_name, replace=args.overwrite)
    counts = split.counts()
    width = max(map(len, counts))
    for key, value in counts.items():
        print(f"{key:<{width}}  {value:>10,}")
    print(f"wrote {out}/{args.out_name}.* (use --data_path={args.out_path} --dataset={args.out_name}, "
          "benchmark_filename: [train, valid, test])")  # fmt: skip


if __name__ == "__main__":
    from recbole_cllm4rec.cli import command_line

    command_line(main)
