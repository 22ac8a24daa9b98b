"""Top-k recommendations from a saved CLLM4Rec (or any RecBole general model) checkpoint.

    python -m recbole_cllm4rec.recommend --checkpoint saved/CLLM4Rec-....pth --user 196 --topk 10
    python -m recbole_cllm4rec.recommend --checkpoint saved/...pth --users-file users.txt --out recs.tsv
    python -m recbole_cllm4rec.recommend --checkpoint saved/CLLM4Rec-....pth --user 196 --new-items new.item

Users are given by their raw ids (as in the atomic files). Every item the user already has in the
dataset (train, valid and test interactions) is excluded. Users are scored in batches, one forward
pass per batch. ``--topk`` is bounded by each user's unseen items (fewer are listed, with a note).
``--new-items``: an atomic ``.item`` file of items that arrived after training (new ids, the text
columns of the dataset's ``item_text_template``), ranked beside the catalog without retraining:
CLLM4Rec reads their text through its text map (``model.text_map``).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from recbole_cllm4rec.checkpoint import replaced_whole
from recbole_cllm4rec.cli import command_line
from recbole_cllm4rec.preflight import unwritable

TITLE_FIELDS = ("title", "movie_title", "name")


def item_titles(dataset) -> list[str] | None:
    """Item titles by internal id, from the first ``title``/``movie_title``/``name`` column of the .item file."""
    from recbole_cllm4rec.data_files import field_texts

    for field in TITLE_FIELDS:
        try:
            return field_texts(dataset, "item", "{" + field + "}")
        except ValueError:
            continue
    return None


def internal_user_ids(dataset, raw_users: list[str]) -> torch.Tensor:
    known = dataset.field2token_id[dataset.uid_field]
    padding = str(dataset.field2id_token[dataset.uid_field][0])  # RecBole's [PAD] user: id 0, nobody
    unknown = [u for u in raw_users if u not in known or known[u] == 0]
    if padding in unknown:
        raise SystemExit(f"{padding!r} is RecBole's padding user, not a user of the dataset: give a raw user id")
    if unknown:
        examples = ", ".join(list(known)[1:6])
        raise SystemExit(f"unknown user id(s) {unknown[:5]} (the dataset's user ids look like: {examples})")
    return torch.tensor([known[u] for u in raw_users], dtype=torch.long)


def new_items(model, dataset, config, path: str) -> tuple[list[str], torch.Tensor]:
    """The raw ids of ``path``'s items (an atomic ``.item`` file) and their head rows from their text."""
    from recbole_cllm4rec.data_files import filled_text, read_atomic_columns, template_fields, unescaped_rows

    if not hasattr(model, "text_map_rows"):
        raise SystemExit(f"--new-items needs a model that reads item text (CLLM4Rec), not {config['model']}")
    template = config["item_text_template"]
    if not template:
        raise SystemExit("--new-items: the checkpoint's model was trained without item_text_template: it reads no item text")
    fields = template_fields(template)
    frame = read_atomic_columns(Path(path), [dataset.iid_field] + fields)
    raw = frame[dataset.iid_field].tolist()
    known = [item for item in raw if item in dataset.field2token_id[dataset.iid_field]]
    if known or not raw:
        raise SystemExit(f"--new-items {path}: " + (f"items {known[:5]} are already in the catalog" if raw else "no items"))
    texts = [filled_text(template, fields, row) for row in unescaped_rows(frame, fields)]
    empty = [item for item, text in zip(raw, texts) if not text]
    if empty:
        raise SystemExit(f"--new-items {path}: items {empty[:5]} have no text in the template's columns {fields}")
    model.eval()
    return raw, model.text_map_rows(texts)


def recommend(model, dataset, users: torch.Tensor, topk: int, batch_size: int = 64, new_rows: torch.Tensor | None = None):
    """(scores, item ids) of the top ``topk`` unseen items per user, ``[len(users), topk]``; item ids
    from ``n_items`` on are the rows of ``new_rows`` (items added after training). A user with fewer
    unseen items gets ``-inf`` scores in the surplus columns."""
    seen, _, seen_len = dataset.history_item_matrix()  # the whole dataset: nothing known is recommended
    model.eval()
    top_scores, top_items = [], []
    with torch.no_grad():
        for batch in users.split(batch_size):
            batch = batch.to(model.device)
            scores = batch_scores(model, batch, new_rows)
            scores[:, 0] = float("-inf")
            history = seen[batch.cpu()].to(scores.device)
            scores.scatter_(1, history, float("-inf"))  # padding entries point at item 0, already -inf
            values, items = scores.topk(min(topk, scores.shape[1] - 1), dim=1)  # -inf: fewer unseen items
            top_scores.append(values.cpu())
            top_items.append(items.cpu())
    return torch.cat(top_scores), torch.cat(top_items)


