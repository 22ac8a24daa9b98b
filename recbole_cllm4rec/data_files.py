"""The dataset's atomic files: their checks before RecBole reads them, and the text columns read directly.

Checks end in one line naming the file and what to do: rows whose field count differs from the header
(a raw tab or newline inside a text field shifts columns and adds phantom rows), empty interaction
files, text that is not UTF-8, and duplicate (user, item) pairs, which are counted and removed
(``rm_dup_inter``, ``first`` unless set), or refused where removing them would scramble a pre-split
dataset. Text columns (``.item``, ``.user``, reviews) are read here, not through RecBole, so long text
never enters its token vocabularies; CLLM4Rec's content corpus and EASEText's features both read them.
"""
from __future__ import annotations

import csv
import logging
import re
import string
from pathlib import Path

import numpy as np
import pandas as pd
import torch

logger = logging.getLogger(__name__)


def atomic_file(dataset, suffix: str) -> Path:
    """``<data_path>/<dataset>.<suffix>``, the folder RecBole itself read the dataset from."""
    return Path(dataset.dataset_path) / f"{dataset.dataset_name}.{suffix}"


def read_atomic_columns(path: Path, fields: list[str]) -> pd.DataFrame:
    """Columns ``fields`` of an atomic file as raw strings, read directly (not through RecBole).

    Long text never enters RecBole's token vocabularies this way, and any column of the file can be
    used whether or not ``load_col`` loads it. Missing values are ``""``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (needed for the text columns {fields})")
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
    names = {column.split(":")[0]: column for column in header}
    missing = [field for field in fields if field not in names]
    if missing:
        raise ValueError(f"{path.name} has no column(s) {missing}; its columns are {list(names)}")
    frame = pd.read_csv(
        path,
        sep="\t",
        usecols=[names[f] for f in dict.fromkeys(fields)],
        dtype=str,
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
        encoding="utf-8",
        engine="c",
    )
    return frame.rename(columns={names[f]: f for f in fields})


def internal_ids(dataset, field: str, tokens: pd.Series) -> np.ndarray:
    """RecBole's internal ids of raw ``tokens`` of ``field``; 0 for tokens the dataset does not know."""
    return tokens.map(dataset.field2token_id[field]).fillna(0).to_numpy(dtype=np.int64)


