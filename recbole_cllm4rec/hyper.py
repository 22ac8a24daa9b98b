"""``python -m recbole_cllm4rec.hyper``: ``run_hyper.py`` for an installed package (same flags)."""
import recbole_cllm4rec  # noqa: F401  (shims + the paper metrics)
from recbole_cllm4rec.cli import command_line, hyper_main

if __name__ == "__main__":
    command_line(hyper_main)
