"""Validation metrics of one checkpoint scored with scoring prompts of several lengths.

    python benchmarks/scoring_lengths.py --checkpoint saved/CLLM4Rec-....pth --lengths=128,256,512

Scoring is forward-only, so a scoring prompt may show more of a long history than training did
(``scoring_max_seq_len``); this measures what that buys on validation, on the checkpoint's own
split and metrics. Prints one line per length.
"""
from __future__ import annotations

import argparse

from recbole_cllm4rec.quick_start import load_data_and_model
from recbole_cllm4rec.registry import get_trainer


def main(argv: list[str] | None = None) -> dict[int, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--lengths", default="128,256,512")
    args = parser.parse_args(argv)

    config, model, _, _, valid, _ = load_data_and_model(args.checkpoint)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    results = {}
    for length in [int(n) for n in args.lengths.split(",")]:
        model.documents.scoring_max_seq_len = length
        results[length] = dict(trainer.evaluate(valid, load_best_model=False))
        print(length, " ".join(f"{k} {v:.4f}" for k, v in results[length].items()), flush=True)
    return results


if __name__ == "__main__":
    main()
