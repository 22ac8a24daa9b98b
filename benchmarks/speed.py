"""Throughput of each CLLM4Rec stage against the bare backbone's ceiling. Prints one table.

    python benchmarks/speed.py --dataset=ml-100k --llm=smollm2-135m \
        --dtypes=float32,bfloat16,bfloat16+compile --out=docs/results/speed.md

For every training stage (content LM, collaborative LM with mutual regularization, finetuning) it
times ``--batches`` of the trainer's own token-packed batches (random ones from a real epoch, after
one warm-up batch): forward, backward and the optimizer step. Scoring is one whole full-sort pass
over every user, in RecBole's evaluation batches. Then, in the same run, the bare frozen backbone on inputs of
exactly the same padded shapes: forward + backward to the input embeddings for training stages,
forward only for scoring. That is the ceiling a stage can reach; ``ratio`` is ceiling time over
stage time. Peak memory is CUDA's peak allocation per stage, or on CPU the process's peak RSS so far.
"""
from __future__ import annotations

import argparse
import csv
import resource
import sys
import time
from pathlib import Path

import torch
from common import machine, model_and_trainer, settings, split

from recbole_cllm4rec.batches import token_budget_batches
from recbole_cllm4rec.comparison import markdown_table
from recbole_cllm4rec.model.cllm4rec import CLLM4Rec
from recbole_cllm4rec.trainer import CLLM4RecTrainer

STAGES = ("content", "collaborative", "recommendation", "scoring")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_backbone_seconds(model: CLLM4Rec, shapes: list[tuple[int, int]], train: bool, side: str) -> float:
    """Seconds of the frozen backbone alone, at ``side``'s depth, on random inputs of the given [B, L] shapes."""
    dim = model.backbone.get_input_embeddings().embedding_dim
    device = model.backbone_fingerprint.device
    inputs = [(torch.randn(b, n, dim, device=device) * 0.1).requires_grad_(train) for b, n in shapes]
    synchronize(device)
    start = time.perf_counter()
    for x in inputs:
        with torch.set_grad_enabled(train), model.autocast():
            h = model.bodies[side](inputs_embeds=x).last_hidden_state
        if train:
            h.float().sum().backward()
    synchronize(device)
    return time.perf_counter() - start


def stage_batches(trainer: CLLM4RecTrainer, stage: str, n_batches: int, eval_users: int):
    """``(batches, step, lengths of each unit's document)``: a warm-up batch, then what is timed.
    Scoring: one whole evaluation pass over the users, in the batches RecBole hands over
    (``eval_users`` users), after a warm-up batch of a few users. A training stage: ``n_batches`` of
    the trainer's own token-packed batches of an epoch."""
    if stage == "scoring":
        trainer.model.eval()
        users = trainer.train_users
        return [users[:8]] + [users[b] for b in torch.randperm(len(users)).split(eval_users)], None, None
    trainer.model.train()
    batches, step = trainer.stage_batches(stage)
    units, lengths, _ = trainer.stage_documents(stage)
    unit_lengths = torch.zeros(int(units.max()) + 1, dtype=lengths.dtype)
    unit_lengths[units] = lengths
    return batches[: n_batches + 1], step, unit_lengths


def run_batch(trainer: CLLM4RecTrainer, stage: str, batch: torch.Tensor, step) -> float:
    """Seconds of one batch: the trainer's own step, or one full-sort scoring call."""
    model, device = trainer.model, trainer.device
    synchronize(device)
    start = time.perf_counter()
    if stage == "scoring":
        with torch.no_grad():
            model.full_sort_predict({model.USER_ID: batch.to(device)})
    else:
        trainer.train_step(batch, step, trainer.optimizer)
    synchronize(device)
    return time.perf_counter() - start


def packs(trainer: CLLM4RecTrainer, stage: str, batch: torch.Tensor, unit_lengths: torch.Tensor | None) -> list[torch.Tensor]:
    """The document lengths of each forward pass of a batch: the packs ``full_sort_predict`` forms
    inside one RecBole batch, or the training batch itself."""
    if stage != "scoring":
        return [unit_lengths[batch]]
    lengths = trainer.model.documents.lengths("scoring", batch.to(trainer.device)).cpu()
    return [lengths[p] for p in token_budget_batches(lengths, trainer.model.eval_batch_tokens, shuffle=False)]


