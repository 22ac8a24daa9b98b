"""Throughput of each CLLM4Rec stage against the bare backbone, per precision. Prints one table.

    python benchmarks/speed.py --dataset=ml-100k --llm=smollm2-135m --dtypes=float32,bfloat16 --batches=4

For every stage (content LM, collaborative LM with mutual regularization, finetuning, full-sort
scoring) it times ``--batches`` real length-bucketed batches after one warm-up batch, and the bare
backbone on inputs of exactly the same padded shapes (forward + backward to the input embeddings
for training stages, forward for scoring): the ceiling the stage can reach.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import recbole_cllm4rec  # noqa: E402,F401
from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_cllm4rec.model.cllm4rec import CLLM4Rec  # noqa: E402
from recbole_cllm4rec.quick_start import isolated_argv, markdown_table  # noqa: E402
from recbole_cllm4rec.trainer import CLLM4RecTrainer, length_bucketed_batches  # noqa: E402


def bare_backbone_seconds(model: CLLM4Rec, shapes: list[tuple[int, int]], train: bool) -> float:
    """Seconds of the frozen backbone alone on random inputs of the given [B, L] shapes."""
    dim = model.backbone.get_input_embeddings().embedding_dim
    autocast = (
        torch.autocast("cpu", dtype=model.autocast_dtype) if model.autocast_dtype else contextlib.nullcontext()
    )
    start = time.perf_counter()
    for b, length in shapes:
        x = torch.randn(b, length, dim, requires_grad=train) * 0.1
        with torch.set_grad_enabled(train), autocast:
            h = model.backbone.base_model(inputs_embeds=x).last_hidden_state
        if train:
            h.float().sum().backward()
    return time.perf_counter() - start


def measure(trainer: CLLM4RecTrainer, stage: str, batch_size: int, n_batches: int) -> dict:
    model = trainer.model
    units, lengths, _ = trainer.stage_documents("recommendation" if stage == "scoring" else stage)
    batches = [units[b] for b in length_bucketed_batches(lengths, batch_size)][: n_batches + 1]
    real = padded = 0
    shapes = []
    elapsed = 0.0
    for k, batch in enumerate(batches):
        start = time.perf_counter()
        if stage == "content":
            loss, reg = model.content_lm_loss(batch)
            length = model.content_docs.length[batch]
        elif stage == "collaborative":
            loss, reg = model.collaborative_lm_loss(batch)
            _, length, _ = model.collaborative_documents(batch)
        elif stage == "recommendation":
            loss, reg = model.recommendation_loss(batch)
            _, length, _ = model.recommendation_documents(batch, mask=True)
        else:
            with torch.no_grad():
                model.full_sort_predict({model.USER_ID: batch})
            _, length, _ = model.recommendation_documents(batch, mask=False)
        if stage != "scoring":
            (loss + reg).backward()
            model.zero_grad(set_to_none=True)
        if k == 0:
            continue  # warm-up
        elapsed += time.perf_counter() - start
        real += int(length.sum())
        padded += len(batch) * int(length.max())
        shapes.append((len(batch), int(length.max())))
    ceiling = bare_backbone_seconds(model, shapes, train=stage != "scoring")
    return {
        "real tok/s": round(real / elapsed, 1),
        "padded tok/s": round(padded / elapsed, 1),
        "padding %": round(100 * (padded - real) / padded, 1),
        "bare backbone tok/s": round(padded / ceiling, 1),
        "ratio to ceiling": round(ceiling / elapsed, 2),
        "peak RSS MB": round(max_rss_mb()),
    }


def max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--llm", default="smollm2-135m")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--stages", default="content,collaborative,recommendation,scoring")
    parser.add_argument("--out", default=None, help="write the table as Markdown to this file")
    args = parser.parse_args()
    rows, header = [], None
    for dtype in args.dtypes.split(","):
        config_dict = {"llm": args.llm, "llm_dtype": dtype, "device": "cpu", "use_gpu": False}
        if args.data_path:
            config_dict["data_path"] = args.data_path
        with isolated_argv():
            config = Config(model="CLLM4Rec", dataset=args.dataset, config_dict=config_dict)
        init_seed(config["seed"], True)
        train, _, _ = data_preparation(config, create_dataset(config))
        trainer = CLLM4RecTrainer(config, CLLM4Rec(config, train.dataset))
        for stage in args.stages.split(","):
            batch_size = args.batch_size * 4 if stage == "scoring" else args.batch_size
            result = measure(trainer, stage, batch_size, args.batches)
            header = ["dtype", "stage", "batch"] + list(result)
            rows.append([dtype, stage, batch_size] + list(result.values()))
            print(dtype, stage, result, flush=True)
    table = markdown_table(header, rows)
    print(f"\n{args.dataset}, {args.llm}, torch {torch.__version__}, {torch.get_num_threads()} threads\n\n{table}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
