"""Run one or several models on the identical split and compare them in one table.

Each model goes through RecBole's own pieces (``create_dataset``, ``data_preparation``, its
trainer) with the plugin's ``Config``, ``get_model`` and ``get_trainer``, the same seed and protocol, so every model sees the same split;
a fingerprint of the split is recorded per model and checked to be equal.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
from pathlib import Path
from time import time

import torch
import yaml
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_cllm4rec.checkpoint import load_checkpoint, resume_mismatch, resume_setting_changes
from recbole_cllm4rec.cold_items import cold_item_results, cold_start_lines
from recbole_cllm4rec.comparison import save_comparison
from recbole_cllm4rec.config_rules import (
    COMMON_RULES,
    check_config_files,
    check_config_values,
    check_renamed_keys,
    check_retired_options,
    given_keys,
    keys_read_by,
    unread_key_warnings,
)
from recbole_cllm4rec.data_files import check_benchmark_rows, check_dataset_files
from recbole_cllm4rec.preflight import check_cache_dir
from recbole_cllm4rec.registry import PROPERTIES_DIR, Config, check_model_name, get_model, get_trainer, property_files, under_torchrun
from recbole_cllm4rec.runfiles import latest_resume_point, resume_points

logger = logging.getLogger(__name__)


_RUN_LOG_HANDLERS: list[logging.Handler] = []


def init_run_logger(config) -> None:
    """RecBole's ``init_logger``, giving every run its own log file (and so its own TensorBoard
    folder, which RecBole names after the log file).

    RecBole's ``basicConfig`` does nothing once the root logger has handlers, so in a comparison
    every later model would log into the first model's file: the previous run's handlers are closed
    first, and handlers installed by others (pytest, the user) are kept.
    """
    root = logging.getLogger()
    for handler in _RUN_LOG_HANDLERS:
        root.removeHandler(handler)
        handler.close()
    others = root.handlers[:]
    for handler in others:
        root.removeHandler(handler)
    try:
        init_logger(config)
    finally:
        _RUN_LOG_HANDLERS[:] = root.handlers
        for handler in others:
            root.addHandler(handler)


def fit_topk_to_catalog(config, n_items: int) -> None:
    """Drop the ``topk`` cut-offs longer than the catalog (RecBole would fail after training), with a
    warning; refuse a ``valid_metric`` whose cut-off is dropped, and ``PaperScore``, which needs 100."""
    topk = [config["topk"]] if isinstance(config["topk"], int) else list(config["topk"])
    kept = [k for k in topk if k <= n_items]
    if kept == topk:
        return
    kept = kept or [n_items]
    metrics = [str(m).lower() for m in ([config["metrics"]] if isinstance(config["metrics"], str) else config["metrics"])]
    if "paperscore" in metrics:
        raise ValueError(f"PaperScore reads the top 100 items and {config['dataset']} has {n_items}: use another metric")
    logging.getLogger().warning(f"topk {topk} reaches beyond the {n_items} items of {config['dataset']}: topk {kept}")
    config["topk"] = kept
    metric, _, k = str(config["valid_metric"]).partition("@")
    if k and int(k) not in kept:
        raise ValueError(
            f"valid_metric {config['valid_metric']} needs a top-{k} of {config['dataset']}'s {n_items} items: "
            f"choose a cut-off of at most {n_items} (for example --valid_metric={metric}@{max(kept)})"
        )


def split_fingerprint(*datasets) -> str:
    """A short hash of the (user, item) pairs of the train / valid / test datasets, in order."""
    digest = hashlib.sha1()
    for dataset in datasets:
        pairs = sorted(zip(dataset.inter_feat[dataset.uid_field].tolist(), dataset.inter_feat[dataset.iid_field].tolist()))
        digest.update(repr(pairs).encode())
        digest.update(b"|")
    return digest.hexdigest()[:12]


def run_model(
    model: str, dataset: str, config_file_list=None, config_dict=None, saved: bool = True, compared: tuple[str, ...] = ()
) -> dict:
    """Train and test one model; returns metrics, timings and the split fingerprint. ``compared``: the
    comparison's models, whose keys are not warned as unread (they were given for one of them)."""
    config, trainer_class = run_config(model, dataset, config_file_list, config_dict, compared)
    train_data, valid_data, test_data, fingerprint = run_data(config)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_obj = build_model(config, train_data.dataset, from_checkpoint=bool(config["resume"]))
    logging.getLogger().info(model_obj)
    takes_split = "split_fingerprint" in inspect.signature(trainer_class).parameters  # CLLM4Rec's: RecBole's take none
    trainer = trainer_class(config, model_obj, **({"split_fingerprint": fingerprint} if takes_split else {}))
    result = train_and_test(trainer, config, (train_data, valid_data, test_data), fingerprint, saved)
    if not config["single_spec"]:
        torch.distributed.destroy_process_group()
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": result["best_valid_score"],
        "valid_score_bigger": config["valid_metric_bigger"],
        **{key: result[key] for key in ("best_valid_result", "test_result", "cold_result", "train_time", "eval_time")},
        "split": fingerprint,
        "checkpoint": trainer.saved_model_file if saved else None,
        "losses": list(getattr(trainer, "loss_history", [])),
        "stage_seconds": dict(getattr(trainer, "stage_seconds", {})),
        "valid_history": list(getattr(trainer, "valid_history", [])),
    }


