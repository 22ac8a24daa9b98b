"""The README's usage commands, read from the README itself and run as written, so an example cannot rot.

Where a command would take minutes it runs on the tiny generated dataset with the tiny random
backbone and one epoch per stage; placeholders (``NAME``, ``/path/to/...``, ``<time>``, ``196``)
become the files and ids of that run. Commands that need GPUs or several machines are listed in
``NEEDS_HARDWARE`` and only parsed.
"""
import csv
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
NEEDS_HARDWARE = ("--gpu_id", "torchrun", "--world_size")  # GPUs per process, several machines
FAST = ["--llm=tiny-random", "--content_warmup_epochs=0", "--pretrain_epochs=1", "--epochs=1"]


def usage_section() -> str:
    start = README.index("\n## Usage")
    return README[start : README.index("\n## ", start + 1)]


def readme_commands() -> list[str]:
    """Every command line of the usage section's ``bash`` blocks (continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", usage_section(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def newest(folder: Path, pattern: str) -> str:
    return str(max(folder.glob(pattern), key=lambda p: p.stat().st_mtime))  # a run before made one


def as_run_here(command: str, root: Path, backbone: Path) -> tuple[str, list[str]]:
    """(entry point, argv) of a README command, placeholders replaced, made fast where it trains."""
    if "-<time>-last.pth" in command:
        command = command.replace("saved/CLLM4Rec-<time>-last.pth", newest(root / "saved", "CLLM4Rec-*-last.pth"))
    if "<time>" in command:
        best = [p for p in (root / "saved").glob("CLLM4Rec-*.pth") if not p.name.endswith("-last.pth")]
        command = command.replace("saved/CLLM4Rec-<time>.pth", str(max(best, key=lambda p: p.stat().st_mtime)))
    command = command.replace("--user 196", "--user u1").replace("/path/to/datasets", str(root))
    command = command.replace("/path/to/model", str(backbone)).replace("=NAME", "=tiny")
    command = command.replace("properties/", str(ROOT / "properties") + "/")
    argv = shlex.split(command)
    if argv[:3] == ["python", "-m", "recbole_cllm4rec.recommend"]:
        return "recommend", argv[3:]
    script, argv = argv[1], argv[2:]
    argv = ["--dataset=tiny" if a == "--dataset=ml-100k" else a for a in argv]
    if not any(a.startswith("--config_files") for a in argv):
        argv.append(f"--config_files={root / 'tiny.yaml'}")
    fast = [f for f in FAST if not (f.startswith("--llm=") and any(a.startswith("--llm=") for a in argv))]
    if script == "run_hyper.py":
        argv = [a.replace("--max_evals=10", "--max_evals=2") for a in argv]
    return script, argv + fast


@pytest.fixture
def readme_world(tiny_data):
    """The files the README's commands name: the tiny dataset's config, a.yaml / b.yaml, users.txt,
    a local backbone folder."""
    from recbole_cllm4rec.backbone import load_backbone

    settings = tiny_config_dict(tiny_data)
    for key in ("checkpoint_dir", "llm", "content_warmup_epochs", "pretrain_epochs", "epochs"):
        del settings[key]  # the README's own (saved/) or the fast schedule's
    (tiny_data / "tiny.yaml").write_text(yaml.safe_dump(settings))
    (tiny_data / "a.yaml").write_text(yaml.safe_dump(settings))
    (tiny_data / "b.yaml").write_text("stopping_step: 2\n")
    (tiny_data / "users.txt").write_text("u1\nu2\n")
    model, tokenizer = load_backbone("tiny-random", settings["llm_cache_dir"])
    model.save_pretrained(tiny_data / "model")
    tokenizer.save_pretrained(tiny_data / "model")
    return tiny_data


def test_the_usage_section_has_the_commands_this_test_runs():
    commands = readme_commands()
    scripts = [c.split()[1] if c.startswith("python ") else c.split()[0] for c in commands]
    assert scripts.count("run_recbole.py") >= 8 and "run_hyper.py" in scripts and "-m" in scripts
    assert all(c.startswith(("python ", "torchrun ")) for c in commands)


def test_every_readme_usage_command_runs_as_shown(readme_world, capsys):
    from recbole_cllm4rec import cli, recommend

    entry = {"run_recbole.py": cli.main, "run_hyper.py": cli.hyper_main, "recommend": recommend.main}
    ran = []
    for command in readme_commands():
        if any(flag in command for flag in NEEDS_HARDWARE):
            continue
        script, argv = as_run_here(command, readme_world, readme_world / "model")
        entry[script](argv)
        ran.append(script)
        out = capsys.readouterr().out
        if "--users-file" in argv:
            rows = list(csv.reader(open(readme_world / "recs.tsv"), delimiter="\t"))
            assert {row[0] for row in rows[1:]} == {"u1", "u2"}, rows[:3]
        elif script == "recommend":
            ranks = [line.split()[0] for line in out.splitlines() if line.strip()]
            assert ranks == [str(k) for k in range(1, 11)], out  # --topk 10: ten ranked items
        elif script == "run_hyper.py":
            assert "best params" in out and (readme_world / "hyper-CLLM4Rec-tiny.result").is_file()
        elif "--nproc=2" not in argv:
            models = next(a for a in argv if a.startswith("--model=")).split("=", 1)[1].split(",")
            assert all(f"| {m} |" in out for m in models), out[-2000:]
    assert ran.count("recommend") == 2 and "run_hyper.py" in ran and len(ran) >= 11


def test_the_from_python_snippet_runs_as_shown(tiny_data):
    section = README[README.index("### From Python") :]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, re.S)[:1]
    settings = tiny_config_dict(tiny_data)
    for key in ("llm", "epochs"):
        del settings[key]  # the snippet's own
    code = snippet.replace('"ml-100k"', '"tiny"').replace("config_dict={", "config_dict={**TINY, ")
    assert code.count("**TINY") == 2  # both calls found
    namespace = {"TINY": settings}
    exec(compile(code, "README.md (From Python)", "exec"), namespace)
    assert namespace["result"]["test_result"] and namespace["model"].__class__.__name__ == "CLLM4Rec"
