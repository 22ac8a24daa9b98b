"""Hyperparameter search through the plugin's runs (``run_hyper.py``; ``python -m recbole_cllm4rec.hyper``
for an installed package, same flags): RecBole's ``HyperTuning`` (hyperopt) over :func:`run_model`.

The search space is checked before the first trial: its lines against RecBole's format (RecBole
would stop on them mid-search or read them wrongly) and its keys and values against the same config
rules as a run (a value a run refuses would stop the search at that trial). A trial that fails
later (a NaN loss, memory) is recorded as failed and the search goes on; the result file holds every
finished and failed trial, also after Ctrl-C, and is written whole or not at all.
"""
from __future__ import annotations

import ast
import math
import os
import sys
from pathlib import Path

from recbole.trainer import HyperTuning
from recbole.utils.utils import dict2str

import recbole_cllm4rec  # noqa: F401  (shims + the paper metrics)
from recbole_cllm4rec.checkpoint import replaced_whole
from recbole_cllm4rec.cli import command_line, hyper_main
from recbole_cllm4rec.preflight import unwritable
from recbole_cllm4rec.registry import PROPERTIES_DIR, check_model_name, get_model, get_trainer
from recbole_cllm4rec.config_rules import (
    COMMON_RULES,
    RENAMED_KEYS,
    Rule,
    check_retired_options,
    keys_read_by,
    unread_key_problem,
)

HYPER_FORMS = {
    "choice": "name choice [a,b,...]",
    "uniform": "name uniform low,high",
    "loguniform": "name loguniform low,high (natural-log bounds)",
    "quniform": "name quniform low,high,q",
}


def config_rules(model: str) -> dict[str, Rule]:
    """The rules a run of ``model`` checks its config with (``quick_start.run_model``)."""
    model_class = get_model(model)
    trainer = get_trainer(model_class.type, model)
    return {**COMMON_RULES, **getattr(model_class, "CONFIG_RULES", {}), **getattr(trainer, "CONFIG_RULES", {})}


def check_hyper_file(path: str | Path, model: str = "CLLM4Rec") -> None:
    """Refuse a ``.hyper`` search space that would stop the search mid-way or search nothing, in one
    line: file, line, and the form expected or the value refused.

    RecBole splits a line at spaces and glues every field after the type together, so
    ``loguniform -9.2 -7.6`` becomes ``-9.2-7.6`` and fails only when the tuner starts; a line of one
    or two fields is skipped without a word. A key nothing reads would make every trial the same run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params_file {path} does not exist")
    rules = config_rules(model)
    model_class = get_model(model)
    read = keys_read_by(model_class, get_trainer(model_class.type, model), PROPERTIES_DIR)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.strip().split(" ")
        if not line.strip():
            continue
        kind = fields[1] if len(fields) > 1 else ""
        form = HYPER_FORMS.get(kind)
        values = hyper_values(kind, "".join(fields[2:])) if form and len(fields) > 2 else None
        where = f"{path}:{number}"
        if values is None:
            expected = form or "one of: " + "; ".join(HYPER_FORMS.values())
            raise ValueError(f"{where}: {line.strip()!r} is not a RecBole search-space line: expected {expected}")
        for value in values:
            check_retired_options({fields[0]: value}, where)
        problem = hyper_key_problem(fields[0], kind, values, rules.get(fields[0]), read, model)
        if problem:
            raise ValueError(f"{where}: {problem}")


def hyper_values(kind: str, values: str) -> list | None:
    """The values a ``.hyper`` line can draw (a choice's values; the lowest and highest of a range,
    as the config sees them), or ``None`` if its glued values are not what ``kind`` needs."""
    if kind == "choice":
        try:
            parsed = ast.literal_eval(values)
        except (ValueError, SyntaxError):
            return None
        return list(parsed) if isinstance(parsed, (list, tuple)) and parsed else None
    try:
        numbers = [float(p) for p in values.split(",")]
    except ValueError:
        return None
    if len(numbers) != (3 if kind == "quniform" else 2) or numbers[0] >= numbers[1]:
        return None
    if kind == "loguniform":
        return [math.exp(numbers[0]), math.exp(numbers[1])]
    if kind == "quniform":  # hyperopt draws round(x / q) * q
        return [round(bound / numbers[2]) * numbers[2] for bound in numbers[:2]]
    return numbers[:2]


def hyper_key_problem(key: str, kind: str, values: list, rule: Rule | None, read: frozenset[str], model: str) -> str | None:
    """Why a search-space line's key or one of its values would stop or void the search, or ``None``
    (``read``: the keys a run of ``model`` reads; a search over any other runs identical trials)."""
    if key in RENAMED_KEYS:
        return f"config key {key!r} was renamed: use {RENAMED_KEYS[key]}"
    unread = unread_key_problem(key, read, model, PROPERTIES_DIR)
    if unread:
        return unread + ("" if unread.endswith("nothing reads it") else ": every trial would be the same run")
    if rule is not None and rule.kind is int and kind != "choice":
        return f"config key {key} takes integers and {kind} draws floats: use {key} choice [...]"
    for value in values:
        problem = rule.problem(value) if rule is not None else None
        if problem:
            return f"config key {key}={value!r} {problem}: every trial that draws it would stop"
    return None


def objective_function(model: str, dataset: str, config_dict: dict | None = None):
    """RecBole's ``HyperTuning`` objective for ``model`` on ``dataset`` through :func:`run_model`
    (the plugin's config and protocol); each trial's parameters override ``config_dict``."""
    from recbole_cllm4rec.quick_start import run_model

    def objective(trial_dict=None, config_file_list=None, saved=True) -> dict:
        result = run_model(model, dataset, config_file_list, {**(config_dict or {}), **(trial_dict or {})}, saved)
        return {
            "model": model,
            "best_valid_score": result["best_valid_score"],
            "valid_score_bigger": result["valid_score_bigger"],
            "best_valid_result": result["best_valid_result"],
            "test_result": result["test_result"],
        }

    return objective


class Search(HyperTuning):
    """RecBole's ``HyperTuning`` that goes on past a failed trial (recorded with its error; ``--debug``
    stops on it with the traceback) and writes its result file whole."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failures: list[str] = []

    def trial(self, params):
        try:
            return super().trial(params)
        except Exception as exc:  # a failed trial is one of the search's results
            from hyperopt import STATUS_FAIL

            if os.environ.get("RECBOLE_CLLM4REC_DEBUG") == "1":
                raise
            params_str = self.params2str(params)
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            self.params2result[params_str] = {"error": error}
            self.failures.append(f"{params_str}: {error}")
            print(f"trial failed ({params_str}): {error}", file=sys.stderr)
            # a finite loss: hyperopt's no-progress stop computes best - |best * 0|, NaN for inf
            return {"status": STATUS_FAIL, "loss": sys.float_info.max}

    def export_result(self, output_file=None) -> None:
        """Every trial's valid and test metrics, or its error, to a temporary file renamed into place."""
        with replaced_whole(output_file) as tmp, open(tmp, "w") as f:
            for params, result in self.params2result.items():
                if "error" in result:
                    f.write(f"{params}\nFailed: {result['error']}\n\n")
                    continue
                f.write(f"{params}\nValid result:\n{dict2str(result['best_valid_result'])}\n")
                f.write(f"Test result:\n{dict2str(result['test_result'])}\n\n")


