"""Config rules: what each key accepts, refused early with one line naming the key and what it must be.

A value of the wrong type or range is refused (``Rule``); a renamed key or a retired research option
is refused with what to use instead; a key the running model does not read is a warning naming the
models that do, or the closest known key (a typo would otherwise be ignored); a config file that is missing or not
YAML, and a ``.hyper`` search space RecBole would misread, are refused before any work.
"""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Rule:
    """What a config key accepts: a type (``int``, ``float``, ``bool``, ``str``), a range or choices,
    and whether ``None`` (yaml ``~``) is allowed."""

    kind: type
    low: float | None = None
    high: float | None = None  # inclusive
    below: float | None = None  # exclusive upper bound
    choices: tuple[str, ...] = ()
    optional: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused, or ``None`` if it is fine."""
        if value is None:
            return None if self.optional else "must be set"
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be True or False"
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            return "must be an integer"
        if self.kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return "must be a number"
        if self.kind is str and not isinstance(value, str):
            return "must be a string"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if self.low is not None and value < self.low:
            return f"must be at least {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be at most {self.high:g}"
        if self.below is not None and value >= self.below:
            return f"must be below {self.below:g}"
        return None


# Keys every model run through the plugin uses (RecBole's training loop).
COMMON_RULES = {
    "epochs": Rule(int, low=0),
    "stopping_step": Rule(int, low=1),
    "learning_rate": Rule(float, low=0, optional=True),
    "train_batch_size": Rule(int, low=1),
    "eval_batch_size": Rule(int, low=1),
    "seed": Rule(int),
}

# Keys RecBole sets or reads at run time that none of its yaml files list.
RUNTIME_KEYS = frozenset(
    "model dataset device local_rank world_size nproc offset ip port resume single_spec verbose "
    "MODEL_TYPE MODEL_INPUT_TYPE eval_type train_neg_sample_args valid_neg_sample_args "
    "test_neg_sample_args config_files use_filter".split()
)


def check_config_values(config, rules: dict[str, Rule]) -> None:
    """Refuse the first key whose value breaks its rule (one line: key, value, what it must be)."""
    for key, rule in rules.items():
        value = config[key]
        problem = rule.problem(value)
        if problem:
            raise ValueError(f"config key {key}={value!r} {problem}")


@functools.lru_cache(maxsize=None)
def file_keys(file: Path) -> frozenset[str]:
    """The top-level keys of a yaml file of defaults."""
    loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    return frozenset(loaded) if isinstance(loaded, dict) else frozenset()


def yaml_keys(files) -> set[str]:
    return set().union(*(file_keys(Path(file)) for file in files))


@functools.lru_cache(maxsize=None)
def model_yaml_files(properties_dir: str) -> dict[str, Path]:
    """Model name -> its yaml of defaults: RecBole's ``properties/model/*.yaml`` and the plugin's
    ``properties/<Model>.yaml``."""
    import recbole

    files = sorted((Path(recbole.__file__).parent / "properties" / "model").glob("*.yaml"))
    files += [file for file in sorted(Path(properties_dir).glob("*.yaml")) if file.name != "overall.yaml"]
    return {file.stem: file for file in files}


@functools.lru_cache(maxsize=None)
def run_keys(properties_dir: str) -> frozenset[str]:
    """Keys every run reads, whichever its model: RecBole's and the plugin's overall, dataset and
    quick-start yaml files, plus the runtime keys (presets are configs of one model, not counted)."""
    import recbole

    files = [f for f in (Path(recbole.__file__).parent / "properties").rglob("*.yaml") if f.parent.name != "model"]
    files += [f for f in Path(properties_dir).rglob("*.yaml") if f.parent.name in ("dataset",) or f.name == "overall.yaml"]
    return frozenset(yaml_keys(files) | RUNTIME_KEYS)


@functools.lru_cache(maxsize=None)
def known_keys(properties_dir: str) -> frozenset[str]:
    """Every key some run reads: the run's keys and every model's (RecBole's and the plugin's)."""
    return run_keys(properties_dir) | yaml_keys(model_yaml_files(properties_dir).values())


def keys_read_by(model_class: type, trainer_class: type, properties_dir: str | Path) -> frozenset[str]:
    """The keys a run of ``model_class`` reads: the run's, its yaml files' (its bases' too, RecBole's
    and the plugin's), its and its trainer's ``CONFIG_RULES``, and its ``EARLIER_KEYS``."""
    files = model_yaml_files(str(properties_dir))
    keys = yaml_keys(files[base.__name__] for base in model_class.__mro__ if base.__name__ in files)
    keys |= {*getattr(model_class, "CONFIG_RULES", {}), *getattr(trainer_class, "CONFIG_RULES", {})}
    return run_keys(str(properties_dir)) | keys | set(getattr(model_class, "EARLIER_KEYS", {}))


def unread_key_problem(key: str, read: frozenset[str], model: str, properties_dir: str | Path) -> str | None:
    """Why ``key`` changes nothing in a run of ``model`` (``read``: :func:`keys_read_by`), or ``None``: it
    is another model's key, or no model's (with the closest known key: a typo)."""
    if key in read:
        return None
    owners = [name for name, file in model_yaml_files(str(properties_dir)).items() if key in file_keys(file)]
    if owners:
        named = ", ".join(owners[:3]) + (f", ... {len(owners)} in all" if len(owners) > 3 else "")
        return f"config key {key!r} is a key of other models ({named}), {model} does not read it"
    known = known_keys(str(properties_dir)) | read
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown config key {key!r}{f' (did you mean {close[0]!r}?)' if close else ''}: nothing reads it"


# keys renamed after they were published: the old name is refused with the new one, never ignored
RENAMED_KEYS = {"lora_learning_rate": "backbone_learning_rate (it covers every trainable backbone part)"}


# Research options that were tried, not promoted and removed (docs/results.md has their rows): key ->
# the value that behaves as the code does now (ANY: the key only mattered beside another retired value).
ANY = object()
RETIRED_OPTIONS = {
    "llm_norm_tuning": False,
    "deep_prompt_tokens": 0,
    "readout_skip_exponent": 1.0,
    "item_head": "tied",
    "init_ridge": ANY,
    "readout_queries": ANY,
    "head_calibration_users": ANY,
}
RETIRED_CHOICES = {"item_init": ("text", "ridge"), "readout": ("attention", "queries")}
RETIRED_AT = "ef9cea6"  # the last commit that has them


def check_retired_options(values, where: str = "config") -> None:
    """Refuse a retired research option set to anything but today's behaviour, naming the commit that
    still runs it (``values``: a config or its dict; ``where``: whose values they are)."""
    retired = [k for k, neutral in RETIRED_OPTIONS.items() if neutral is not ANY and k in values and values[k] != neutral]
    retired += [k for k, old in RETIRED_CHOICES.items() if k in values and values[k] in old]
    if not retired:
        return
    key, value = retired[0], values[retired[0]]
    raise ValueError(
        f"{where}: {key}={value!r} is a research option that was removed after it lost on validation "
        f"(docs/results.md); commit {RETIRED_AT} still runs it (git checkout {RETIRED_AT})"
    )


def check_config_files(paths) -> None:
    """Refuse a config file that is missing or is not YAML, naming it (RecBole parses its text, so its
    own error names neither the file nor, for a missing one, what was meant)."""
    for path in paths or ():
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            yaml.load(Path(path).read_text(encoding="utf-8"), Loader=yaml.FullLoader)  # RecBole's loader's base
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or exc
            raise ValueError(f"config file {path}{where}: not valid YAML ({problem})") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"config file {path}: not UTF-8 text (byte {exc.start})") from None


def given_keys(config) -> set[str]:
    """The keys the user gave: config files, ``config_dict``, command line."""
    return {*config.file_config_dict, *config.variable_config_dict, *config.cmd_config_dict}


def check_renamed_keys(config) -> None:
    """Refuse a key that was renamed, naming its new name (a warning would let a run train without it)."""
    old = sorted(key for key in given_keys(config) if key in RENAMED_KEYS)
    if old:
        raise ValueError("; ".join(f"config key {key!r} was renamed: use {RENAMED_KEYS[key]}" for key in old))


def unread_key_warnings(config, read: frozenset[str], properties_dir: str | Path) -> list[str]:
    """One warning per key the user gave (files, ``config_dict``, command line) that the run's model
    does not read (``read``: :func:`keys_read_by`)."""
    problems = [unread_key_problem(key, read, config["model"], properties_dir) for key in sorted(given_keys(config))]
    return [f"{problem}, it is ignored" for problem in problems if problem]
