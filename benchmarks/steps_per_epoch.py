"""Optimizer steps per epoch of each stage for a configuration (no training): what a batching choice costs.

    python benchmarks/steps_per_epoch.py --dataset=amazon-beauty-paper --data_path=../shared/datasets \\
        --config_files=properties/presets/CLLM4Rec-paper.yaml

The public code takes 20 documents per step in every stage: 528 / 305 / 528 steps on the paper's
Beauty split (10,553 users, 6,086 item texts). Prints one Markdown row per stage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import recbole_cllm4rec  # noqa: E402,F401


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--config_files", default=None, help="config files separated by spaces")
    parser.add_argument("--llm", default=None, help="another backbone (the counts do not depend on its depth)")
    args = parser.parse_args(argv)
    import torch
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_cllm4rec.registry import Config, get_model, get_trainer

    settings = {"llm_layers": 1, "state": "ERROR", "show_progress": False}
    settings.update({k: v for k, v in (("data_path", args.data_path), ("llm", args.llm)) if v})
    files = args.config_files.split() if args.config_files else None
    config = Config(model="CLLM4Rec", dataset=args.dataset, config_file_list=files, config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("CLLM4Rec")(config, train.dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "CLLM4Rec")(config, model)
    steps = {}
    print("| stage | documents | steps per epoch |\n|---|---|---|")
    for stage in ("collaborative", "content", "recommendation"):
        torch.manual_seed(0)
        batches, _ = trainer.pass_batches(stage)
        steps[stage] = len(batches)
        print(f"| {stage} | {sum(len(b) for b in batches)} | {len(batches)} |")
    return steps


if __name__ == "__main__":
    main()
