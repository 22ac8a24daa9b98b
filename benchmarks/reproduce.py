"""CLLM4Rec against RecBole's baselines on one split, with the paper's metrics. Resumable; prints a table.

    python benchmarks/reproduce.py --dataset=amazon-beauty-paper --data_path=../shared/datasets
    python benchmarks/reproduce.py --dataset=ml-100k --models=CLLM4Rec,CLLM4Rec-paper@ablation,EASE

Every model runs through RecBole on the identical split (the dataset preset in
``properties/dataset/``), full ranking with RecBole's masking (training items for validation,
training and validation items for test), Recall / NDCG at 20, 40, 100 and the paper's recall
(``PaperRecall``: hits / min(K, #held-out)). Baselines get RecBole's defaults plus a small sweep of
their key hyperparameter; the configuration with the best validation Recall@20 gives the test row.
CLLM4Rec's schedule is the ``--recipe`` (``main``: the yaml's, sized for a 2-core CPU; ``gpu``: the
paper's; ``long``: the paper's cut to a 2-core CPU; ``cpu``: longer finetuning; ``ablation``;
``tiny``: seconds, for tests), or per row
``MODEL@RECIPE``; its configuration is a ``VARIANTS`` name (``CLLM4Rec`` = the yaml defaults,
``CLLM4Rec-paper``, ablations: settings, or a registered subclass such as ``CLLM4RecWordsStart``). ``--keep`` copies rows of the earlier table. CUDA is used when present.

Each finished (model, configuration) is stored under ``--work`` as JSON and skipped when the script
is rerun; CLLM4Rec resumes from its last completed epoch. The table goes to stdout and, with
``--out``, to ``<out>/<dataset>.md``, ``<out>/<dataset>.csv`` (one row per model, RecBole's
lower-case metric names, test values) and ``<out>/<dataset>.png`` (the test metrics per model and
CLLM4Rec's validation curve; needs matplotlib: ``pip install -e .[bench]``).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch
import yaml
from common import machine, run_once, settings

from recbole_cllm4rec.comparison import markdown_table
from recbole_cllm4rec.registry import PROPERTIES_DIR

BASELINES = ["Pop", "ItemKNN", "BPR", "MultiVAE", "MultiDAE", "RecVAE", "LightGCN", "EASE", "EASEText", "TextKNN"]
SWEEPS: dict[str, list[dict]] = {
    "EASE": [{"reg_weight": w} for w in (25.0, 100.0, 250.0, 500.0, 1000.0)],
    # user text (ml-100k's age, gender, occupation as extra columns) lowered validation: not swept
    "EASEText": [{"reg_weight": w, "text_weight": a} for w in (100.0, 250.0, 500.0) for a in (0.25, 0.5, 1.0, 2.0, 4.0)],
    "MultiVAE": [{"learning_rate": lr, "anneal_cap": cap} for lr in (1e-3, 1e-4) for cap in (0.2, 0.5)],
    "LightGCN": [{"n_layers": n} for n in (1, 2, 3)],
}
# RecBole's default is 300 epochs with early stopping; RecVAE and LightGCN still improve by a hair
# per epoch long after they have converged, so they are capped to fit a CPU session
CAPS: dict[str, dict] = {"RecVAE": {"epochs": 50}, "LightGCN": {"epochs": 100}}
# The paper's configuration (properties/presets/CLLM4Rec-paper.yaml): its schedule keys are the
# `gpu` recipe, the rest is the CLLM4Rec-paper variant.
PAPER_PRESET = yaml.safe_load((PROPERTIES_DIR / "presets" / "CLLM4Rec-paper.yaml").read_text())
SCHEDULE = ("content_warmup_epochs", "pretrain_epochs", "pretrain_learning_rate", "epochs", "learning_rate",
            "finetune_content", "stopping_step")
RECIPES: dict[str, dict] = {
    # the paper's schedule (public code: 10 content-only + 100 alternating pretraining epochs, 150
    # finetuning epochs at 1e-4), early-stopped on validation
    "gpu": {k: PAPER_PRESET[k] for k in SCHEDULE},
    # the paper's schedule cut to a 2-core CPU (issue: the paper configuration's curve): 10 content-only
    # + 20 alternating pretraining epochs, then finetuning until validation has not improved for 20
    # epochs (at most 150); with the CLLM4Rec-paper-4-layers row
    "long": {**{k: PAPER_PRESET[k] for k in SCHEDULE}, "pretrain_epochs": 20, "stopping_step": 20},
    # properties/CLLM4Rec.yaml's own schedule: the README main command (1 pretraining epoch, up to
    # 15 finetuning epochs, early-stopped)
    "main": {},
    # a longer finetuning budget on a CPU (up to 40 epochs)
    "cpu": {"epochs": 40},
    # ablations of the defaults: 1 pretraining + 6 finetuning epochs, no early stopping
    "ablation": {"epochs": 6, "stopping_step": 100},
    # seconds: the script's own test
    "tiny": {"llm": "tiny-random", "content_warmup_epochs": 1, "pretrain_epochs": 1, "epochs": 1,
             "train_batch_tokens": 256},
}  # fmt: skip
# CLLM4Rec configurations, layered on the recipe: the rows of the published tables
# (docs/results.md says what each showed). "CLLM4Rec" is exactly `--model=CLLM4Rec` (the yaml
# defaults, the recommended configuration); "CLLM4Rec-paper" is the paper's model as its public code
# trains it (the preset's model keys); the others are named ablations of the defaults. "model" names
# the registered model of a row that is a subclass (recbole_cllm4rec/model/ablations.py).
PAPER = {k: v for k, v in PAPER_PRESET.items() if k not in SCHEDULE}
VARIANTS: dict[str, dict] = {
    "CLLM4Rec": {},
    "CLLM4Rec-paper": PAPER,
    # the same on the first 4 layers for the collaborative side (a 2-core CPU's deviation; the
    # content LM reads all 30)
    "CLLM4Rec-paper-4-layers": {**PAPER, "llm_layers": 4, "content_layers": None},
    "CLLM4Rec-no-reg": {"lambda_c": 0.0},
    # what the text and the language model bring (issue rows): no content documents; the layers'
    # states out of the item head (the ID path alone, same training); random backbone weights
    "CLLM4Rec-no-text": {"item_text_template": None, "user_text_template": None},
    "CLLM4Rec-no-LM": {"readout_state_weight": 0.0},
    "CLLM4Rec-random-LM": {"llm_pretrained": False},
    # the paper's path alone out: no content LM, no pretraining (the text start kept; finetuning's
    # anchor then pulls toward the start)
    "CLLM4Rec-no-content-LM": {"content_warmup_epochs": 0, "pretrain_epochs": 0},
    "CLLM4Rec-masked-target": {"visible_target_weight": 0.0},
    "CLLM4Rec-dropout": {"llm_dropout": 0.1},
    "CLLM4Rec-mask-0.5": {"mask_ratio": 0.5},
    # the text start (text_start_dims, the defaults) against the SVD alone, and its ablation: the bag
    # of the text's word embeddings in place of the layers' states
    "CLLM4Rec-svd-start": {"text_start_dims": 0},
    "CLLM4Rec-words-start": {"model": "CLLM4RecWordsStart"},
    # the issue rows for the SVD start (the defaults before the text start)
    "CLLM4Rec-svd-start-no-LM": {"text_start_dims": 0, "readout_state_weight": 0.0},
    "CLLM4Rec-svd-start-random-LM": {"text_start_dims": 0, "llm_pretrained": False},
    # a looser anchor: amazon-beauty-paper's dataset preset since it won there; elsewhere an ablation
    "CLLM4Rec-lambda-300": {"lambda_c": 300.0},
}  # fmt: skip
METRICS = ["recall@20", "recall@40", "ndcg@100", "paperrecall@20", "paperrecall@40"]
HEADER = ["model"] + METRICS + ["valid recall@20", "train time (s)", "eval time (s)", "stages (s)", "configuration", "split"]
# a split with items that have no training interaction (``cold_items``): their two views, after the split
COLD = [f"{part} cold-{view} recall@{k}" for part in ("test", "valid") for view in ("item", "only") for k in (20, 40)]
COMMON = {"metrics": ["Recall", "NDCG", "PaperRecall"], "topk": [20, 40, 100], "valid_metric": "Recall@20",
          "show_progress": False, "use_gpu": torch.cuda.is_available()}  # fmt: skip


def plot(dataset: str, bests: list[tuple[str, dict]], path: Path) -> None:
    """``path``: test metrics per model (bars) and each CLLM4Rec row's validation Recall@20 per finetuning epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    metrics = ["recall@20", "recall@40", "ndcg@100"]
    width = 0.8 / len(metrics)
    for k, metric in enumerate(metrics):
        x = [i + (k - 1) * width for i in range(len(bests))]
        bars.bar(x, [r["test_result"].get(metric, 0.0) for _, r in bests], width, label=metric)
    bars.set_xticks(range(len(bests)), [name for name, _ in bests], rotation=30, ha="right")
    bars.set_title(f"{dataset}: test set, full ranking")
    bars.legend()
    for name, result in bests:
        history = [h.get("recall@20") for h in result.get("valid_history", [])]
        if name.startswith("CLLM4Rec") and history:
            curves.plot(range(1, len(history) + 1), history, marker="o", label=name)
    curves.set_xlabel("finetuning epoch")
    curves.set_ylabel("valid Recall@20")
    curves.set_title("CLLM4Rec validation curve")
    if curves.lines:
        curves.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def kept_rows(args, header: list[str]) -> list[tuple[str, list[str]]]:
    """``--keep``: (model, row) copied from the table already in ``<out>/<dataset>.csv``, in ``--keep`` order."""
    keep = [m.strip() for m in args.keep.split(",") if m.strip()]
    if not keep:
        return []
    path = Path(args.out or ".") / f"{args.dataset}.csv"
    if not path.is_file():
        raise SystemExit(f"--keep needs the earlier table {path} (give --out)")
    with open(path, newline="") as f:
        old_header, *old_rows = list(csv.reader(f))
    if old_header[: len(header)] != header:
        raise SystemExit(f"{path} has other columns than this script writes: rerun those models instead")
    by_model = {row[0]: row for row in old_rows}
    missing = [m for m in keep if m not in by_model]
    if missing:
        raise SystemExit(f"--keep: no row for {', '.join(missing)} in {path}")
    return [(m, by_model[m]) for m in keep]


