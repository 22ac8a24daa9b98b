"""A variant under trial (issue: the text reaches the ranking through the language model): the item
tables start from the SVD *and* the LM's own reading of each item's text.

    python benchmarks/text_start.py --dataset=ml-100k                          # the start alone
    python benchmarks/text_start.py --dataset=amazon-beauty-paper --data_path=../shared/datasets
    python benchmarks/text_start.py --dataset=ml-100k --train text_start_dims=64 text_start_share=0.2

``install()`` hooks ``CLLM4Rec.init_id_tables`` (this process only): with ``text_start_dims`` set
it reads each item's content document (``item_prompt`` + ``item_text_template``,
the words ``item`` in place of the ID token, as the plain prompt) through the content side of the
frozen LM (``content_layers``, all 30 by default), averages the last layer's states over the text
tokens, and writes the top ``text_start_dims`` principal components of those states into the last
``text_start_dims`` dimensions of both sides' item tables (the SVD's weakest factors give way),
scaled so that they hold ``text_start_share`` of an item row's squared norm next to the SVD part.
User rows stay as the SVD put them. A history's mean item embedding . an item then adds
the similarity of the two items' texts *as the LM reads them* to the collaborative similarity; the
content LM and mutual regularization train from there.

Without ``--train``: validation Recall@20 of the start's tables alone (a history's mean item
embedding . each item, training items masked; ``id_signal.py``'s quantity) for each (dims, share):
whether the LM's reading adds item-item signal before any training. With ``--train``: the quick
loop's finetuning-only run of the variant (``quick_loop.py``'s configuration and ``--work``), or any
schedule given as ``key=value``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import recbole_cllm4rec  # noqa: E402,F401
from id_signal import interactions, recall_at  # noqa: E402

from recbole_cllm4rec.corpus import token_budget_batches  # noqa: E402
from recbole_cllm4rec.model.cllm4rec import CLLM4Rec  # noqa: E402


@torch.no_grad()
def item_text_states(model: CLLM4Rec, max_tokens: int, words: bool = False) -> torch.Tensor:
    """``[n_items, hidden]``: each item's content document read by the content side with plain words
    in place of the ID tokens, the last layer's states averaged over the text (``words``: the input
    word embeddings instead, no layer: the ablation); zero rows for items without a document.
    ``max_tokens``: padded tokens per forward pass."""
    layout, content = model.layout, model.documents.content
    ids = content.ids.long()
    is_item_doc = layout.is_item(ids).any(1) & ~layout.is_user(ids).any(1)
    docs = is_item_doc.nonzero().squeeze(1)
    items = layout.split(ids[docs])[2].amax(1)  # an item document's one item (0 at other positions)
    states = torch.zeros(model.n_items, model.collaborative_item_emb.embedding_dim)
    for batch in token_budget_batches(content.length[docs], max_tokens, shuffle=False):
        rows = docs[batch]
        length, prompt_length = content.length[rows], content.prompt_length[rows]
        plain = layout.as_words(ids[rows][:, : int(length.max())], *model.plain_words).to(model.device)
        if words:
            hidden = model.backbone.get_input_embeddings()(plain).float().cpu()
        else:
            hidden = model.hidden_states(plain, length.to(model.device), "content").cpu()
        positions = torch.arange(plain.shape[1])[None, :]
        text = ((positions >= prompt_length[:, None]) & (positions < length[:, None])).float()
        states[items[batch]] = (text[:, :, None] * hidden).sum(1) / text.sum(1, keepdim=True).clamp(min=1)
    return states


def text_components(states: torch.Tensor, dims: int, seed: int, whiten: bool = False) -> torch.Tensor:
    """The top ``dims`` principal components (scores; ``whiten``: orthonormal, each weighing the same) of the rows
    that have text; zero elsewhere."""
    filled = states.abs().sum(1) > 0
    centred = states[filled] - states[filled].mean(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, s, _ = torch.pca_lowrank(centred, q=dims, center=False, niter=4)
    out = torch.zeros(len(states), dims)
    out[filled] = u if whiten else u * s
    return out


@torch.no_grad()
def write_text_start(item_table: torch.Tensor, components: torch.Tensor, share: float) -> None:
    """The last ``components.shape[1]`` dimensions of ``item_table`` (row 0, padding, skipped) take
    the components, scaled to ``share`` of the rows' mean squared norm beside the rest."""
    dims = components.shape[1]
    rest = item_table[1:, :-dims].pow(2).sum(1).mean()
    scale = (share / (1 - share) * rest / components[1:].pow(2).sum(1).mean().clamp(min=1e-12)).sqrt()
    item_table[1:, -dims:] = components[1:].to(item_table) * scale


