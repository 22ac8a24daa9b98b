"""How much of the recommendation prompt's last hidden state tells users apart. Prints a table.

    python benchmarks/hidden_geometry.py --dataset=ml-100k --layers=4,30 --users=64 --random

CLLM4Rec's item head scores items with the last hidden state of
``{user} has interacted with <items>, {user} will interact with``. With a frozen LM that state is
mostly a component shared by every user; this measures, at initialisation, its size next to what
varies between users, the mean cosine between users' states, and how far swapping the user token
moves the state (what the item head has to work with).
"""
from __future__ import annotations

import torch
from common import parser, split

from recbole_cllm4rec.comparison import markdown_table
from recbole_cllm4rec.model.cllm4rec import CLLM4Rec


def measure(dataset: str, layers: int | None, n_users: int, extra: dict, pretrained: bool = True) -> list:
    config_dict = {"llm_layers": layers, "content_layers": layers, "llm_pretrained": pretrained, "state": "WARNING", **extra}
    config, train, _, _ = split(dataset, config_dict)
    model = CLLM4Rec(config, train.dataset).eval()
    users = torch.nonzero(model.documents.history_len > 0).squeeze(1)[:n_users]
    with torch.no_grad():
        ids, length, _, _ = model.documents.recommendation(users, mask=False)
        rows = torch.arange(len(users))
        last = model.hidden_states(ids, length, "collaborative")[rows, length - 1]
        shared = last.mean(dim=0)
        unit = torch.nn.functional.normalize(last, dim=1)
        cosine = ((unit @ unit.T).sum() - len(users)) / (len(users) * (len(users) - 1))
        # the same prompts with every user token replaced by another user's
        other = users.roll(1)
        swapped = ids.clone()
        is_user = model.layout.is_user(ids)
        swapped[is_user] = model.layout.user_tokens(other[:, None].expand_as(ids))[is_user]
        moved = model.hidden_states(swapped, length, "collaborative")[rows, length - 1]
    n_layers = len(model.backbone.base_model.layers)
    return [
        n_layers,
        "pretrained" if pretrained else "random",
        round(shared.norm().item(), 2),
        round((last - shared).norm(dim=1).mean().item(), 2),
        round(cosine.item(), 3),
        round((moved - last).norm(dim=1).mean().item(), 2),
    ]


def main(argv: list[str] | None = None) -> None:
    command = parser(__doc__)
    command.add_argument("--layers", default="4,30", help="comma-separated llm_layers values")
    command.add_argument("--users", type=int, default=64)
    command.add_argument("--random", action="store_true", help="also the same backbones with random weights")
    args = command.parse_args(argv)
    extra = {"data_path": args.data_path} if args.data_path else {}
    weights = [True, False] if args.random else [True]
    rows = [measure(args.dataset, int(n), args.users, extra, w) for n in args.layers.split(",") for w in weights]
    header = ["layers", "weights", "norm of the shared state", "mean norm of (state - shared)", "mean cosine between users",
              "mean move when the user token is swapped"]
    print(f"{args.dataset}, {args.users} users, SmolLM2-135M (or its architecture), at initialisation\n")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
