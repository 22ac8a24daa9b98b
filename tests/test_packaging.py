"""The wheel carries what a non-editable install needs, and works installed outside the clone."""
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(folder), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return next(folder.glob("recbole_cllm4rec-*.whl"))


def test_the_wheel_holds_the_defaults_and_every_subpackage(wheel, tmp_path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ROOT.joinpath("properties").rglob("*.yaml"):
        assert f"recbole_cllm4rec/properties/{path.relative_to(ROOT / 'properties')}" in names
    for package in ("", "model/", "datasets/"):
        assert f"recbole_cllm4rec/{package}__init__.py" in names
    assert "recbole_cllm4rec/datasets/amazon.py" in names
    # installed from the wheel (unpacked here, outside the checkout), the registry finds the packaged yaml
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    found = subprocess.run(
        [sys.executable, "-c", "from recbole_cllm4rec import registry; print(registry.PROPERTIES_DIR)"],
        cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr[-2000:]
    assert Path(found.stdout.split()[-1]) == site / "recbole_cllm4rec" / "properties"


def test_the_wheel_in_a_fresh_venv_trains_compares_and_converts_outside_the_clone(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    # the dependencies (torch, recbole, ...) come from this environment as a plain path: its .pth
    # files, the editable install of the plugin among them, are not read there
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    outside = tmp_path / "outside"
    outside.mkdir()

    def run(*args: str) -> str:
        out = subprocess.run([python, *args], cwd=outside, capture_output=True, text=True, timeout=600,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    where = run("-c", "import recbole_cllm4rec; print(recbole_cllm4rec.__file__)")
    assert where.strip().startswith(site) and str(ROOT) not in where
    quick = ["--dataset=ml-100k", "--epochs=1", "--state=WARNING", "--show_progress=False"]
    table = run("-m", "recbole_cllm4rec", "--model=CLLM4Rec", *quick, "--llm=tiny-random", "--pretrain_epochs=0")
    assert "| CLLM4Rec |" in table and "recall@20" in table  # the plugin's protocol: topk up to 100
    table = run("-m", "recbole_cllm4rec", "--model=Pop,BPR", *quick)
    assert "| Pop |" in table and "| BPR |" in table
    assert "--overwrite" in run("-m", "recbole_cllm4rec.datasets.amazon", "--help")
