"""``python -m recbole_cllm4rec``: ``run_recbole.py`` for an installed package (same flags)."""
import recbole_cllm4rec  # noqa: F401  (shims + the paper metrics)
from recbole_cllm4rec.cli import command_line, main

command_line(main)
