"""The quality research loop: CLLM4Rec on ml-100k, first 4 layers, finetuning only, a few epochs.

    python benchmarks/quick_loop.py readout=mean                  # one configuration (key=value, yaml)
    python benchmarks/quick_loop.py readout=mean --epochs=15 --dataset=amazon-beauty-paper \\
        --data_path=../shared/datasets

Prints validation Recall@20 after every finetuning epoch (the curve a change must beat) and the test
metrics of the best epoch, and appends one line to ``<work>/curves.tsv``. Finished runs are stored
under ``--work`` (``benchmarks/reproduce.py``'s cache) and not rerun. One thread per run by default,
so two runs share a 2-core machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import run_once  # noqa: E402

QUICK = {"llm_layers": 4, "content_warmup_epochs": 0, "pretrain_epochs": 0, "lambda_c": 0.0,
         "metrics": ["Recall", "NDCG"], "topk": [20, 40, 100], "valid_metric": "Recall@20",
         "show_progress": False, "stopping_step": 100}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="*", help="key=value (yaml) over the quick-loop configuration")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="results/quick")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.settings)}
    config = {**QUICK, "epochs": args.epochs, **settings}
    if args.data_path:
        config["data_path"] = args.data_path
    work = Path(args.work) / args.dataset
    result = run_once("CLLM4Rec", args.dataset, config, work)
    curve = [round(float(h.get("recall@20", float("nan"))), 4) for h in result["valid_history"]]
    test = result["test_result"]
    name = " ".join(args.settings) or "baseline"
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