def row_runs(row: str, recipe: str, no_sweep: bool) -> tuple[str, list[dict]]:
    """The model of a table row and its configurations: a CLLM4Rec variant under ``recipe``, or a
    baseline's sweep (``no_sweep``: RecBole's defaults) under its cap."""
    if not row.startswith("CLLM4Rec"):
        return row, [{**CAPS.get(row, {}), **v} for v in ([{}] if no_sweep else SWEEPS.get(row, [{}]))]
    if row not in VARIANTS:
        raise SystemExit(f"unknown CLLM4Rec variant {row!r}: one of {', '.join(VARIANTS)}")
    if recipe not in RECIPES:
        raise SystemExit(f"unknown recipe {recipe!r}: one of {', '.join(RECIPES)}")
    variant = dict(VARIANTS[row])
    return variant.pop("model", "CLLM4Rec"), [{**RECIPES[recipe], **variant}]


def table_row(row: str, recipe: str, best: dict) -> list:
    """A row of the table: ``best``'s test metrics, its validation Recall@20, times and configuration."""
    choice = {k: v for k, v in best["config"].items() if k not in COMMON and k != "data_path"}
    configuration = json.dumps(choice) if choice else "defaults"
    return (
        [row]
        + [best["test_result"].get(m) for m in METRICS]
        + [best["best_valid_result"].get("recall@20"), round(best["train_time"], 1), round(best["eval_time"], 1)]
        + [", ".join(f"{stage} {seconds:.0f}" for stage, seconds in best.get("stage_seconds", {}).items())]
        + [(f"recipe {recipe}: " if row.startswith("CLLM4Rec") else "") + configuration, best["split"]]
        + [best["cold_result"].get(c) for c in COLD if best.get("cold_result")]
    )


