"""Permissions of cache content: one cache folder serves several users of a group.

Entries are readable by the group (directories 0750, files 0640; group-writable when the
cache's root is, and set-group-id directories stay so).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def modes_for(parent: Path) -> tuple[int, int]:
    """(directory mode, file mode) for new cache content under `parent`: group-readable;
    group-writable when `parent` is; directories keep a set-group-id `parent`'s bit."""
    try:
        pmode = parent.stat().st_mode
    except OSError:
        pmode = 0
    group_write = 0o020 if pmode & 0o020 else 0
    dir_mode = 0o750 | group_write | (stat.S_ISGID if pmode & stat.S_ISGID else 0)
    return dir_mode, 0o640 | group_write


def chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError as err:  # e.g. a folder owned by another user of the group
        log.debug("cannot chmod %s to %o: %s", path, mode, err)


def make_dir(path: Path) -> None:
    """mkdir -p, giving each folder this creates the cache's group-readable mode."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        chmod(d, modes_for(d.parent)[0])


def share_tree(root: Path, parent: Path) -> None:
    dir_mode, file_mode = modes_for(parent)
    for dirpath, _, filenames in os.walk(root):
        chmod(Path(dirpath), dir_mode)
        for name in filenames:
            chmod(Path(dirpath) / name, file_mode)