def run_hyper(model: str, dataset: str, params_file: str, config_file_list=None, config_dict=None,
              algo: str = "exhaustive", max_evals: int = 100, output_file: str | None = None) -> dict:  # fmt: skip
    """Search ``params_file``'s space (RecBole's format) with RecBole's ``HyperTuning`` (hyperopt);
    writes every trial's valid and test metrics (or its error) to ``output_file``; returns the best
    parameters, their validation score and test metrics."""
    check_model_name(model)
    check_hyper_file(params_file, model)
    output_file = output_file or f"hyper-{model}-{dataset}.result"
    problem = unwritable(Path(output_file).resolve().parent)
    if problem:
        raise ValueError(f"--output_file {output_file} cannot be written ({problem}): give a file in a folder you can write")
    from hyperopt.exceptions import AllTrialsFailed  # after the refusals: hyperopt warns as it is imported
    tuner = Search(
        objective_function(model, dataset, config_dict), params_file=params_file,
        fixed_config_file_list=config_file_list, algo=algo, max_evals=max_evals,
    )  # fmt: skip
    try:
        tuner.run()
    except AllTrialsFailed:  # said below, with the file that holds each trial's error
        pass
    except KeyboardInterrupt as exc:
        raise KeyboardInterrupt(f"the {len(tuner.params2result)} finished trial(s) are in {output_file}") from exc
    finally:  # also after Ctrl-C: the finished trials are kept
        tuner.export_result(output_file=output_file)
    if tuner.best_params is None:
        raise RuntimeError(f"every trial failed (the first: {tuner.failures[0]}); each one's error is in {output_file}")
    best = tuner.params2result[tuner.params2str(tuner.best_params)]
    print(f"best params: {tuner.best_params}\nbest valid: {best['best_valid_result']}\ntest: {best['test_result']}")
    print(f"every trial: {output_file}" + (f" ({len(tuner.failures)} failed)" if tuner.failures else ""))
    return {"params": tuner.best_params, "best_valid_score": tuner.best_score, "test_result": best["test_result"]}


if __name__ == "__main__":
    command_line(hyper_main)
