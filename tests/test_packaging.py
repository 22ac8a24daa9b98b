"""The wheel carries what a non-editable install needs: the yaml defaults and every subpackage."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_the_defaults_and_every_subpackage(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    wheel = next(tmp_path.glob("recbole_cllm4rec-*.whl"))
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
