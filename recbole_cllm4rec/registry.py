"""The one place where this plugin plugs into RecBole, without rebinding anything inside it.

The plugin's entry points (``run_recbole.py``, ``run_hyper.py``, ``quick_start.run_model``,
``recommend``) build :class:`Config`, a subclass of RecBole's, and resolve models and trainers with
:func:`get_model` / :func:`get_trainer`: the plugin's first, RecBole's otherwise. A plain
``import recbole_cllm4rec`` applies the compatibility shims and registers the ``PaperRecall`` and ``PaperScore`` metrics;
RecBole's own ``run_recbole`` and ``Config`` behave exactly as without the plugin.
"""
from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path

import recbole.utils as recbole_utils
from recbole.config import Config as RecBoleConfig

from recbole_cllm4rec import metrics

# the yaml defaults: inside the installed package (a wheel), else the checkout's top-level folder
_PACKAGED = Path(__file__).resolve().parent / "properties"
PROPERTIES_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parent.parent / "properties"

# model name -> "module:Class"; trainers resolved the same way. Imported lazily: the model module
# pulls in transformers, which RecBole baselines never need.
MODELS = {
    "CLLM4Rec": "recbole_cllm4rec.model.cllm4rec:CLLM4Rec",
    "EASEText": "recbole_cllm4rec.model.easetext:EASEText",  # the text-aware linear baseline
    # ablations that need code: subclasses, with their base's defaults and trainer
    "CLLM4RecWordsStart": "recbole_cllm4rec.model.ablations:CLLM4RecWordsStart",
    "TextKNN": "recbole_cllm4rec.model.textknn:TextKNN",  # the content-only baseline
}
TRAINERS = {"CLLM4Rec": "recbole_cllm4rec.trainer:CLLM4RecTrainer"}

_RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


def _import(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@functools.lru_cache(maxsize=None)
def known_models() -> tuple[str, ...]:
    """Every model name that resolves: the plugin's and RecBole's (exlib ones only if installed)."""
    from recbole.model.abstract_recommender import AbstractRecommender

    names = set(MODELS)
    for package in _RECBOLE_MODEL_PACKAGES:
        try:
            module = importlib.import_module(f"recbole.model.{package}")
        except ImportError:  # exlib_recommender needs lightgbm and xgboost
            continue
        names.update(
            name
            for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, AbstractRecommender)
        )
    return tuple(sorted(names, key=str.lower))


def check_model_name(name: str) -> None:
    """Fail with the list of valid names instead of RecBole's "No module named 'lightgbm'"."""
    if name not in MODELS and name not in known_models():
        raise ValueError(
            f"Unknown model {name!r}. Known models (case-sensitive): {', '.join(known_models())}"
        )


def get_model(model_name: str):
    """The plugin's models first, then RecBole's; a clear error for unknown names."""
    if model_name in MODELS:
        return _import(MODELS[model_name])
    check_model_name(model_name)
    return recbole_utils.get_model(model_name)


def get_trainer(model_type, model_name: str):
    """The plugin's trainers first (a plugin model's own, else its nearest base class's), then RecBole's."""
    if model_name in MODELS:
        for base in get_model(model_name).__mro__:
            if base.__name__ in TRAINERS:
                return _import(TRAINERS[base.__name__])
    return recbole_utils.get_trainer(model_type, model_name)


def property_files(model_class: type) -> list[Path]:
    """``properties/<Model>.yaml`` of the model's class and of its bases that have one, bases first:
    a registered subclass starts from its base model's defaults."""
    files = [PROPERTIES_DIR / f"{base.__name__}.yaml" for base in reversed(model_class.__mro__)]
    return [file for file in files if file.is_file()]


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


class Config(RecBoleConfig):
    """RecBole's ``Config`` as the plugin's entry points build it (RecBole's own stays untouched).

    - model names resolve through :func:`get_model` (the plugin's models, then RecBole's);
    - the plugin's yaml files sit between RecBole's defaults and the user's config:
      ``properties/overall.yaml`` (the benchmark protocol, every model), ``properties/<Model>.yaml``
      (model defaults; a subclass's over its base's, :func:`property_files`) and
      ``properties/dataset/<dataset>.yaml`` (dataset presets);
    - without a ``data_path`` from the user, a dataset the plugin ships is read from its cache folder
      (:func:`~recbole_cllm4rec.datasets.shipped.shipped_folder`), as RecBole reads its ml-100k;
    - the command line is not read: entry points parse it and pass ``config_dict``;
    - the metrics and the folders a run writes are checked as the config is built
      (:mod:`recbole_cllm4rec.preflight`), not when RecBole first uses them, and the paths a
      checkpoint records are made absolute: they work from any folder;
    - data-parallel runs (``local_rank`` set) use NCCL on CUDA and gloo on CPU (RecBole hard-codes
      NCCL and CUDA), ``env://`` under torchrun, and only global rank 0 logs.
    """

    def _load_cmd_line(self) -> dict:
        return {}

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        return super()._get_model_and_dataset(get_model(model) if isinstance(model, str) else model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset) -> None:
        super()._load_internal_config_dict(model, model_class, dataset)
        dataset_file = PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"
        for file in (PROPERTIES_DIR / "overall.yaml", *property_files(model_class), dataset_file):
            if file.is_file():
                loaded = self._update_internal_config_dict(str(file)) or {}
                if file == dataset_file:
                    self.parameters["Dataset"] += [k for k in loaded if k not in self.parameters["Dataset"]]

    def _set_default_parameters(self) -> None:
        # imported here, not with the package: `python -m recbole_cllm4rec.datasets.split` runs it as __main__
        from recbole_cllm4rec.datasets.shipped import shipped_folder
        from recbole_cllm4rec.preflight import absolute_paths, check_label_threshold, check_settings

        absolute_paths(self.final_config_dict)
        check_settings(self.final_config_dict)
        super()._set_default_parameters()
        check_label_threshold(self.final_config_dict)
        if "data_path" not in self.external_config_dict:  # a data_path the user gives wins
            folder = shipped_folder(self.dataset, self.final_config_dict.get("llm_cache_dir"))
            if folder is not None:
                self.final_config_dict["data_path"] = str(folder)

    def _init_device(self) -> None:
        config = self.final_config_dict
        if "local_rank" not in config:
            return super()._init_device()
        import torch
        import torch.distributed as dist

        gpu_id = ",".join(map(str, config["gpu_id"])) if isinstance(config["gpu_id"], tuple) else str(config["gpu_id"])
        config["gpu_id"] = gpu_id
        use_cuda = bool(config["use_gpu"]) and bool(gpu_id) and torch.cuda.is_available()
        if use_cuda:
            if not under_torchrun():  # RecBole's launcher: gpu_id lists one GPU per process
                os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
            config["device"] = torch.device("cuda", config["local_rank"])
            torch.cuda.set_device(config["device"])
        else:
            config["device"] = torch.device("cpu")
        rank = config["local_rank"] + (config["offset"] or 0)
        if not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo",
                rank=rank,
                world_size=config["world_size"],
                init_method="env://" if under_torchrun() else f"tcp://{config['ip']}:{config['port']}",
            )
        config["single_spec"] = False
        if rank != 0:
            config["state"] = "error"
            config["show_progress"] = False
            config["verbose"] = False


def register() -> None:
    """What ``import recbole_cllm4rec`` does to RecBole: make the ``PaperRecall`` and ``PaperScore`` metrics known."""
    metrics.register()
