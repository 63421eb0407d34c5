"""Tracking and study stores that cannot be created or migrated (disk full, read-only): a clear
error naming the file and what to do, nothing half-made left behind, and the same command works
again once the cause is gone. Real faults on a small tmpfs where this process may mount one
(root), a failing write (monkeypatch) everywhere."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.context import RunContext
from pipeline.tracking import plumbing as tracking
from pipeline.tracking.stores import StoreError

REPO = Path(__file__).resolve().parents[2]


def _tables(db: Path) -> set[str]:
    con = sqlite3.connect(str(db))
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".creating." in p.name)


def _settings(cfg_factory, db: Path):
    """The tracking settings of a run context whose MLflow store is `db`."""
    return RunContext.build(cfg_factory("experiment=smoke", f"tracking.uri=sqlite:///{db}")).tracking


def test_disk_full_while_creating_the_tracking_store(cfg_factory, tmp_path, monkeypatch):
    db = tmp_path / "mlruns" / "mlflow.db"
    real = tracking._create_mlflow_store

    def fills_the_disk(url: str, artifact_root: str) -> None:
        con = sqlite3.connect(url[len("sqlite:///") :])
        con.execute("CREATE TABLE _alembic_tmp_jobs (id INTEGER)")  # what a half-run migration leaves
        con.commit()
        con.close()
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(tracking, "_create_mlflow_store", fills_the_disk)
    with pytest.raises(StoreError, match=rf"cannot create the MLflow tracking store {db}: .*disk is full: free space on"):
        tracking.setup(_settings(cfg_factory, db))
    assert not db.exists() and _leftovers(db.parent) == []
    monkeypatch.setattr(tracking, "_create_mlflow_store", real)  # space freed
    assert tracking.setup(_settings(cfg_factory, db)) is not None
    assert "_alembic_tmp_jobs" not in _tables(db) and "runs" in _tables(db)


def test_disk_full_while_creating_the_study_store(tmp_path, monkeypatch):
    from pipeline.study import storage as search

    db = tmp_path / "optuna.db"

    def fails(url: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(search, "_create_optuna_store", fails)
    with pytest.raises(StoreError, match=rf"Optuna study store {db}: .*disk is full"):
        search.open_storage(f"sqlite:///{db}")
    assert not db.exists() and _leftovers(tmp_path) == []
    monkeypatch.undo()
    search.open_storage(f"sqlite:///{db}")
    assert "studies" in _tables(db)


def test_stuck_migration_table_is_dropped_when_its_table_is_intact(cfg_factory, tmp_path, caplog):
    db = tmp_path / "mlflow.db"
    tracking.setup(_settings(cfg_factory, db))
    con = sqlite3.connect(str(db))
    con.execute("CREATE TABLE _alembic_tmp_jobs AS SELECT * FROM jobs")
    con.commit()
    con.close()
    tracking.setup(_settings(cfg_factory, db))
    assert "_alembic_tmp_jobs" not in _tables(db) and "jobs" in _tables(db)
    assert "dropped _alembic_tmp_jobs" in caplog.text


def test_half_migrated_store_is_refused_by_name(cfg_factory, tmp_path):
    db = tmp_path / "mlflow.db"
    tracking.setup(_settings(cfg_factory, db))
    con = sqlite3.connect(str(db))
    con.execute("ALTER TABLE jobs RENAME TO _alembic_tmp_jobs")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=rf"{db} was left half-migrated: table 'jobs' .* restore the file"):
        tracking.setup(_settings(cfg_factory, db))


# --------------------------------------------------------------------------- real faults


@pytest.fixture
def tmpfs(tmp_path):
    """A 512 KiB tmpfs (an MLflow store needs ~1 MB); skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)

    try:
        yield mnt, remount
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_on_a_real_small_disk(cfg_factory, tmpfs):
    mnt, remount = tmpfs
    db = mnt / "mlflow.db"
    with pytest.raises(StoreError, match=rf"cannot create the MLflow tracking store {db}: .*free space on {mnt}"):
        tracking.setup(_settings(cfg_factory, db))
    assert sorted(p.name for p in mnt.iterdir()) == ["mlflow.db.lock"]  # no half-made store
    remount("size=16m")  # space freed
    assert tracking.setup(_settings(cfg_factory, db)) is not None


def test_read_only_store_on_a_real_read_only_mount(cfg_factory, tmpfs):
    mnt, remount = tmpfs
    remount("size=16m")
    db = mnt / "mlflow.db"
    # created by another process, so that this one holds no open file there (remount needs that)
    script = f"from pipeline.tracking.plumbing import _create_mlflow_store as c; c('sqlite:///{db}', '{mnt.as_uri()}')"
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    remount("ro")
    with pytest.raises(StoreError, match=rf"{mnt}.*(read-only|not writable).* make it writable"):
        tracking.setup(_settings(cfg_factory, db))
    remount("rw")
    assert tracking.setup(_settings(cfg_factory, db)) is not None


def test_new_store_in_a_read_only_folder(cfg_factory, tmpfs):
    mnt, remount = tmpfs
    remount("ro")
    db = mnt / "mlflow.db"
    with pytest.raises(StoreError, match=rf"{mnt}.* not writable"):
        tracking.setup(_settings(cfg_factory, db))
