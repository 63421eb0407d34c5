"""A mutex among the processes that share an Optuna storage, built from the storage itself.

Creating a study is atomic in every Optuna storage (RDB: a unique column; journal: the
first create in the log wins), so "create the study `name`" is "take the lock" and
deleting it is "release". Several machines that share only the study's storage (a
PostgreSQL server, a journal file) can then agree on one thing, such as the study's
single MLflow parent run. A holder that died without releasing is detected by the age
of its claim and the lock is broken after `stale_after_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def storage_lock(
    storage, name: str, holder: str, stale_after_s: float = 120.0, poll_s: float = 0.2
) -> Iterator[None]:
    """Hold the lock `name` on `storage` (an Optuna BaseStorage) for the block."""
    from optuna.exceptions import DuplicatedStudyError
    from optuna.study import StudyDirection

    first_seen: dict[int, float] = {}  # claim id -> when this process first saw it held
    while True:
        try:
            lock_id = storage.create_new_study([StudyDirection.MINIMIZE], name)
            break
        except DuplicatedStudyError:
            pass
        try:
            held_id = storage.get_study_id_from_name(name)
            attrs = storage.get_study_user_attrs(held_id)
        except KeyError:
            continue  # released meanwhile: try again at once
        since = first_seen.setdefault(held_id, time.time())
        claimed_at = attrs.get("claimed_at")
        age = time.time() - (claimed_at if claimed_at is not None else since)
        if age > stale_after_s:
            log.warning(
                "lock %r held for %.0f s (by %s): its holder is presumed dead, breaking it",
                name,
                age,
                attrs.get("holder", "?"),
            )
            _delete(storage, held_id)
            continue
        time.sleep(poll_s)
    storage.set_study_user_attr(lock_id, "claimed_at", time.time())
    storage.set_study_user_attr(lock_id, "holder", holder)
    try:
        yield
    finally:
        _delete(storage, lock_id)


def _delete(storage, study_id: int) -> None:
    try:
        storage.delete_study(study_id)
    except KeyError:
        pass  # deleted already (by a process that broke it as stale)
