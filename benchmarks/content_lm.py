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

import math
from time import time

import numpy as np
import torch
from common import config_dict, interactions, model_and_trainer, parser, recall_at, split


class ContentTable:
    """What the content item table ranks alone, and how far it moved from where it started."""

    def __init__(self, model, train, valid):
        self.table = model.content_item_emb.weight
        self.first = self.table.detach().clone()
        X, V = interactions(train.dataset), interactions(valid.dataset)
        users = np.where(V.sum(1) > 0)[0]
        self.seen, self.truth = X[users], V[users]

    def cells(self) -> str:
        """``valid R@20 | moved``: the table alone (a history's mean item embedding . each item), and
        its mean row distance from the start over the start's mean row norm."""
        items = self.table.detach().cpu().numpy()
        moved = ((self.table.detach() - self.first).norm(dim=1).mean() / self.first.norm(dim=1).mean()).item()
        return f"{recall_at(self.seen @ items @ items.T, self.seen, self.truth):.4f} | {moved:.3f}"


def main(argv: list[str] | None = None) -> str:
    command = parser(__doc__, over="the yaml defaults")
    command.add_argument("--epochs", type=int, default=3)
    command.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    command.add_argument("--out", default=None)
    args = command.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config, train, valid, _ = split(args.dataset, config_dict(args, state="WARNING", show_progress=False))
    model, trainer = model_and_trainer(config, train)
    table = ContentTable(model, train, valid)
    start = time()
    plain, uniform = trainer.content_reference_loss(), math.log(model.layout.vocab_size)
    lines = [f"{args.dataset}, content LM at {model.depths['content']} layers, "
             f"{' '.join(args.settings) or 'defaults'}; plain prompt {plain:.3f} ({time() - start:.0f} s), "
             f"uniform {uniform:.3f} nats per text token", "",
             "| epoch | training loss | content LM after the epoch | plain prompt | uniform | content item table alone: valid R@20 | moved | seconds |",
             "|---|---|---|---|---|---|---|---|", f"| start | - | - | {plain:.3f} | {uniform:.3f} | {table.cells()} | - |"]  # fmt: skip
    print("\n".join(lines), flush=True)
    for epoch in range(args.epochs):
        start = time()
        loss, _ = trainer._run_pass("content", trainer.pretrain_optimizer, epoch, False, regularize=False)
        seconds = time() - start
        lines.append(f"| {epoch} | {loss:.3f} | {trainer.content_eval_loss():.3f} | {plain:.3f} | {uniform:.3f} | {table.cells()} | {seconds:.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
