"""Amazon review dumps -> RecBole atomic files with review text, by the CLLM4Rec paper's protocol.

    python -m recbole_cllm4rec.datasets.amazon reviews_Beauty_5.json.gz meta_Beauty.json.gz \
        --out datasets/amazon-beauty-reviews --split

Reads both public formats (McAuley et al.): the 2014 dumps (``reviews_*.json(.gz)``: reviewerID,
asin, overall, reviewText, summary, unixReviewTime; ``meta_*.json(.gz)``, often Python literals:
asin, title, categories, brand, description) and the 2023 JSONL dumps (user_id, parent_asin,
rating, title, text, timestamp; meta: parent_asin, title, categories, details/store, description).

Protocol: keep ratings above ``--min-rating`` (paper: > 3), one interaction per (user, item) (the
earliest), iterative ``--k-core`` (default 5) on users and items; with ``--split``, a per-user
random 80/10/10 split (at least one validation and one test item per user, fixed ``--seed``)
written as RecBole benchmark files. Writes ``NAME.inter``, ``NAME.review`` (review text, tabs and
newlines escaped), ``NAME.item`` (title, categories, brand, description) and, with ``--split``,
``NAME.{train,valid,test}.inter``. Malformed lines are counted and reported (with their first line
numbers), not fatal. The output folder must be new or empty (``--overwrite`` replaces it); files are
written to a temporary folder renamed at the end, so a dataset is never a mix of two conversions.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import json
import random
import shutil
import sys
import tempfile
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from recbole_cllm4rec.datasets.split import held_out_counts


@dataclass
class Review:
    user: str
    item: str
    rating: float
    time: float
    text: str


@dataclass
class ReadStats:
    lines: int = 0
    malformed: int = 0
    examples: list[int] = field(default_factory=list)

    def bad(self, line_no: int) -> None:
        self.malformed += 1
        if len(self.examples) < 5:
            self.examples.append(line_no)


def _records(path: Path, stats: ReadStats) -> Iterator[tuple[int, dict]]:
    """(line number, dict) per line of a JSON-lines file, gzipped or not; JSON or Python literal."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                stats.lines += 1
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    try:  # the 2014 meta files are Python dict literals
                        record = ast.literal_eval(line)
                    except (ValueError, SyntaxError, MemoryError, RecursionError):
                        stats.bad(line_no)
                        continue
                if isinstance(record, dict):
                    yield line_no, record
                else:
                    stats.bad(line_no)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:  # EOFError: a truncated .gz
        raise SystemExit(f"{path}: cannot read it as (gzipped) JSON lines ({type(exc).__name__}: {exc or 'file ends early'}); "
                         "is the download complete?") from exc