def measure(trainer: CLLM4RecTrainer, stage: str, n_batches: int, eval_users: int) -> dict:
    """Time ``n_batches`` real batches of ``stage`` and the bare backbone on the same shapes."""
    model, device = trainer.model, trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batches, step, unit_lengths = stage_batches(trainer, stage, n_batches, eval_users)
    real = padded = docs = 0
    shapes: list[tuple[int, int]] = []
    elapsed = 0.0
    for k, batch in enumerate(batches):
        seconds = run_batch(trainer, stage, batch, step)
        if k == 0:
            continue  # warm-up
        elapsed += seconds
        for pack in packs(trainer, stage, batch, unit_lengths):
            shapes.append((len(pack), int(pack.max())))
            real += int(pack.sum())
            padded += len(pack) * int(pack.max())
        docs += len(batch)
    ceiling = bare_backbone_seconds(model, shapes, train=stage != "scoring", side="content" if stage == "content" else "collaborative")
    return {
        "batches": len(batches) - 1,
        "real tok/s": round(real / elapsed, 1),
        "padded tok/s": round(padded / elapsed, 1),
        "padding %": round(100 * (padded - real) / padded, 1),
        ("users/s" if stage in ("scoring", "recommendation", "collaborative") else "docs/s"): round(docs / elapsed, 2),
        "ceiling tok/s": round(padded / ceiling, 1),
        "ceiling": "fwd" if stage == "scoring" else "fwd+bwd",
        "ratio": round(ceiling / elapsed, 2),
        "peak MB": round(peak_memory_mb(device)),
    }


def measure_all(args) -> tuple[list[str], list[list]]:
    """``(header, rows)``: every stage at every ``--dtypes`` entry."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, header = [], []
    for dtype in args.dtypes.split(","):
        config_dict = {"llm": args.llm, "llm_dtype": dtype.removesuffix("+compile"), "llm_compile": dtype.endswith("+compile"),
                       "device": device, "use_gpu": device == "cuda", **settings(args.config)}  # fmt: skip
        if args.data_path:
            config_dict["data_path"] = args.data_path
        config, train, _, _ = split(args.dataset, config_dict)
        _, trainer = model_and_trainer(config, train)
        eval_users = max(1, config["eval_batch_size"] // trainer.model.n_items)
        for stage in args.stages.split(","):
            result = measure(trainer, stage, args.batches, eval_users)
            header = ["dtype", "stage"] + [k for k in result if k not in ("users/s", "docs/s")] + ["docs or users/s"]
            rate = result.pop("users/s", None) or result.pop("docs/s")
            rows.append([dtype, stage] + list(result.values()) + [rate])
            print(dtype, stage, result, rate, flush=True)
    return header, rows


def write(args, header: list[str], rows: list[list]) -> None:
    """The table to stdout and, with ``--out``, as Markdown there and as CSV beside it."""
    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:])
    title = f"{args.dataset}, {args.llm}, {machine()}, torch {torch.__version__}"
    table = markdown_table(header, rows)
    print(f"\n{title}\n\n{table}")
    if not args.out:
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    append = args.append and out.is_file()
    with open(out, "a" if append else "w") as f:
        f.write(("\n" if append else "") + f"## {title}\n\n`{command}`\n\n{table}\n")
    with open(out.with_suffix(".csv"), "a" if append else "w", newline="") as f:
        writer = csv.writer(f)
        if not append:
            writer.writerow(["dataset", "llm", "machine"] + header)
        writer.writerows([[args.dataset, args.llm, machine()] + row for row in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--llm", default="smollm2-135m")
    parser.add_argument(
        "--dtypes", default="float32,bfloat16", help="llm_dtype values; a '+compile' suffix also sets llm_compile"
    )
    parser.add_argument("--batches", type=int, default=10, help="timed batches per stage (after one warm-up)")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--config", action="append", default=[], help="extra key=value (yaml value) config")
    parser.add_argument("--out", default=None, help="write the table as Markdown here, and as CSV next to it")
    parser.add_argument("--append", action="store_true", help="add this table to --out instead of replacing it")
    args = parser.parse_args(argv)
    write(args, *measure_all(args))


if __name__ == "__main__":
    main()
