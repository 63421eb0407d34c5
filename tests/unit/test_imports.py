"""Dependencies point one way: sparse/ and attacks/ never import the pipeline's frameworks."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"hydra", "omegaconf", "optuna", "mlflow", "pipeline"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", ["sparse", "attacks"])
def test_library_packages_import_no_framework(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    offenders = {str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN) for f in files}
    offenders = {f: bad for f, bad in offenders.items() if bad}
    assert not offenders, f"forbidden imports: {offenders}"


def test_the_checker_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nfrom omegaconf import DictConfig\nimport mlflow.tracking\n")
    assert imported_roots(bad) & FORBIDDEN == {"omegaconf", "mlflow"}
