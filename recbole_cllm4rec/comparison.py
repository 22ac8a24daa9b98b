"""Several models' results on one split side by side: a table (markdown, csv) and a chart."""
from __future__ import annotations

import csv
from pathlib import Path

from recbole_cllm4rec.checkpoint import replaced_whole
from recbole_cllm4rec.cold_items import with_test_views


def comparison_rows(results: list[dict]) -> tuple[list[str], list[list]]:
    """Header and rows of the comparison table: test metrics, best-valid metrics, cold-item views, times, split."""
    metrics = list(results[0]["test_result"])
    cold = list(results[0].get("cold_result", {}))
    header = ["model"] + [f"test {m}" for m in metrics] + [f"valid {m}" for m in metrics] + cold
    header += ["train time (s)", "eval time (s)", "split"]
    rows = []
    for r in results:
        valid = r["best_valid_result"]
        rows.append(
            [r["model"]]
            + [r["test_result"].get(m) for m in metrics]
            + [valid.get(m) for m in metrics]
            + [r.get("cold_result", {}).get(m) for m in cold]
            + [round(r["train_time"], 1), round(r["eval_time"], 1), r["split"]]
        )
    return header, rows


def comparison_chart(results: list[dict], path: Path) -> bool:
    """Test metrics per model as grouped bars in a PNG; ``False`` (nothing drawn) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    metrics = list(with_test_views(results[0]))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(metrics) * max(1, len(results) / 2)), 4))
    for k, result in enumerate(results):
        positions = [m + (k - (len(results) - 1) / 2) * width for m in range(len(metrics))]
        ax.bar(positions, [with_test_views(result)[m] for m in metrics], width, label=result["model"])
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("test")
    ax.set_title(f"{results[0]['dataset']} (split {results[0]['split']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table of ``header`` and ``rows`` (``None`` cells empty)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_comparison(results: list[dict], stem: Path) -> None:
    """The comparison table on stdout and in ``<stem>.md`` / ``.csv`` (each written whole or not at all),
    drawn in ``<stem>.png``."""
    header, rows = comparison_rows(results)
    table = markdown_table(header, rows)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with replaced_whole(stem.with_suffix(".md")) as tmp, open(tmp, "w") as f:
        f.write(table + "\n")
    with replaced_whole(stem.with_suffix(".csv")) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    saved = [f"{stem}.md", f"{stem}.csv"] + ([f"{stem}.png"] if comparison_chart(results, stem.with_suffix(".png")) else [])
    print(f"\n{table}\n\nsaved to {', '.join(saved)}")
