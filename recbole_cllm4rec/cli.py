"""Command line of ``run_recbole.py``: RecBole's flags plus ``--model=A,B,C`` for a comparison."""
from __future__ import annotations

import argparse


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
    overrides: dict[str, str] = {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--") or arg == "--":
            raise SystemExit(f"run_recbole.py: unexpected argument {arg!r} (config overrides look like --key=value)")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            key, value = arg[2:], rest[i + 1]
            i += 1
        else:
            key, value = arg[2:], "True"
        overrides[key] = value
        i += 1
    return args, overrides