def hardware() -> str:
    return f"{machine()}{'' if torch.cuda.is_available() else ' per run'}"


def write_table(args, command: str, rows: list[list], bests: list[tuple[str, dict]], hardware_of: dict) -> None:
    """``<out>/<dataset>.md``, ``.csv`` (with each row's hardware) and ``.png``; the table to stdout."""
    header = HEADER + (COLD if any(len(row) > len(HEADER) for row in rows) else [])
    table = markdown_table(header, rows)
    title = f"{args.dataset}, test set, full ranking; {hardware()}, torch {torch.__version__}"
    print(f"\n{title}\n\n{table}")
    if not args.out:
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.dataset}.md").write_text(f"## {title}\n\n`{command}`\n\n{table}\n")
    with open(out / f"{args.dataset}.csv", "w", newline="") as f:
        rows = [header + ["hardware"]] + [row + [hardware_of.get(row[0], hardware())] for row in rows]
        csv.writer(f, lineterminator="\n").writerows(rows)
    plot(args.dataset, bests, out / f"{args.dataset}.png")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty-paper")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--models", default=",".join(["CLLM4Rec"] + BASELINES))
    parser.add_argument("--recipe", default="gpu" if torch.cuda.is_available() else "main", choices=sorted(RECIPES))
    parser.add_argument("--no-sweep", action="store_true", help="RecBole defaults only for the baselines")
    parser.add_argument("--config", action="append", default=[], help="key=value (yaml) for every model; wins over the recipe")
    parser.add_argument("--work", default="results/reproduce", help="finished runs and checkpoints (resume)")
    parser.add_argument("--out", default=None, help="write <dataset>.md and <dataset>.csv here")
    parser.add_argument("--keep", default="", help="models whose rows are copied from <out>/<dataset>.csv, not rerun")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[list]:
    args = parse(argv)
    base = {**COMMON, **({"data_path": args.data_path} if args.data_path else {})}
    overrides = settings(args.config)
    work = Path(args.work) / args.dataset
    rows, bests = [], []
    hardware_of: dict[str, str] = {}  # kept rows keep the machine they were measured on
    for entry in [m.strip() for m in args.models.split(",") if m.strip()]:
        row, _, recipe = entry.partition("@")  # CLLM4Rec-paper@main: another recipe for this row
        model, configs = row_runs(row, recipe or args.recipe, args.no_sweep)
        results = [run_once(row, model, args.dataset, {**base, **c, **overrides}, work) for c in configs]
        best = max(results, key=lambda r: r["best_valid_result"].get("recall@20", float("-inf")))
        bests.append((row, best))
        rows.append(table_row(row, recipe or args.recipe, best))
        print(row, rows[-1][1:], flush=True)
    for row, kept in kept_rows(args, HEADER):
        rows.append(kept[:-1])  # every column but the hardware, a cold split's views too
        bests.append((row, {"test_result": {m: float(kept[1 + k]) for k, m in enumerate(METRICS) if kept[1 + k]}}))
        hardware_of[row] = kept[-1]
    if len({row[len(HEADER) - 1] for row in rows}) > 1:
        raise RuntimeError("models saw different splits")
    command = "python benchmarks/reproduce.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_table(args, command, rows, bests, hardware_of)
    return rows


if __name__ == "__main__":
    main()
