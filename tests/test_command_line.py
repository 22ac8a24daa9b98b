"""A refused command line prints one line (no traceback) and exits 1; ``--debug`` shows the traceback."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize(
    "script, args, line",
    [
        ("run_recbole.py", ["--epochs=-1"], "run_recbole.py: error: config key epochs=-1 must be at least 0"),
        ("run_recbole.py", ["--config_files=bad.yaml"], "run_recbole.py: error: config file bad.yaml line 2: not valid YAML"),
        ("run_hyper.py", ["--params_file=bad.hyper"], "run_hyper.py: error: bad.hyper:1: 'lr loguniform -9 -7' is not a RecBole search-space line"),
    ],
)
def test_a_refusal_is_one_line_on_stderr(tmp_path, script, args, line):
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    (tmp_path / "bad.hyper").write_text("lr loguniform -9 -7\n")
    done = run(script, "--llm=tiny-random", *args, cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(line), done.stderr[-2000:]
    assert done.stderr.rstrip().endswith("(--debug shows the traceback)")
    assert not (tmp_path / "saved").exists()


def test_debug_shows_the_traceback(tmp_path):
    done = run("run_recbole.py", "--llm=tiny-random", "--epochs=-1", "--debug", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert "ValueError: config key epochs=-1 must be at least 0" in done.stderr


def test_a_missing_or_broken_config_file_is_named(tmp_path):
    from recbole_cllm4rec.config_rules import check_config_files

    (tmp_path / "bad.yaml").write_text("a: 1\nb: [1\n")
    (tmp_path / "latin1.yaml").write_bytes("a: caf\xe9\n".encode("latin-1"))
    with pytest.raises(FileNotFoundError, match=r"^config file .*missing.yaml does not exist$"):
        check_config_files([tmp_path / "missing.yaml"])
    with pytest.raises(ValueError, match=r"^config file .*bad.yaml line 3: not valid YAML \(expected ',' or '\]'"):
        check_config_files([tmp_path / "bad.yaml"])
    with pytest.raises(ValueError, match=r"^config file .*latin1.yaml: not UTF-8 text \(byte 6\)$"):
        check_config_files([tmp_path / "latin1.yaml"])
    check_config_files([])  # nothing to check
