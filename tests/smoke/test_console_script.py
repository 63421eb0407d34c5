"""The installed `safecompress` console script works from any folder, and a regular (wheel)
install carries the Hydra config tree: no "Primary config module 'conf' not found"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import STAGE_FUNCTIONS
from pipeline.datasets import DATASETS

pytestmark = pytest.mark.smoke

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "safecompress"


def _env(pythonpath: Path) -> dict[str, str]:
    # PYTHONPATH: the scripts import this checkout (or the unpacked wheel), not whatever the
    # shared editable install points at.
    return {**os.environ, "PYTHONPATH": str(pythonpath), "MLFLOW_DISABLE_TELEMETRY": "true"}


def _run(cmd: list[str], cwd: Path, pythonpath: Path = REPO) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=_env(pythonpath), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def test_console_script_runs_stages_from_a_folder_outside_the_clone(tmp_path):
    assert SCRIPT.is_file(), f"no console script beside {sys.executable}: install the package (make install)"
    help_text = _run([str(SCRIPT), "--help"], cwd=tmp_path).stdout
    for stage in STAGE_FUNCTIONS:
        assert f"\n{stage} " in help_text, f"--help does not list the stage {stage!r}"
    for name in DATASETS:  # the data set registry
        assert f"\n{name} " in help_text, f"--help does not list the data set {name!r}"

    # the stage as a bare first word; paths.root defaults to the working folder
    _run([str(SCRIPT), "attack", "experiment=smoke", "compress=dst"], cwd=tmp_path)
    for stage in ("teacher", "shadow", "compress", "attack"):
        assert any((tmp_path / ".cache" / stage).iterdir()), f"no {stage} cache entry in the working folder"
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()


def test_a_wheel_install_ships_the_config_tree(tmp_path):
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("conf", "pipeline", "training", "sparse", "attacks"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)], cwd=src)
    (wheel,) = (tmp_path / "dist").glob("safecompress-*.whl")
    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "-q", "--target", str(site), str(wheel)], cwd=tmp_path)
    n_yaml = len(list((REPO / "conf").rglob("*.yaml")))
    assert len(list((site / "pipeline" / "conf").rglob("*.yaml"))) == n_yaml

    work = tmp_path / "work"
    work.mkdir()
    where = _run([sys.executable, "-c", "from pipeline.__main__ import config_dir; print(config_dir())"],
                 cwd=work, pythonpath=site).stdout.strip()
    assert Path(where) == (site / "pipeline" / "conf").resolve()
    cli = "import sys; from pipeline.__main__ import cli; sys.argv[0] = 'safecompress'; cli()"
    _run([sys.executable, "-c", cli, "teacher", "experiment=smoke"], cwd=work, pythonpath=site)
    assert any((work / ".cache" / "teacher").iterdir())