def run_config(model: str, dataset: str, config_file_list=None, config_dict=None, compared: tuple[str, ...] = ()):
    """The run's config, checked before any work (one line for the first refusal), its logger
    started; and the model's trainer class. A key given that neither the model nor another of the
    ``compared`` models reads is a warning."""
    check_config_files(config_file_list)
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    # absolute: checkpoints record it, and they are loaded from other folders
    config["data_path"] = os.path.abspath(config["data_path"])
    init_seed(config["seed"], config["reproducibility"])
    if config["single_spec"]:
        init_run_logger(config)
    else:  # RecBole's init_logger creates ./log/<model> check-then-create: rank 0 first, then the rest
        first = torch.distributed.get_rank() == 0
        for turn in (True, False):
            if first == turn:
                init_run_logger(config)
            torch.distributed.barrier()
    log = logging.getLogger()
    check_renamed_keys(config)  # refusals first: the one line is all a refused run prints
    check_retired_options(config)
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    rules = {**COMMON_RULES, **getattr(get_model(config["model"]), "CONFIG_RULES", {})}
    check_config_values(config, {**rules, **getattr(trainer_class, "CONFIG_RULES", {})})
    if config["resume"]:  # the keys given are checked before the data is read
        check_resume_points(config)
    log.info(config)
    read = frozenset().union(*(keys_read_by(*model_and_trainer(name), PROPERTIES_DIR) for name in {model, *compared}))
    for warning in [*unread_key_warnings(config, read, PROPERTIES_DIR), *untrained_warning(config)]:
        log.warning(warning)
    return config, trainer_class


def model_and_trainer(name: str) -> tuple[type, type]:
    """The registered model class of ``name`` and its trainer class."""
    model_class = get_model(name)
    return model_class, get_trainer(model_class.type, name)


def check_resume_points(config) -> None:
    """Refuse a resume whose given keys change the run's settings, or of another model or dataset:
    the named resume point, or with ``resume: true`` when every resume point of the model and dataset
    refuses (which one is meant depends on the split, known once the data is read; the trainer then
    checks every key of the one it resumes)."""
    named = isinstance(config["resume"], str)
    refusals = []
    for path in [config["resume"]] if named else resume_points(config["checkpoint_dir"], config["model"]):
        checkpoint = load_checkpoint(path, "cpu", verify=False)
        mismatch = resume_mismatch(checkpoint, config["model"], config["dataset"], None)
        if mismatch is None or named:
            refusal = mismatch or resume_setting_changes(checkpoint, config, given_keys(config))[0]
            if refusal is None:
                return
            refusals.append(f"cannot resume from {path}: {refusal}")
    if refusals:
        raise ValueError(refusals[0])


def untrained_warning(config) -> list[str]:
    """What the test of a run without finetuning epochs (``epochs: 0``) is of: nothing is validated."""
    if config["epochs"] != 0:
        return []
    pretraining = {key: config[key] for key in ("content_warmup_epochs", "pretrain_epochs") if config[key] is not None}
    if any(pretraining.values()):
        return [f"epochs=0: no finetuning epoch runs and nothing is validated: the test is of the model after "
                f"its {sum(pretraining.values())} pretraining epoch(s)"]  # fmt: skip
    given = "".join(f", {key}=0" for key in pretraining)
    return [f"nothing trains (epochs=0{given}): the test is of the starting model, and nothing is validated"]


