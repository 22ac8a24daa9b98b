"""What CLLM4Rec scores items without training interactions with (``cold_item_rows``), chosen on
validation from one trained checkpoint: the choice changes scoring only, not training, so each
user's prompt goes through the LM once and every configuration costs a matrix product.

    python benchmarks/cold_items.py --checkpoint saved/CLLM4Rec-<time>.pth
    python benchmarks/cold_items.py --checkpoint saved/...pth --ridges 0.1,1,10 --bias-shifts 0,1,2 --pseudo-interactions 0,4 --test

Each (``cold_item_rows``, ``text_map_ridge``, ``text_map_bias_shift``, ``text_map_pseudo_interactions``) is scored on validation by the
run's ``valid_metric`` (Recall@20) over all targets (RecBole's full ranking), over cold targets in the
full ranking and in the cold-only ranking (``recbole_cllm4rec.cold_items``). ``--test`` reads test
once, for the configuration with the best validation score over all targets. Prints a markdown table.
"""
from __future__ import annotations

import argparse

import torch
from common import machine

from recbole.trainer import Trainer

from recbole_cllm4rec.cold_items import VIEWS, cold_item_results
from recbole_cllm4rec.comparison import markdown_table
from recbole_cllm4rec.quick_start import load_data_and_model


class OncePerUser(torch.nn.Module):
    """A CLLM4Rec checkpoint's scorer with every user's head input computed once: the cold-item
    settings change the item head's rows, never the users' side."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.USER_ID, self.device = model, model.USER_ID, model.device
        users = torch.arange(1, model.n_users, device=model.device)  # 0 is RecBole's padding user
        head_inputs = None
        with torch.no_grad():
            for chunk, head_input in model.scoring_batches(users):
                if head_inputs is None:
                    head_inputs = head_input.new_zeros(model.n_users, head_input.shape[1])
                head_inputs[users[chunk]] = head_input
        self.head_inputs = head_inputs

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self.model.item_logits(self.head_inputs[interaction[self.USER_ID]])


def columns(config) -> list[str]:
    """What each configuration is scored by: the run's ``valid_metric`` over all targets, then in each cold view."""
    metric = config["valid_metric"].lower()
    return [metric] + [f"{view} {metric}" for view in VIEWS]


def score(trainer, model, config, train, part: str, data) -> list[float]:
    """``columns`` of one part (``valid`` or ``test``)."""
    overall, *views = columns(config)
    results = cold_item_results(model, {part: data}, train.dataset, config)
    return [trainer.evaluate(data, load_best_model=False)[overall]] + [results.get(f"{part} {v}") for v in views]


def choose(model, mode: str, ridge: float | None, shift: float | None, pseudo: float | None) -> None:
    """Set the model's ``cold_item_rows`` and, for ``text_map``, its ridge, bias shift and pseudo-interactions."""
    model.cold_item_rows = mode
    if mode == "text_map":
        model.text_map_ridge, model.text_map_bias_shift, model.text_map_pseudo_interactions = ridge, shift, pseudo


def main(argv: list[str] | None = None) -> list[list]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--ridges", default="0.1,1,10", help="text_map_ridge values tried with text_map")
    parser.add_argument("--bias-shifts", default="0", help="text_map_bias_shift values tried with each ridge")
    parser.add_argument("--pseudo-interactions", default="0", help="text_map_pseudo_interactions values tried with each")
    parser.add_argument("--test", action="store_true", help="read test once, for the best validation row")
    args = parser.parse_args(argv)
    config, model, _, train, valid, test = load_data_and_model(args.checkpoint)
    model.eval()
    scorer = OncePerUser(model)
    trainer = Trainer(config, scorer)  # RecBole's own full-ranking evaluation; no run files of its own
    grid = [args.ridges.split(","), args.bias_shifts.split(","), args.pseudo_interactions.split(",")]
    maps = [("text_map", float(r), float(b), float(k)) for r in grid[0] for b in grid[1] for k in grid[2]]
    rows = []
    for setting in [("trained", None, None, None), ("content", None, None, None)] + maps:
        choose(model, *setting)
        rows.append([*setting] + score(trainer, scorer, config, train, "valid", valid))
        print(rows[-1], flush=True)
    header = ["cold_item_rows", "text_map_ridge", "text_map_bias_shift", "text_map_pseudo_interactions"]
    header += [f"valid {c}" for c in columns(config)]
    if args.test:
        best = max(rows, key=lambda row: row[4])
        choose(model, *best[:4])
        best += score(trainer, scorer, config, train, "test", test)
        header += [f"test {c}" for c in columns(config)]
    print(f"\n{config['dataset']}, {args.checkpoint}; {machine()}\n\n{markdown_table(header, rows)}")
    return rows


if __name__ == "__main__":
    main()
