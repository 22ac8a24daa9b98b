"""Hyperparameter search for CLLM4Rec or any RecBole model, the RecBole way (``HyperTuning``).

    python run_hyper.py --model=CLLM4Rec --dataset=ml-100k --params_file=properties/hyper/CLLM4Rec.hyper \
        --algo=random --max_evals=10 --epochs=6
    python run_hyper.py --model=BPR --dataset=ml-100k --params_file=my.hyper      # exhaustive over choices

Every trial is one run through the plugin (its config, protocol and split); other ``--key=value``
flags are fixed settings for every trial. The params file has RecBole's format, one key per line:
``name choice [a,b]``, ``name uniform low,high``, ``name loguniform low,high`` (natural-log bounds),
``name quniform low,high,q`` (commas, no spaces: a file RecBole cannot parse is refused before any trial). ``--algo=exhaustive`` (choices only) tries every combination;
``random`` and ``bayes`` (TPE) draw ``--max_evals`` trials. Needs ``hyperopt==0.2.5`` (the
``[hyper]`` extra: 0.3.0 breaks RecBole's exhaustive search). Installed from a wheel:
``python -m recbole_cllm4rec.hyper`` takes the same flags.
"""
import recbole_cllm4rec  # noqa: F401  (shims + PaperRecall)
from recbole_cllm4rec.cli import command_line, hyper_main

if __name__ == "__main__":
    command_line(hyper_main)
