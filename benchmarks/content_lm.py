"""Does the content LM read its text? Its loss per text token, epoch by epoch, beside the frozen LM's.

    python benchmarks/content_lm.py --dataset=ml-100k --epochs=3
    python benchmarks/content_lm.py --dataset=ml-100k --epochs=3 content_layers=4 pretrain_learning_rate=0.01

Runs ``--epochs`` content warm-up epochs (the content LM alone, unregularized, as
``content_warmup_epochs``) with the yaml defaults and ``key=value`` settings, and after each prints,
in nats per text token: the epoch's training loss, the content LM's loss on the whole corpus after it
(eval mode), the frozen LM's own loss on the same documents with the words ``user`` / ``item`` in
place of the ID tokens (``plain prompt``), and a uniform guess over the word vocabulary. Where the
content LM's loss is below the plain prompt's, its ID tokens carry their item or user. Then whether
what the text taught the content item table ranks: validation Recall@20 of the table alone (a
history's mean item embedding . each item, training items masked, as ``id_signal.py``'s "tables
alone"), and how far the table moved from its start (mean row distance / mean row norm). Prints
Markdown; ``--out`` appends it to a file.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from time import time

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import recbole_cllm4rec  # noqa: E402,F401
from id_signal import interactions, recall_at  # noqa: E402


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="*", help="key=value (yaml) over the yaml defaults")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_cllm4rec.registry import Config, get_model, get_trainer

    settings = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.settings)}
    config_dict = {"state": "WARNING", "show_progress": False, **settings}
    if args.data_path:
        config_dict["data_path"] = args.data_path
    config = Config(model="CLLM4Rec", dataset=args.dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model("CLLM4Rec")(config, train.dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], "CLLM4Rec")(config, model)
    X, V = interactions(train.dataset), interactions(valid.dataset)
    users = np.where(V.sum(1) > 0)[0]
    table = model.content_item_emb.weight
    first = table.detach().clone()

    def tables_alone() -> str:
        items = table.detach().cpu().numpy()
        moved = ((table.detach() - first).norm(dim=1).mean() / first.norm(dim=1).mean()).item()
        return f"{recall_at(X[users] @ items @ items.T, X[users], V[users]):.4f} | {moved:.3f}"

    start = time()
    plain, uniform = trainer.content_reference_loss(), math.log(model.layout.vocab_size)
    lines = [f"{args.dataset}, content LM at {model.depths['content']} layers, "
             f"{' '.join(args.settings) or 'defaults'}; plain prompt {plain:.3f} ({time() - start:.0f} s), "
             f"uniform {uniform:.3f} nats per text token", "",
             "| epoch | training loss | content LM after the epoch | plain prompt | uniform | content item table alone: valid R@20 | moved | seconds |",
             "|---|---|---|---|---|---|---|---|", f"| start | - | - | {plain:.3f} | {uniform:.3f} | {tables_alone()} | - |"]  # fmt: skip
    print("\n".join(lines), flush=True)
    for epoch in range(args.epochs):
        start = time()
        loss, _ = trainer._run_pass("content", trainer.pretrain_optimizer, epoch, False, regularize=False)
        seconds = time() - start
        lines.append(f"| {epoch} | {loss:.3f} | {trainer.content_eval_loss():.3f} | {plain:.3f} | {uniform:.3f} | {tables_alone()} | {seconds:.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
