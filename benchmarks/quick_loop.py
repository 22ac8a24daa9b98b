"""The quality research loop: CLLM4Rec on ml-100k, first 4 layers, finetuning only, a few epochs.

    python benchmarks/quick_loop.py readout=mean                  # one configuration (key=value, yaml)
    python benchmarks/quick_loop.py readout=mean --epochs=15 --dataset=amazon-beauty-paper \\
        --data_path=../shared/datasets
    python benchmarks/quick_loop.py --model=CLLM4RecWordsStart          # a registered subclass

Prints validation Recall@20 after every finetuning epoch (the curve a change must beat) and the test
metrics of the best epoch, and appends one line to ``<work>/curves.tsv``. Finished runs are stored
under ``--work`` (``benchmarks/reproduce.py``'s cache) and not rerun. One thread per run by default,
so two runs share a 2-core machine.
"""
from __future__ import annotations

from pathlib import Path

import torch
from common import config_dict, parser, run_once

QUICK = {"llm_layers": 4, "content_warmup_epochs": 0, "pretrain_epochs": 0, "lambda_c": 0.0,
         "metrics": ["Recall", "NDCG"], "topk": [20, 40, 100], "valid_metric": "Recall@20",
         "show_progress": False, "stopping_step": 100}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    command = parser(__doc__, over="the quick-loop configuration")
    command.add_argument("--model", default="CLLM4Rec", help="CLLM4Rec or a registered subclass (CLLM4RecWordsStart)")
    command.add_argument("--epochs", type=int, default=6)
    command.add_argument("--threads", type=int, default=1)
    command.add_argument("--work", default="results/quick")
    args = command.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work) / args.dataset
    result = run_once(args.model, args.model, args.dataset, config_dict(args, **QUICK, epochs=args.epochs), work)
    curve = [round(float(h.get("recall@20", float("nan"))), 4) for h in result["valid_history"]]
    test = result["test_result"]
    name = " ".join(([f"--model={args.model}"] if args.model != "CLLM4Rec" else []) + args.settings) or "baseline"
    line = "\t".join([name, str(args.epochs), " ".join(map(str, curve))]
                     + [str(round(test.get(m, float("nan")), 4)) for m in ("recall@20", "recall@40", "ndcg@100")]
                     + [f"{result['train_time']:.0f}"])  # fmt: skip
    print(f"{name}: valid R@20 per epoch {curve}; test R@20 / R@40 / N@100 "
          f"{test.get('recall@20'):.4f} / {test.get('recall@40'):.4f} / {test.get('ndcg@100'):.4f}; "
          f"train {result['train_time']:.0f} s")  # fmt: skip
    with open(work / "curves.tsv", "a") as f:
        f.write(line + "\n")
    return result


if __name__ == "__main__":
    main()
