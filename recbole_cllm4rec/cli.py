"""Command lines of ``run_recbole.py`` / ``python -m recbole_cllm4rec`` (RecBole's flags plus
``--model=A,B,C`` for a comparison) and of ``run_hyper.py`` / ``python -m recbole_cllm4rec.hyper``."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import yaml

# What a refused input raises: the checks' own errors and a bad file's (a YAML or encoding error).
REFUSALS = (ValueError, FileNotFoundError, RuntimeError, ImportError, UnicodeDecodeError, yaml.YAMLError)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """Split ``argv`` into the runner's own flags and RecBole config overrides.

    Overrides may be written ``--key=value`` (as RecBole) or ``--key value``; values stay strings
    and RecBole's ``Config`` converts them (``--topk=[10,20]`` becomes a list).
    """
    parser = argparse.ArgumentParser(description="Run CLLM4Rec and/or RecBole models with RecBole.")
    parser.add_argument("--model", "-m", default="CLLM4Rec", help="model name, or several separated by commas")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (atomic files under data_path)")
    parser.add_argument("--config_files", default=None, help="config files separated by spaces")
    parser.add_argument("--results_dir", default="results", help="where the comparison table is written")
    # RecBole's data-parallel launcher (torchrun works too: run_recbole.py reads its environment)
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine (GPUs, or CPU ranks on gloo)")
    parser.add_argument("--world_size", type=int, default=-1, help="processes over all machines")
    parser.add_argument("--ip", default="localhost", help="address of the machine with global rank 0")
    parser.add_argument("--port", default="5678", help="a free port on that machine")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank of this machine's first process")
    args, rest = parser.parse_known_args(argv)
    return args, parse_overrides(rest)


def parse_overrides(rest: list[str]) -> dict[str, str]:
    """``--key=value`` / ``--key value`` / ``--flag`` arguments as config overrides (strings)."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--") or arg == "--":
            raise SystemExit(f"unexpected argument {arg!r} (config overrides look like --key=value)")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            key, value = arg[2:], rest[i + 1]
            i += 1
        else:
            key, value = arg[2:], "True"
        overrides[key] = value
        i += 1
    return overrides


def main(argv: list[str] | None = None) -> None:
    """Train and test one model, or compare several on one split (``run_recbole.py``)."""
    from recbole_cllm4rec.quick_start import run

    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    run(
        models=[m.strip() for m in args.model.split(",") if m.strip()],
        dataset=args.dataset,
        config_file_list=args.config_files.strip().split(" ") if args.config_files else None,
        config_dict=overrides,
        results_dir=args.results_dir,
        nproc=args.nproc,
        world_size=args.world_size,
        ip=args.ip,
        port=args.port,
        group_offset=args.group_offset,
    )


def hyper_main(argv: list[str] | None = None) -> None:
    """Hyperparameter search (``run_hyper.py``); see its docstring."""
    from recbole_cllm4rec.hyper import run_hyper

    parser = argparse.ArgumentParser(description="Hyperparameter search for CLLM4Rec or any RecBole model (HyperTuning).")
    parser.add_argument("--model", "-m", default="CLLM4Rec")
    parser.add_argument("--dataset", "-d", default="ml-100k")
    parser.add_argument("--config_files", default=None, help="config files separated by spaces")
    parser.add_argument("--params_file", required=True, help="the search space (RecBole's .hyper format)")
    parser.add_argument("--algo", default="exhaustive", choices=["exhaustive", "random", "bayes"])
    parser.add_argument("--max_evals", type=int, default=100, help="trials of random / bayes")
    parser.add_argument("--output_file", default=None, help="every trial's metrics (default hyper-<model>-<dataset>.result)")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    run_hyper(
        args.model,
        args.dataset,
        args.params_file,
        config_file_list=args.config_files.strip().split(" ") if args.config_files else None,
        config_dict=parse_overrides(rest),
        algo=args.algo,
        max_evals=args.max_evals,
        output_file=args.output_file,
    )


def command_line(entry: Callable[[list[str]], object], argv: list[str] | None = None) -> None:
    """Run a command's ``entry(argv)``; a refusal ends in one line on stderr and exit status 1, Ctrl-C
    in one line naming the resume point and exit status 130.

    ``--debug`` (or ``RECBOLE_CLLM4REC_DEBUG=1``) shows the traceback instead. The Python API
    (``run_model``, ``main``) raises as usual; only the command lines print one line.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # also for what reads it deeper down (a failed trial of a search)
        os.environ["RECBOLE_CLLM4REC_DEBUG"] = "1"
    debug = os.environ.get("RECBOLE_CLLM4REC_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    name = os.path.basename(sys.argv[0])
    try:
        entry(argv)
    except REFUSALS as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise SystemExit(f"{name}: error: {message} (--debug shows the traceback)") from None
    except KeyboardInterrupt as exc:
        if debug:
            raise
        print(f"{name}: {interrupted(exc)}", file=sys.stderr)
        raise SystemExit(130) from None  # the shell's status for SIGINT


def interrupted(exc: KeyboardInterrupt) -> str:
    """The line for Ctrl-C: the resume point ``run_model`` names (a ``.pth`` file), if it was written,
    or what the interrupted command says it kept (a search: its finished trials)."""
    said = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    if said.endswith(".pth"):
        if os.path.isfile(said):
            return f"interrupted; resume with --resume={said}"
        return "interrupted before the run's first resume point was written: start it again"
    return f"interrupted; {said}" if said else "interrupted"