def run_data(config):
    """(train, valid, test, split fingerprint) of the run's dataset, its files checked first."""
    log = logging.getLogger()
    config["rm_dup_inter"] = check_dataset_files(config)
    data = create_dataset(config)
    check_benchmark_rows(data)
    fit_topk_to_catalog(config, data.item_num - 1)
    log.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    fingerprint = split_fingerprint(train_data.dataset, valid_data.dataset, test_data.dataset)
    for line in cold_start_lines(train_data.dataset, valid_data.dataset, test_data.dataset):
        log.warning(line)
    return train_data, valid_data, test_data, fingerprint


def train_and_test(trainer, config, data: tuple, fingerprint: str, saved: bool) -> dict:
    """Fit (or resume) ``trainer`` and test its best model; its run's files are released either way."""
    train_data, valid_data, test_data = data
    try:
        if config["resume"]:
            resume = config["resume"]
            if resume is True:
                resume = latest_resume_point(config["checkpoint_dir"], config["model"], config["dataset"], fingerprint)
            trainer.resume_checkpoint(resume)
        start = time()
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"]
        )
        train_time = time() - start
        start = time()
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
        eval_time = time() - start
    except KeyboardInterrupt as exc:  # the command line names the resume point (cli.command_line)
        raise KeyboardInterrupt(getattr(trainer, "resume_file", "")) from exc
    finally:
        getattr(trainer, "release_files", lambda: None)()  # CLLM4Rec's run lock; RecBole's trainers have none
    log = logging.getLogger()
    log.info(set_color("best valid ", "yellow") + f": {best_valid_result or 'none (no epoch was validated)'}")
    log.info(set_color("test result", "yellow") + f": {test_result}")
    cold_result = cold_item_results(trainer.model, {"test": test_data, "valid": valid_data}, train_data.dataset, config)
    return {
        "best_valid_score": best_valid_score,
        "best_valid_result": dict(best_valid_result or {}),
        "test_result": dict(test_result),
        "cold_result": cold_result,
        "train_time": train_time,
        "eval_time": eval_time,
    }


def build_model(config, dataset, from_checkpoint: bool) -> torch.nn.Module:
    """The configured model on its device. ``from_checkpoint``: its weights are loaded next, so a model
    that takes ``start_tables`` (CLLM4Rec) skips the starts of its ID tables, which the checkpoint
    overwrites."""
    model_class = get_model(config["model"])
    skips_starts = from_checkpoint and "start_tables" in inspect.signature(model_class).parameters
    starts = {"start_tables": False} if skips_starts else {}
    return model_class(config, dataset, **starts).to(config["device"])


def load_data_and_model(checkpoint_file: str, data_path: str | None = None):
    """RecBole's ``load_data_and_model`` made safe: the checkpoint's checksum is verified, the data
    folder can be given again (``data_path``: the folder holding ``<dataset>/``) when the recorded one
    is gone, and the split rebuilt from the data must be the one the checkpoint was trained on.

    Returns ``(config, model, dataset, train_data, valid_data, test_data)``.
    """
    checkpoint = load_checkpoint(checkpoint_file, "cpu")
    config = checkpoint["config"]
    # keys the model's yaml gained after the checkpoint was saved: what the checkpoint was trained
    # with (a key another key stood for then), else their defaults
    for key, stood_for in getattr(get_model(config["model"]), "EARLIER_KEYS", {}).items():
        if key not in config.final_config_dict:
            config[key] = config[stood_for]
    for defaults in reversed(property_files(get_model(config["model"]))):  # the model's own first
        loaded = yaml.load(defaults.read_text(), Loader=config.yaml_loader)  # RecBole's loader: 1e-4 is a float
        for key, value in (loaded or {}).items():
            if key not in config.final_config_dict:
                config[key] = value
    check_retired_options(config, checkpoint_file)
    if data_path is not None:
        config["data_path"] = os.path.join(os.path.abspath(data_path), config["dataset"])
    if not os.path.isdir(config["data_path"]):
        raise FileNotFoundError(
            f"{checkpoint_file} was trained on {config['data_path']}, which does not exist here: give the folder "
            f"that holds {config['dataset']}/ (data_path)"
        )
    check_cache_dir(config.final_config_dict)  # the model writes the corpus cache if this data's is not there
    if torch.device(config["device"]).type == "cuda" and not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    split = checkpoint.get("split")
    if split and split != split_fingerprint(train_data.dataset, valid_data.dataset, test_data.dataset):
        raise ValueError(f"the data under {config['data_path']} no longer gives the split {checkpoint_file} was trained on")
    init_seed(config["seed"], config["reproducibility"])
    model = build_model(config, train_data.dataset, from_checkpoint=True)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def _run_rank(rank: int, model: str, dataset: str, config_file_list, config_dict: dict, saved: bool, queue, compared=()) -> None:
    """One process of a data-parallel run started by ``run(nproc=...)``; global rank 0 reports back."""
    if not torch.cuda.is_available():  # CPU ranks share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config_dict["nproc"]))
    result = run_model(model, dataset, config_file_list, {**config_dict, "local_rank": rank}, saved, compared)
    if rank + config_dict["offset"] == 0:
        queue.put(result)