def install() -> None:
    """The variant as a hook, in this process only: ``CLLM4Rec.init_id_tables`` also writes the text
    start when ``text_start_dims`` is set (``text_start_share``, ``text_start_whiten``,
    ``text_start_source``: ``lm``, the default, or ``words``, the bag of word embeddings)."""
    svd_start = CLLM4Rec.init_id_tables
    if hasattr(svd_start, "svd_start"):  # installed already
        return

    def init_id_tables(model: CLLM4Rec, config) -> None:
        svd_start(model, config)
        if not config["text_start_dims"]:
            return
        if config["item_init"] != "svd":
            raise ValueError("text_start_dims needs item_init: svd (the text takes the SVD's weakest factors)")
        states = item_text_states(model, config["eval_batch_tokens"], config["text_start_source"] == "words")
        components = text_components(states, config["text_start_dims"], config["seed"], bool(config["text_start_whiten"]))
        for side in ("collaborative", "content"):
            write_text_start(model.tables(side)[1].weight, components, config["text_start_share"])

    init_id_tables.svd_start = svd_start
    CLLM4Rec.init_id_tables = init_id_tables


def start_grid(dataset: str, data_path: str | None, dims: list[int], shares: list[float], settings: dict) -> str:
    """Validation Recall@20 of the start's tables alone, per (dims, share); the SVD alone first."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_cllm4rec.registry import Config

    config_dict = {"show_progress": False, "state": "WARNING", **settings}
    if data_path:
        config_dict["data_path"] = data_path
    config = Config(model="CLLM4Rec", dataset=dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    X, V = interactions(train.dataset), interactions(valid.dataset)
    users = np.where(V.sum(1) > 0)[0]
    model = CLLM4Rec(config, train.dataset).eval()
    svd = model.collaborative_item_emb.weight.detach().clone()
    states = item_text_states(model, config["eval_batch_tokens"])

    def tables_alone(items: torch.Tensor) -> float:
        items = items.numpy()
        return recall_at(X[users] @ items @ items.T, X[users], V[users])

    lines = [f"Validation Recall@20 of the start's tables alone on {dataset} ({len(users)} users)", "",
             "| text dims | " + " | ".join(f"share {s:g}" for s in shares) + " |", "|---|" + "---|" * len(shares),
             f"| 0 (the SVD alone) | {tables_alone(svd):.4f} |" + " |" * (len(shares) - 1)]  # fmt: skip
    for d in dims:
        for whiten in (False, True):
            components = text_components(states, d, config["seed"], whiten)
            cells = []
            for share in shares:
                items = svd.clone()
                write_text_start(items, components, share)
                cells.append(f"{tables_alone(items):.4f}")
            lines.append(f"| {d}{', whitened' if whiten else ''} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="*", help="key=value (yaml) over the yaml defaults / the quick loop")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--dims", default="16,64,128")
    parser.add_argument("--shares", default="0,0.02,0.05,0.1,0.2")
    parser.add_argument("--train", action="store_true", help="train the variant (quick loop) instead")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="results/quick")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.train:
        import quick_loop

        install()
        rest = ["--dataset", args.dataset, "--epochs", str(args.epochs), "--threads", str(args.threads), "--work", args.work]
        return quick_loop.main(args.settings + rest + (["--data_path", args.data_path] if args.data_path else []))
    settings = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.settings)}
    dims, shares = [int(d) for d in args.dims.split(",")], [float(s) for s in args.shares.split(",")]
    return start_grid(args.dataset, args.data_path, dims, shares, settings)


if __name__ == "__main__":
    main()
