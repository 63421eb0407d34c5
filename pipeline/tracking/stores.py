"""SQLite stores (MLflow's tracking store, Optuna's study store) that are created complete or
not at all, repaired after an interrupted migration, locked while they are made, and whose
errors name the file and what to do."""

from __future__ import annotations

import errno
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A tracking or study store that cannot be created, migrated or written."""


def _store_advice(folder: Path, setting: str, err: BaseException) -> str:
    text = f"{err}".lower()
    if isinstance(err, OSError) and err.errno == errno.ENOSPC or "disk is full" in text or "no space" in text:
        return f"the disk is full: free space on {folder} (or set {setting} to a store on another disk)"
    if (isinstance(err, OSError) and err.errno in (errno.EROFS, errno.EACCES, errno.EPERM)) or "readonly" in text \
            or "read-only" in text or "unable to open database" in text:
        return f"{folder} is not writable: make it writable (or set {setting} to a writable place)"
    return f"check that {folder} has free space and is writable (or set {setting} elsewhere)"


def store_message(db_path: Path, what: str, setting: str, err: BaseException, verb: str) -> str:
    return (
        f"cannot {verb} the {what} {db_path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
        f"What to do: {_store_advice(db_path.parent, setting, err)}, then run the same command again"
    )


def make_store_folder(db_path: Path, what: str, setting: str) -> None:
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(store_message(db_path, what, setting, err, "create the folder of")) from err


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not remove %s%s: %s", path, suffix, err)


def prepare_sqlite_store(db_path: Path, what: str, setting: str, create: Callable[[str], None]) -> None:
    """Make sure the SQLite store `db_path` exists, fully migrated, and can be written.

    A new store is created and migrated by `create(url)` in a temporary file beside it and moved
    in place (`os.replace`) only when complete, so a disk that fills up or a folder that turns out
    read-only leaves nothing behind (before, a half-made store kept `_alembic_tmp_*` tables that
    failed every later run). An existing store left half-migrated by an older version is repaired
    when that is safe (`repair_interrupted_migration`). Errors name the file and what to do.
    Call it under the store's lock.
    """
    if db_path.exists() and db_path.stat().st_size > 0:
        for path in (db_path, db_path.parent):
            if not os.access(path, os.W_OK):
                raise StoreError(
                    f"the {what} {db_path} is read-only ({path} is not writable). What to do: make it writable "
                    f"(or set {setting} to a writable place), then run the same command again"
                )
        repair_interrupted_migration(db_path, what)
        return
    tmp = db_path.with_name(f".{db_path.name}.creating.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        create(f"sqlite:///{tmp}")
        os.replace(tmp, db_path)
    except BaseException as err:
        _remove_sqlite_files(tmp)
        if isinstance(err, Exception):
            raise StoreError(store_message(db_path, what, setting, err, "create")) from err
        raise
    log.info("created the %s %s", what, db_path)


def repair_interrupted_migration(db_path: Path, what: str) -> None:
    """Drop `_alembic_tmp_<table>` copies an interrupted schema migration left behind, when
    `<table>` itself is intact; refuse (naming the file) when only the copy is left."""
    import sqlite3

    con = sqlite3.connect(str(db_path), timeout=60)
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        leftovers = sorted(n for n in names if n.startswith("_alembic_tmp_"))
        for tmp in leftovers:
            table = tmp[len("_alembic_tmp_") :]
            if table not in names:
                raise StoreError(
                    f"the {what} {db_path} was left half-migrated: table {table!r} exists only as its "
                    f"migration copy {tmp!r}. What to do: restore the file from a backup, or move it away "
                    "to start a new store, then run the same command again"
                )
            con.execute(f'DROP TABLE "{tmp}"')
            log.warning("%s %s: dropped %s, left by an interrupted schema migration", what, db_path, tmp)
        con.commit()
    except sqlite3.DatabaseError as err:
        raise StoreError(store_message(db_path, what, "the store setting", err, "read")) from err
    finally:
        con.close()


@contextmanager
def file_lock(path: Path | None, what: str = "store", setting: str = "its setting") -> Iterator[None]:
    """An exclusive advisory lock on `path` across processes (no-op for None or without fcntl)."""
    if path is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        f = open(path, "a")  # noqa: SIM115 - closed below
    except OSError as err:
        raise StoreError(store_message(path, f"lock file of the {what}", setting, err, "create")) from err
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
