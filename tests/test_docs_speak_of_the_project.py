"""The project's text files name a past configuration by what it is and its commit, never by a work
session or a relative label ("session 6", "previous defaults") a reader outside the project cannot
check out."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABEL = re.compile(r"\bsession[- ]?\d+\b|\b(previous|last|this|earlier|next) sessions?\b|\bprevious defaults\b|\bthis round\b", re.I)
TEXT = (".md", ".py", ".tsv", ".csv", ".yaml", ".hyper", ".toml", ".txt", ".sh")


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        files = [ROOT / n for n in names]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist)
        files = [p for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    return [f for f in files if f.suffix in TEXT and f.is_file() and f.name != Path(__file__).name]


def test_no_file_labels_a_configuration_by_a_work_session():
    hits = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if LABEL.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "name the configuration and its commit instead:\n" + "\n".join(hits[:20])


def test_the_rule_catches_the_labels_it_is_for():
    for text in ("the session-6 defaults", "rerun in session 8", "CLLM4Rec, previous defaults", "the previous session's table"):
        assert LABEL.search(text), text
    for text in ("the defaults of commit ad83be6", "a CPU session of 3 hours", "HF sessions"):
        assert not LABEL.search(text), text