def batch_scores(model, users: torch.Tensor, new_rows: torch.Tensor | None) -> torch.Tensor:
    """``[len(users), n_items (+ len(new_rows))]``: ``full_sort_predict``'s scores, and with ``new_rows``
    (head rows of items added after training) the same features against the catalog's and the new rows,
    from one forward pass per pack of prompts."""
    if new_rows is None:
        return model.full_sort_predict({model.USER_ID: users}).view(len(users), -1).float()
    scores = torch.empty(len(users), model.n_items + len(new_rows), device=new_rows.device)
    for chunk, head_input in model.scoring_batches(users):
        features, rows = model.item_head(head_input)
        scores[chunk] = features.float() @ torch.cat([rows, new_rows.to(rows)]).float().T
    return scores


def read_users_file(path: str) -> list[str]:
    """The raw user ids of ``--users-file`` (whitespace-separated), refusing a file that is missing,
    unreadable or empty before the model is loaded."""
    try:
        users = Path(path).read_text(encoding="utf-8").split()
    except UnicodeDecodeError as exc:
        raise SystemExit(f"--users-file {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise SystemExit(f"--users-file {path} cannot be read ({exc.strerror}): give a file with one raw user id per line") from None
    if not users:
        raise SystemExit(f"--users-file {path} is empty: write one raw user id per line")
    return users


def write_rows(rows: list[list], out: str | None) -> None:
    """The TSV of ``rows`` to ``out`` (a temporary file renamed into place: whole or not at all), or stdout."""
    if out is None:
        _write_tsv(rows, sys.stdout)
        return
    with replaced_whole(out) as tmp, open(tmp, "w", newline="") as f:
        _write_tsv(rows, f)


def _write_tsv(rows: list[list], stream) -> None:
    writer = csv.writer(stream, delimiter="\t", lineterminator="\n")
    writer.writerow(["user", "rank", "item", "score", "title"])
    writer.writerows(rows)


def check_paths(args: argparse.Namespace) -> None:
    """Refuse, before the model is loaded, a checkpoint that is a folder and an ``--out`` that cannot be written."""
    if Path(args.checkpoint).is_dir():
        raise SystemExit(f"--checkpoint {args.checkpoint} is a folder: give a checkpoint file in it (<model>-<time>.pth)")
    problem = unwritable(Path(args.out).resolve().parent) if args.out else None
    if problem or (args.out and Path(args.out).is_dir()):
        raise SystemExit(f"--out {args.out} cannot be written ({problem or 'it is a folder'}): give a file in a folder you can write")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a raw user id")
    who.add_argument("--users-file", help="a file with one raw user id per line")
    parser.add_argument("--topk", type=positive_int, default=10)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--data-path", help="the folder holding the dataset's folder, if not where it was at training")
    parser.add_argument("--out", help="TSV output for --users-file (default: stdout)")
    parser.add_argument("--new-items", help="an atomic .item file of items added after training, ranked from their text")
    args = parser.parse_args(argv)

    import recbole_cllm4rec  # noqa: F401  (shims + registration)
    from recbole_cllm4rec.quick_start import load_data_and_model

    check_paths(args)
    raw_users = [args.user] if args.user else read_users_file(args.users_file)
    try:
        config, model, dataset, *_ = load_data_and_model(args.checkpoint, args.data_path)
        added, new_rows = new_items(model, dataset, config, args.new_items) if args.new_items else ([], None)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        raise SystemExit(f"recommend: {exc}") from exc
    users = internal_user_ids(dataset, raw_users)
    scores, items = recommend(model, dataset, users, args.topk, args.batch_size, new_rows)
    titles = item_titles(dataset)
    titles = titles + [""] * len(added) if titles else None
    raw_items = list(dataset.field2id_token[dataset.iid_field]) + added

    rows = []
    for raw_user, user_scores, user_items in zip(raw_users, scores.tolist(), items.tolist()):
        unseen = [(score, item) for score, item in zip(user_scores, user_items) if score != float("-inf")]
        if len(unseen) < args.topk:
            print(f"user {raw_user} has {len(unseen)} unseen item(s): {len(unseen)} listed, not {args.topk}", file=sys.stderr)
        for rank, (score, item) in enumerate(unseen, start=1):
            rows.append([raw_user, rank, raw_items[item], f"{score:.4f}", titles[item] if titles else ""])
    if args.user:
        for _, rank, item, score, title in rows:
            print(f"{rank:>3}  {item:<12} {score:>9}  {title}")
        return
    write_rows(rows, args.out)


if __name__ == "__main__":
    command_line(main)
