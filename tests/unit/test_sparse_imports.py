"""`sparse/` is pure torch: no config, tracking or search libraries, no `pipeline`, no hidden .cuda()."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SPARSE = Path(__file__).resolve().parents[2] / "sparse"
FORBIDDEN = {"hydra", "omegaconf", "optuna", "mlflow", "pipeline"}
FILES = sorted(SPARSE.glob("*.py"))


def test_there_are_files_to_check():
    assert {p.name for p in FILES} >= {
        "masks.py",
        "init.py",
        "schedules.py",
        "scores.py",
        "update.py",
        "export.py",
    }


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_no_forbidden_imports_and_a_module_docstring(path):
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.name} must open with a docstring"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {(node.module or "").split(".")[0]}
        else:
            continue
        assert not roots & FORBIDDEN, f"{path.name}:{node.lineno} imports {roots & FORBIDDEN}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_no_hidden_cuda(path):
    assert ".cuda(" not in path.read_text()


def test_scipy_array_api_helpers_still_work_after_importing_sparse():
    """Our package shares its import name with pydata/sparse; scipy looks up `sparse.SparseArray`."""
    import sys

    from scipy import stats

    import sparse

    assert sys.modules["sparse"] is sparse
    assert abs(stats.tstd([1.0, 2.0, 3.0, 4.0]) - 1.2909944) < 1e-6  # raised AttributeError before