def field_values(dataset, source: str, fields: list[str], key: str) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """(internal ids, unescaped ``fields`` values) of each row of the ``.item``/``.user`` file.

    Internal id 0: a row the dataset does not know. One row per id: a repeated id is refused with its
    lines (which text is meant?). ``key`` names the config key that asked for the fields, for errors.
    """
    id_field = dataset.iid_field if source == "item" else dataset.uid_field
    try:
        frame = read_atomic_columns(atomic_file(dataset, source), [id_field] + fields)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"{key}: {exc}") from exc
    repeated = frame[id_field][frame[id_field].duplicated(keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        lines = (repeated.index[repeated == first] + 2).tolist()  # 1-based, after the header
        raise ValueError(
            f"{atomic_file(dataset, source).name}: {repeated.nunique()} {id_field} value(s) have more than one row, "
            f"e.g. {first!r} on lines {', '.join(map(str, lines))}: keep one row per {source} (which text is meant?)"
        )
    return internal_ids(dataset, id_field, frame[id_field]), unescaped_rows(frame, fields)


def unescaped_rows(frame: pd.DataFrame, fields: list[str]) -> list[tuple[str, ...]]:
    """Each row's ``fields`` values, unescaped (``unescape``)."""
    return [tuple(unescape(v) for v in row) for row in frame[fields].itertuples(index=False)]


def template_fields(template: str, key: str = "item_text_template") -> list[str]:
    """The ``{field}`` names of a text template, in order, as ``str.format`` reads it (``{{`` and ``}}``
    are literal braces). A field with a format spec, a conversion or an attribute or index (``{title:>10}``,
    ``{title!r}``, ``{title.upper}``), an empty or numbered one, or an unmatched brace is refused with
    ``key``: filled from a column of text, each would give no text or not the text meant."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"config key {key}={template!r}: {exc}: write a literal brace as {{{{ or }}}}") from None
    fields = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if spec or conversion or not re.fullmatch(r"[A-Za-z_]\w*", field):
            written = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"config key {key}={template!r}: {written} is not a plain field: write a column of the file as "
                "{column} (no format spec, conversion, attribute or index), a literal brace as {{ or }}"
            )
        fields.append(field)
    return fields


def field_texts(dataset, source: str, template: str) -> list[str]:
    """Fill ``template`` (``"{title} by {brand}"``) from the ``.item``/``.user`` file, one string per id.

    ``texts[i]`` is internal id ``i``'s text; ``""`` for ids without a row or with every referenced
    field empty (no document for them).
    """
    fields = template_fields(template, f"{source}_text_template")
    ids, values = field_values(dataset, source, fields, f"{source}_text_template {template!r}")
    texts = [""] * dataset.num(dataset.iid_field if source == "item" else dataset.uid_field)
    for row, row_values in zip(ids.tolist(), values):
        if row:
            texts[row] = filled_text(template, fields, row_values)
    return texts


def filled_text(template: str, fields: list[str], values: tuple[str, ...]) -> str:
    """``template`` filled with one row's ``values`` of ``fields``; ``""`` (no document) when all are empty."""
    return template.format(**dict(zip(fields, values))).strip() if any(values) else ""


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    r"""Undo the escaping of atomic files, where text holds ``\t``, ``\n``, ``\\`` for tab, newline, backslash."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), text) if "\\" in text else text


def review_texts(dataset, field: str, training_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(users, items, texts) of the reviews behind training interactions only.

    Reviews come from ``<dataset>.review`` (user, item, ``field`` columns) if it exists, else from
    the ``field`` column of the ``.inter`` file (the training benchmark file, if any). Whatever the
    file, a review is kept only if its (user, item) pair is in ``training_items`` (``[n_users, W]``,
    0-padded): validation and test interactions never reach the content corpus.
    """
    path = atomic_file(dataset, "review")
    if not path.is_file():
        benchmark = dataset.config["benchmark_filename"]
        path = atomic_file(dataset, f"{benchmark[0]}.inter" if benchmark else "inter")
    frame = read_atomic_columns(path, [dataset.uid_field, dataset.iid_field, field])
    users = internal_ids(dataset, dataset.uid_field, frame[dataset.uid_field])
    items = internal_ids(dataset, dataset.iid_field, frame[dataset.iid_field])
    n_items = dataset.num(dataset.iid_field)
    train_rows, train_cols = training_items.nonzero(as_tuple=True)
    train_keys = (train_rows * n_items + training_items[train_rows, train_cols]).cpu().numpy()
    keep = np.isin(users * n_items + items, train_keys) & (frame[field].to_numpy() != "")
    logger.info("content corpus: %d of %d reviews in %s are of training interactions", keep.sum(), len(keep), path.name)
    texts = [unescape(t) for t in frame[field].to_numpy()[keep].tolist()]
    return torch.from_numpy(users[keep]), torch.from_numpy(items[keep]), texts


# ---------------------------------------------------------------------- checks
def check_atomic_file(path: Path, separator: str = "\t", key_fields: tuple[str, ...] = ()) -> list[tuple[bytes, ...]]:
    """Refuse a file whose rows do not match its header's field count, in one pass over its bytes.

    Returns one tuple per non-blank row: the raw values of ``key_fields`` (empty if the header lacks
    one of them), for counting duplicates without reading the file again.
    """
    sep = separator.encode()
    with open(path, "rb") as f:
        header = f.readline().rstrip(b"\r\n")
        if not header.strip():
            raise ValueError(f"{path} is empty: an atomic file starts with a header line of field:type columns")
        if header.startswith(b"\xef\xbb\xbf"):
            raise ValueError(f"{path} starts with a UTF-8 byte-order mark, which RecBole reads as part of its first "
                             "field's name: save the file without the BOM")
        check_utf8(path, 1, header)
        names = [column.split(b":")[0].decode("utf-8", "replace") for column in header.split(sep)]
        columns = [names.index(k) for k in key_fields] if all(k in names for k in key_fields) else []
        bad, keys = [], []
        for line_no, line in enumerate(f, 2):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            check_utf8(path, line_no, line)
            values = line.split(sep)
            if len(values) != len(names):
                bad.append(f"line {line_no} has {len(values)}")
            else:
                keys.append(tuple(values[c] for c in columns))
    if bad:
        raise ValueError(
            f"{path}: {len(bad)} row(s) do not have the header's {len(names)} fields ({'; '.join(bad[:3])}"
            f"{'; ...' if len(bad) > 3 else ''}): a raw tab or newline inside a text field? "
            r"Write them as \t and \n (CLLM4Rec turns them back)."
        )
    return keys


def check_utf8(path: Path, line_no: int, line: bytes) -> None:
    """Refuse a line that is not UTF-8, naming the file, the line and the first bad bytes."""
    if line.isascii():  # most lines of most files: no decoding needed
        return
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: line {line_no} is not UTF-8 text (column {exc.start + 1}: {line[exc.start : exc.start + 4]!r}): "
            "save the file as UTF-8"
        ) from None


def check_dataset_files(config) -> str | None:
    """Validate the dataset's atomic files before RecBole reads them (see the module docstring);
    returns the ``rm_dup_inter`` the dataset needs.

    Pre-split datasets (``benchmark_filename``) are cut apart by row counts after RecBole's
    filtering, so any row RecBole drops or reorders there mixes the parts: duplicates are refused
    and ``rm_dup_inter`` is off (with a line in the log) for them.
    """
    folder = Path(config["data_path"])
    name = config["dataset"]
    separator = config["field_separator"] or "\t"
    benchmark = config["benchmark_filename"]
    inter_files = [folder / f"{name}.{part}.inter" for part in benchmark] if benchmark else [folder / f"{name}.inter"]
    pairs = []
    for path in inter_files:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (dataset {name!r} under data_path {folder.parent})")
        rows = check_atomic_file(path, separator, (config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]))
        if not rows:
            raise ValueError(f"{path} has a header but no interactions")
        pairs += [row for row in rows if row]
    for suffix in ("item", "user", "review"):
        path = folder / f"{name}.{suffix}"
        if path.is_file():
            check_atomic_file(path, separator)
    return duplicate_removal(len(pairs) - len(set(pairs)), name, benchmark, config["rm_dup_inter"])