def escape(text: str) -> str:
    """One line of an atomic file: backslash, tab, newline and carriage return escaped."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def read_reviews(path: Path) -> tuple[list[Review], ReadStats]:
    stats = ReadStats()
    reviews: list[Review] = []
    seen_keys: set[str] = set()
    for line_no, r in _records(path, stats):
        seen_keys.update(r)
        try:
            if "reviewerID" in r:  # 2014
                summary, body = r.get("summary") or "", r.get("reviewText") or ""
                text = f"{summary}. {body}" if summary and body else summary or body
                reviews.append(Review(r["reviewerID"], r["asin"], float(r["overall"]), float(r.get("unixReviewTime", 0)), text))
            elif "user_id" in r:  # 2023; timestamps in milliseconds; meta is keyed by parent_asin
                title, body = r.get("title") or "", r.get("text") or ""
                text = f"{title}. {body}" if title and body else title or body
                item = r.get("parent_asin") or r["asin"]
                reviews.append(Review(r["user_id"], item, float(r["rating"]), float(r.get("timestamp", 0)) / 1000, text))
            else:
                stats.bad(line_no)
        except (KeyError, TypeError, ValueError):
            stats.bad(line_no)
    if not reviews:
        raise SystemExit(
            f"{path}: no Amazon reviews found ({stats.lines} lines, keys seen: {sorted(seen_keys)[:12]}). "
            "Expected the 2014 reviews_*.json(.gz) format (reviewerID, asin, overall) or the 2023 JSONL "
            "format (user_id, parent_asin, rating). Did you swap the REVIEWS and META arguments?"
        )
    return reviews, stats


def _flatten(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _flatten(v)]
    return []


def read_meta(path: Path, wanted: set[str]) -> tuple[dict[str, dict[str, str]], ReadStats]:
    """item -> {title, categories, brand, description} for the items in ``wanted``."""
    stats = ReadStats()
    meta: dict[str, dict[str, str]] = {}
    n_with_id = 0
    for _, m in _records(path, stats):
        item = m.get("parent_asin") or m.get("asin")
        if item is None:
            continue
        n_with_id += 1
        if item not in wanted:
            continue
        categories = list(dict.fromkeys(c.strip() for c in _flatten(m.get("categories")) if c and c.strip()))
        details = m.get("details") if isinstance(m.get("details"), dict) else {}
        brand = m.get("brand") or details.get("Brand") or m.get("store") or ""
        meta[item] = {
            "title": " ".join(_flatten(m.get("title"))).strip(),
            "categories": ", ".join(categories),
            "brand": str(brand).strip(),
            "description": " ".join(_flatten(m.get("description"))).strip(),
        }
    if stats.lines and not n_with_id:
        raise SystemExit(f"{path}: no item metadata found (no asin/parent_asin field): is it an Amazon meta file?")
    return meta, stats


def k_core(reviews: list[Review], k: int) -> list[Review]:
    """Drop users and items with fewer than ``k`` interactions until none is left."""
    while True:
        users = Counter(r.user for r in reviews)
        items = Counter(r.item for r in reviews)
        kept = [r for r in reviews if users[r.user] >= k and items[r.item] >= k]
        if len(kept) == len(reviews):
            return kept
        reviews = kept


def split_per_user(reviews: list[Review], ratios: tuple[float, float, float], seed: int) -> dict[str, list[Review]]:
    """Per-user random split; every user with at least 3 items gets at least one valid and one test item."""
    rng = random.Random(seed)
    by_user: dict[str, list[Review]] = defaultdict(list)
    for r in reviews:
        by_user[r.user].append(r)
    parts: dict[str, list[Review]] = {"train": [], "valid": [], "test": []}
    for user in sorted(by_user):
        history = sorted(by_user[user], key=lambda r: (r.time, r.item))
        rng.shuffle(history)
        n_valid, n_test = held_out_counts(len(history), ratios)
        parts["valid"] += history[:n_valid]
        parts["test"] += history[n_valid : n_valid + n_test]
        parts["train"] += history[n_valid + n_test :]
    return parts


def _write_inter(path: Path, reviews: list[Review]) -> None:
    rows = sorted(reviews, key=lambda r: (r.user, r.time, r.item))
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{escape(r.user)}\t{escape(r.item)}\t{r.rating:g}\t{r.time:.0f}" for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def convert(
    reviews_path: Path,
    meta_path: Path | None,
    out: Path,
    min_rating: float = 3.0,
    k: int = 5,
    split: tuple[float, float, float] | None = None,
    seed: int = 2020,
    overwrite: bool = False,
) -> dict[str, int]:
    """Write the atomic files of one dataset (named after ``out``); returns the counts it reports.

    ``out`` must be new or empty unless ``overwrite``: then it is replaced as a whole, at the end.
    """
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        held = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        raise SystemExit(f"--out {out} already holds files ({held}): choose a new folder or pass --overwrite to replace it")
    reviews, review_stats = read_reviews(reviews_path)
    report = {"review lines": review_stats.lines, "malformed review lines": review_stats.malformed}
    if review_stats.examples:
        print(f"{reviews_path}: malformed lines skipped, first at line(s) {review_stats.examples}", file=sys.stderr)
    reviews = [r for r in reviews if r.rating > min_rating]
    report[f"rating > {min_rating:g}"] = len(reviews)
    first: dict[tuple[str, str], Review] = {}
    for r in sorted(reviews, key=lambda r: r.time):
        first.setdefault((r.user, r.item), r)
    reviews = list(first.values())
    report["unique (user, item)"] = len(reviews)
    reviews = k_core(reviews, k)
    report[f"{k}-core interactions"] = len(reviews)
    report["users"] = len({r.user for r in reviews})
    report["items"] = len({r.item for r in reviews})
    if not reviews:
        raise SystemExit(f"nothing is left after the rating filter and the {k}-core: {report}")

    name = out.name
    out.parent.mkdir(parents=True, exist_ok=True)
    final, out = out, Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out.parent))
    try:
        _write_files(out, name, reviews, meta_path, split, seed, report)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    if final.exists():  # empty, or overwrite asked for
        shutil.rmtree(final)
    out.chmod(0o755)  # mkdtemp makes it private
    out.rename(final)
    return report


def _write_files(out: Path, name: str, reviews: list[Review], meta_path: Path | None, split, seed: int, report: dict) -> None:
    _write_inter(out / f"{name}.inter", reviews)
    review_lines = ["user_id:token\titem_id:token\treview:text"]
    review_lines += [f"{escape(r.user)}\t{escape(r.item)}\t{escape(r.text)}" for r in sorted(reviews, key=lambda r: (r.user, r.time))]
    (out / f"{name}.review").write_text("\n".join(review_lines) + "\n", encoding="utf-8")

    items = sorted({r.item for r in reviews})
    if meta_path is not None:
        meta, meta_stats = read_meta(meta_path, set(items))
        report["malformed meta lines"] = meta_stats.malformed
        if meta_stats.examples:
            print(f"{meta_path}: malformed lines skipped, first at line(s) {meta_stats.examples}", file=sys.stderr)
        report["items with metadata"] = len(meta)
        columns = ("title", "categories", "brand", "description")
        item_lines = ["item_id:token\t" + "\t".join(f"{c}:token" for c in columns)]
        for item in items:
            values = meta.get(item, {})
            item_lines.append("\t".join([escape(item)] + [escape(values.get(c, "")) for c in columns]))
        (out / f"{name}.item").write_text("\n".join(item_lines) + "\n", encoding="utf-8")

    if split is not None:
        for part, rows in split_per_user(reviews, split, seed).items():
            _write_inter(out / f"{name}.{part}.inter", rows)
            report[f"{part} interactions"] = len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_cllm4rec.datasets.amazon", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("reviews", type=Path, help="reviews_*.json(.gz) (2014) or *.jsonl(.gz) (2023)")
    parser.add_argument("meta", type=Path, nargs="?", help="meta_*.json(.gz) (2014) or meta_*.jsonl(.gz) (2023)")
    parser.add_argument("--out", type=Path, required=True, help="output folder; its name is the dataset name")
    parser.add_argument("--min-rating", type=float, default=3.0, help="keep ratings strictly above (paper: 3)")
    parser.add_argument("--k-core", type=int, default=5)
    parser.add_argument("--split", nargs="?", const="0.8,0.1,0.1", default=None, help="write a per-user random split")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder that already holds files")
    args = parser.parse_args(argv)
    split = None
    if args.split:
        split = tuple(float(x) for x in args.split.split(","))
        if len(split) != 3 or abs(sum(split) - 1) > 1e-6:
            parser.error("--split takes three ratios summing to 1, e.g. 0.8,0.1,0.1")
    for path in (args.reviews, args.meta):
        if path is not None and not path.is_file():
            parser.error(f"{path} does not exist")
    report = convert(args.reviews, args.meta, args.out, args.min_rating, args.k_core, split, args.seed, args.overwrite)
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value:>10,}")
    print(f"wrote {args.out}/{args.out.name}.* (use --data_path={args.out.parent} --dataset={args.out.name})")


if __name__ == "__main__":
    main()