def run_data_parallel(
    model: str, dataset: str, config_file_list, config_dict: dict, saved: bool, nproc: int, compared: tuple[str, ...] = ()
) -> dict | None:
    """``nproc`` processes on this machine (RecBole's ``--nproc`` launcher); the result on global rank 0's machine."""
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_run_rank, args=(model, dataset, config_file_list, config_dict, saved, queue, compared), nprocs=nproc, join=True)
    return queue.get() if config_dict["offset"] == 0 else None


def torchrun_settings() -> dict | None:
    """``local_rank``/``world_size``/``offset`` from torchrun's environment, or ``None`` outside torchrun."""
    if not under_torchrun():
        return None
    env = os.environ
    local_rank = int(env["LOCAL_RANK"])
    return {
        "local_rank": local_rank,
        "world_size": int(env["WORLD_SIZE"]),
        "nproc": int(env.get("LOCAL_WORLD_SIZE", 1)),
        "offset": int(env["RANK"]) - local_rank,
    }


def run(
    models: list[str],
    dataset: str,
    config_file_list=None,
    config_dict=None,
    saved: bool = True,
    results_dir: str | Path = "results",
    nproc: int = 1,
    world_size: int = -1,
    ip: str = "localhost",
    port: str | int = "5678",
    group_offset: int = 0,
) -> list[dict]:
    """Run every model on ``dataset`` (same split), print and save the comparison table.

    Unknown model names fail before anything trains. The table goes to stdout and to
    ``results_dir/<dataset>-<models>-<time>.md`` and ``.csv``, drawn as ``.png`` with matplotlib. With ``nproc`` > 1 (or ``world_size`` over
    several machines, RecBole's launcher) or under torchrun, each model trains data-parallel and
    only global rank 0 writes the table.
    """
    for name in models:
        check_model_name(name)
    if len(models) > 1 and (config_dict or {}).get("resume") not in (None, "None", False, "False"):
        raise ValueError("resume continues one run: give a single --model with --resume")
    torchrun, compared = torchrun_settings(), tuple(models)
    if torchrun is not None:
        results = [run_model(m, dataset, config_file_list, {**(config_dict or {}), **torchrun}, saved, compared) for m in models]
        if torchrun["local_rank"] + torchrun["offset"] != 0:
            return results
    elif nproc > 1 or world_size > 0:
        launch = {
            "world_size": world_size if world_size > 0 else nproc,
            "nproc": nproc,
            "ip": ip,
            "port": str(port),
            "offset": group_offset,
        }
        results = [run_data_parallel(m, dataset, config_file_list, {**(config_dict or {}), **launch}, saved, nproc, compared) for m in models]
        if group_offset != 0:
            return []
    else:
        results = [run_model(m, dataset, config_file_list, dict(config_dict or {}), saved, compared) for m in models]
    splits = {r["split"] for r in results}
    if len(splits) > 1:
        raise RuntimeError(f"models saw different splits: {[(r['model'], r['split']) for r in results]}")
    save_comparison(results, Path(results_dir) / f"{results[0]['dataset']}-{'-'.join(models)}-{time():.0f}")
    return results