def duplicate_removal(duplicates: int, name: str, benchmark: list[str] | None, rm_dup_inter: str | None) -> str | None:
    """The ``rm_dup_inter`` for ``duplicates`` repeated (user, item) pairs of dataset ``name``: refused
    across pre-split files, otherwise removed (the ``first`` of each unless ``rm_dup_inter`` is set)."""
    if benchmark:
        if duplicates:
            raise ValueError(
                f"{duplicates} (user, item) pair(s) occur more than once across {name}.{{{','.join(benchmark)}}}.inter: "
                "a test pair also in training is masked at test and can never be recommended. Remove the duplicates "
                "from the files (RecBole cannot: it would mix the parts)."
            )
        if rm_dup_inter is not None:
            logger.info("benchmark files hold no duplicate pairs: rm_dup_inter off (RecBole would reorder the rows before cutting the parts)")
        return None
    if duplicates:
        rm_dup_inter = "first" if rm_dup_inter is None else rm_dup_inter  # not set: keep the first of each (the earliest, with timestamps)
        logger.warning(
            f"{name}.inter: {duplicates} duplicate (user, item) pair(s) removed, the {rm_dup_inter} of "
            "each kept (rm_dup_inter): otherwise the split could put a pair in training and test"
        )
    return rm_dup_inter


def check_benchmark_rows(dataset) -> None:
    """A pre-split dataset is cut apart by its files' row counts after filtering: refuse any drop."""
    sizes = getattr(dataset, "file_size_list", None)
    if dataset.benchmark_filename_list and sizes and sum(sizes) != len(dataset.inter_feat):
        raise ValueError(
            f"RecBole's filters dropped {sum(sizes) - len(dataset.inter_feat)} of {sum(sizes)} interactions of the "
            "pre-split benchmark files, which are cut apart by row counts: the parts would be mixed. Turn the "
            "filters off for this dataset (user_inter_num_interval, item_inter_num_interval, val_interval, "
            "filter_inter_by_user_or_item) or filter the files themselves."
        )
