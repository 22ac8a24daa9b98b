"""Does the frozen LM's reading of the item text carry ranking signal? EASE with text features, by source.

    python benchmarks/text_states.py --dataset=ml-100k
    python benchmarks/text_states.py --dataset=amazon-beauty-paper --data_path=../shared/datasets --reg=250

Each item's text (the dataset preset's ``item_text_template``, after ``item_prompt`` with the word
``item`` in place of the ID token) is read by the backbone, and its features enter EASE as extra rows
(``X = [R; a F^T]``, as ``EASEText`` stacks tags): ``F`` is, per item, the mean over the text's tokens
of

- ``word embeddings``: the input embeddings (no layer: a bag of word vectors);
- ``LM states, N layers``: the hidden states after the first N layers (the last: after the final
  norm, where the word head reads);

centred and scaled to unit rows; and, for reference, the tags / title words of ``EASEText``. Prints
validation Recall@20 for each source at each (``a``, ``lambda``) and the best: where the LM's states
beat the word embeddings, its layers read something the words alone do not carry; where they reach
the tags, the text's signal survives the LM's reading. Validation only (a diagnostic, not a model).
"""
from __future__ import annotations

import sys
from time import time

import numpy as np
import torch
from common import config_dict, interactions, parser, recall_at, split

from recbole_cllm4rec.model.adapters import cpu_has_native_bf16


@torch.no_grad()
def text_states(backbone, tokenizer, prompt: str, texts: list[str], depths: list[int], batch: int = 32) -> dict:
    """``{0: word embeddings, N: states after N layers}``: per text, the mean over its own tokens
    (the prompt's are read, not averaged); a zero row for an empty text."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    out = {d: np.zeros((len(texts), backbone.config.hidden_size), dtype=np.float32) for d in [0] + depths}
    filled = [i for i, t in enumerate(texts) if t]
    dtype = torch.bfloat16 if cpu_has_native_bf16() else None
    for start in range(0, len(filled), batch):
        rows = filled[start : start + batch]
        mains = [tokenizer(" " + texts[i], add_special_tokens=False).input_ids[:64] for i in rows]
        width = len(prompt_ids) + max(map(len, mains))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        text = torch.zeros(len(rows), width, dtype=torch.bool)
        for k, main in enumerate(mains):
            n = len(prompt_ids) + len(main)
            ids[k, :n] = torch.tensor(prompt_ids + main)
            mask[k, :n] = 1
            text[k, len(prompt_ids) : n] = True
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            hidden = backbone.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        weights = text.float() / text.sum(1, keepdim=True)
        for depth, features in out.items():
            features[rows] = torch.einsum("bt,btd->bd", weights, hidden[depth].float()).numpy()
    return out


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Centred over the items that have text, then each row scaled to norm 1."""
    filled = np.abs(features).sum(1) > 0
    features = features - features[filled].mean(0) * filled[:, None]
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.where(norms > 0, features / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def ease_scores(train: np.ndarray, gram_text: np.ndarray | None, weight: float, reg: float) -> np.ndarray:
    """EASE on ``[R; a F^T]`` (``gram_text`` = F F^T): the training rows' scores."""
    gram = train.T.astype(np.float64) @ train
    if gram_text is not None and weight:
        gram += weight**2 * gram_text
    gram[np.diag_indices_from(gram)] += reg
    inverse = np.linalg.inv(gram)
    similarity = inverse / -np.diag(inverse)
    np.fill_diagonal(similarity, 0.0)
    return train @ similarity.astype(np.float32)


def feature_grams(config, train, depths: list[int]) -> tuple[dict[str, np.ndarray], str, int, float]:
    """``({source: F F^T}, prompt, depths, seconds)``: each source's unit-row item features (word
    embeddings, LM states per depth, EASEText's tags), as Gram matrices; the LM's reading timed."""
    from recbole_cllm4rec.backbone import load_backbone
    from recbole_cllm4rec.data_files import field_texts
    from recbole_cllm4rec.model.easetext import text_features

    template = config["item_text_template"]
    texts = field_texts(train.dataset, "item", template)
    backbone, tokenizer = load_backbone(config["llm"], config["llm_cache_dir"])
    depths = [min(d, backbone.config.num_hidden_layers) for d in depths]
    start = time()
    prompt = config["item_prompt"].replace("{item}", "item")
    states = text_states(backbone, tokenizer, prompt, texts, depths)
    seconds = time() - start
    sources = {"word embeddings (no layer)": states[0]}
    sources.update({f"LM states, {d} layers": states[d] for d in depths})
    units = {name: unit_rows(f) for name, f in sources.items()}
    grams = {name: f @ f.T for name, f in units.items()}
    tags = text_features(train.dataset, "item", template).toarray().astype(np.float32)
    grams["tags and words (EASEText's features)"] = tags @ tags.T
    return grams, prompt, len([t for t in texts if t]), seconds


def main(argv: list[str] | None = None) -> str:
    command = parser(__doc__, over="the yaml defaults (llm, item_text_template, ...)")
    command.add_argument("--reg", default="100,250,500", help="EASE lambda values")
    command.add_argument("--weights", default="0.5,1,2,4,8", help="text weights a")
    command.add_argument("--depths", default="4,30", help="LM depths whose states are features")
    command.add_argument("--threads", type=int, default=0)
    args = command.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config, train, valid, _ = split(args.dataset, config_dict(args, state="WARNING", show_progress=False))
    seen, truth = interactions(train.dataset), interactions(valid.dataset)
    users = truth.sum(1) > 0
    grams, prompt, n_texts, seconds = feature_grams(config, train, [int(d) for d in args.depths.split(",")])
    regs, weights = [float(r) for r in args.reg.split(",")], [float(a) for a in args.weights.split(",")]

    def recall(gram, weight: float, reg: float) -> float:
        return recall_at(ease_scores(seen, gram, weight, reg)[users], seen[users], truth[users])

    lines = [
        f"### {args.dataset}: EASE with item-text features, validation Recall@20", "",
        f"`python benchmarks/text_states.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
        f"{n_texts} item texts read in {seconds:.0f} s; prompt `{prompt}`", "",
        "| features | " + " | ".join(f"a={a:g}" for a in weights) + " | best (a, lambda) |",
        "|---|" + "---|" * (len(weights) + 1),
    ]  # fmt: skip
    ease = {reg: recall(None, 0.0, reg) for reg in regs}
    best_reg = max(ease, key=ease.get)
    lines.append(f"| none (EASE) | {ease[best_reg]:.4f} at lambda {best_reg:g} |" + " |" * (len(weights) - 1) + f" {ease[best_reg]:.4f} (-, {best_reg:g}) |")
    for name, gram in grams.items():
        table = {(a, reg): recall(gram, a, reg) for a in weights for reg in regs}
        (a, reg), best = max(table.items(), key=lambda kv: kv[1])
        cells = [f"{max(table[(w, r)] for r in regs):.4f}" for w in weights]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | **{best:.4f}** ({a:g}, {reg:g}) |")
        print(lines[-1], flush=True)
    report = "\n".join(lines) + "\n\n(cells: the best lambda at each a)\n"
    print(report)
    return report


if __name__ == "__main__":
    main()
