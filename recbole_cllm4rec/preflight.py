"""Settings that RecBole uses only after the data is loaded and the model built, checked when the
config is: the metrics (an empty or unquoted list stopped RecBole with ``pop from an empty set``, a
``valid_metric`` outside them or ``topk`` after the first epoch) and the folders a run writes (a
``checkpoint_dir`` that is a file, a cache folder that cannot be written). One line each, naming
the key or the folder and what to do.
"""
from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path

# the keys whose text the content corpus tokenizes and caches (corpus.content_documents)
TEXT_KEYS = ("item_text_template", "user_text_template", "review_text_field")
QUOTED_METRICS = "--metrics=\"['Recall','NDCG']\""


def check_settings(config: dict) -> None:
    """Refuse bad metrics, text templates and unwritable folders before any work (``config``: the merged settings)."""
    from recbole_cllm4rec.data_files import template_fields

    check_metrics(config)
    for key in ("item_text_template", "user_text_template"):
        if config.get(key):
            template_fields(config[key], key)
    check_checkpoint_dir(config["checkpoint_dir"])
    check_cache_dir(config)


def absolute_paths(config: dict) -> None:
    """The folders a checkpoint records, absolute (``~`` expanded): the best-model file a resume point
    names (``checkpoint_dir``), the backbone folder and the cache that ``recommend`` loads, from
    whichever folder it runs (``data_path`` is made absolute by the runner, after RecBole joins it)."""
    if config.get("checkpoint_dir"):
        config["checkpoint_dir"] = os.path.abspath(os.path.expanduser(config["checkpoint_dir"]))
    if "llm_cache_dir" not in config:  # a model without an LM
        return
    from recbole_cllm4rec.backbone import BUILTIN  # transformers: only for models with an LM

    if config["llm_cache_dir"]:
        config["llm_cache_dir"] = os.path.abspath(os.path.expanduser(config["llm_cache_dir"]))
    llm = config.get("llm")
    if isinstance(llm, str) and llm not in BUILTIN and os.path.isdir(os.path.expanduser(llm)):
        config["llm"] = os.path.abspath(os.path.expanduser(llm))


def check_metrics(config: dict) -> None:
    """``metrics`` names at least one metric RecBole knows, and ``valid_metric`` is one of them."""
    from recbole.evaluator.register import metric_types

    metrics = config["metrics"]
    if isinstance(metrics, str) and metrics.startswith("["):
        raise ValueError(f"config key metrics={metrics!r} is text, not a list: quote each name ({QUOTED_METRICS})")
    names = [metrics] if isinstance(metrics, str) else list(metrics or ())
    if not names:
        raise ValueError(f"config key metrics={metrics!r} names no metric: give at least one ({QUOTED_METRICS})")
    for name in names:
        if str(name).lower() not in metric_types:
            close = difflib.get_close_matches(str(name).lower(), list(metric_types), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"config key metrics: there is no metric named {name!r}{hint}")
    valid, _, k = str(config["valid_metric"]).partition("@")
    if valid.lower() not in {str(name).lower() for name in names}:
        raise ValueError(
            f"config key valid_metric={config['valid_metric']!r} is not one of metrics {names}: the first "
            f"validation would stop on it. Add {valid} to metrics or validate on one of them"
        )
    topk = [config["topk"]] if isinstance(config["topk"], int) else list(config["topk"] or ())
    if k and (not k.isdigit() or int(k) not in topk):
        raise ValueError(
            f"config key valid_metric={config['valid_metric']!r} needs the cut-off {k} in topk={config['topk']}: "
            f"the first validation would stop on it. Add {k} to topk or validate at one of its cut-offs"
        )


def check_checkpoint_dir(path: str) -> None:
    """``checkpoint_dir`` is a folder this process can write (created later if missing)."""
    problem = unwritable(Path(path))
    if problem:
        raise ValueError(f"config key checkpoint_dir={path!r} cannot be written ({problem}): give a folder you can write "
                         "(it is created if missing)")


def check_cache_dir(config: dict) -> None:
    """The cache folder is writable where the run will write into it: the corpus cache (text keys
    set) and the converted backbone (``smollm2-135m`` not yet converted there). A read-only cache
    that already holds the converted backbone serves a run without text."""
    if config.get("llm") is None or "llm_cache_dir" not in config:  # a model without an LM (a shared config may set either)
        return
    from recbole_cllm4rec.backbone import SMOLLM2_FOLDER, converted_folder_problem, default_cache_dir

    folder = Path(config["llm_cache_dir"] or default_cache_dir())
    writes = [folder / "corpus"] if any(config.get(key) for key in TEXT_KEYS) else []
    if config["llm"] == "smollm2-135m" and converted_folder_problem(folder / SMOLLM2_FOLDER):
        writes.append(folder)
    for place in writes:
        problem = unwritable(place)
        if problem:
            raise ValueError(
                f"cache folder {place} cannot be written ({problem}): set RECBOLE_CLLM4REC_CACHE (or the config "
                "key llm_cache_dir) to a folder you can write"
            )


def unwritable(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder`` (or in its nearest existing parent, if it is
    missing), or ``None``. Tried, not read off the permission bits: root ignores them, a read-only
    mount does not. Nothing is left behind (an unnamed temporary file)."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def check_label_threshold(config: dict) -> None:
    """Refuse ``threshold`` for a model that reads no label (``config``: after RecBole set ``MODEL_TYPE``):
    RecBole turns the field into a 0/1 label that only context-aware models read, so every row, rated
    low or not, still trains and counts as a positive. ``val_interval`` filters the rows."""
    from recbole.utils import ModelType

    threshold = config.get("threshold")
    if not threshold or config["MODEL_TYPE"] in (ModelType.CONTEXT, ModelType.DECISIONTREE):
        return
    field, value = next(iter(threshold.items())) if isinstance(threshold, dict) else ("rating", threshold)
    raise ValueError(
        f"config key threshold={threshold!r} does nothing for {config['model']}: it makes a label that only "
        f"context-aware models read, and rows with {field} below {value} still train and count as positives. "
        f"To keep only the rows with {field} >= {value}, filter them: val_interval: {{{field}: \"[{value},inf)\"}}"
    )
