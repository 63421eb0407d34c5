"""What a refused command may leave under its `paths.root`: the assertions tests/faults share."""

from __future__ import annotations

from pathlib import Path


def assert_no_cache_entry(root: Path) -> None:
    """Nothing trained: no entry (dot-files are the cache's own locks and indexes) under root/.cache."""
    cache = root / ".cache"
    entries = [p for p in cache.glob("*/*") if not p.name.startswith(".")] if cache.exists() else []
    assert entries == [], f"trained before refusing: {entries}"


def assert_nothing_left(root: Path) -> None:
    """No study store, no tracking store, no cache entry: refused before anything was opened."""
    assert not (root / "mlruns" / "optuna.db").exists(), "a study store was created"
    assert not (root / "mlruns" / "mlflow.db").exists(), "a tracking store was created"
    assert_no_cache_entry(root)


def assert_nothing_created(root: Path) -> None:
    """No Optuna study, no MLflow run, no cache entry (the stores themselves may exist)."""
    db = root / "mlruns" / "optuna.db"
    if db.exists():
        import optuna

        assert optuna.get_all_study_names(f"sqlite:///{db}") == [], "an Optuna study was created"
    mlflow_db = root / "mlruns" / "mlflow.db"
    if mlflow_db.exists():
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
        exps = [e.experiment_id for e in client.search_experiments()]
        assert client.search_runs(exps) == [], "an MLflow run was created"
    assert_no_cache_entry(root)
