"""Optimizer steps per epoch of each stage for a configuration (no training): what a batching choice costs.

    python benchmarks/steps_per_epoch.py --dataset=amazon-beauty-paper --data_path=../shared/datasets \\
        --config_files=properties/presets/CLLM4Rec-paper.yaml

The public code takes 20 documents per step in every stage: 528 / 305 / 528 steps on the paper's
Beauty split (10,553 users, 6,086 item texts). Prints one Markdown row per stage.
"""
from __future__ import annotations

import torch
from common import model_and_trainer, parser, split


def main(argv: list[str] | None = None) -> dict[str, int]:
    command = parser(__doc__)
    command.add_argument("--config_files", default=None, help="config files separated by spaces")
    command.add_argument("--llm", default=None, help="another backbone (the counts do not depend on its depth)")
    args = command.parse_args(argv)
    settings = {"llm_layers": 1, "state": "ERROR", "show_progress": False}
    settings.update({k: v for k, v in (("data_path", args.data_path), ("llm", args.llm)) if v})
    files = args.config_files.split() if args.config_files else None
    config, train, _, _ = split(args.dataset, settings, config_files=files)
    _, trainer = model_and_trainer(config, train)
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
