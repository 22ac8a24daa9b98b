"""benchmarks/content_lm.py: the content LM's loss per epoch beside the plain prompt, and its table alone."""
from conftest import load_benchmark


def test_content_lm_prints_each_epoch_beside_the_plain_prompt(tiny_data):
    content_lm = load_benchmark("content_lm")
    text = content_lm.main(["--dataset=tiny", f"--data_path={tiny_data}", "--epochs=2", "llm=tiny-random",
                            f"llm_cache_dir={tiny_data / 'cache'}", "item_text_template='{title}.'",
                            "load_col={inter: [user_id, item_id, rating, timestamp], item: [item_id, title]}",
                            f"checkpoint_dir={tiny_data / 'saved'}", "pretrain_learning_rate=0.1"])  # fmt: skip
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row[0] for row in rows] == ["| start", "| 0", "| 1"]
    plain = {row[3] for row in rows}
    assert len(plain) == 1 and 4.0 < float(plain.pop()) < 6.0  # one reference, near ln 257 for a random backbone
    assert float(rows[0][6]) == 0.0 < float(rows[1][6]) < float(rows[2][6])  # the table moves, epoch by epoch
    assert all(0.0 <= float(row[5]) <= 1.0 for row in rows)
