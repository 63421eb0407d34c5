"""Content-addressed cache of stage artifacts, verified on every read and shared by machines
(STYLE "Stages and caching").

A cache key hashes the stage name, its version number, the stage's declared config fields
and the keys of its upstream artifacts. An entry `<cache_dir>/<stage>/<key>/` is built in a
temporary directory and moved in place with `os.replace`, so an interrupted run never leaves
a partial entry. Beside the artifacts it holds `spec.json` (the spec it was built from) and,
written last, `manifest.json`: the size and SHA-256 of every file.

Reading verifies the entry: the spec matches, every listed file is there with its size and
checksum, and no other file is. An entry that fails (truncated, bit-flipped, edited, a file
deleted or added, or written by a version before checksums) is never used: it is moved aside
to `<stage>/.damaged/<key>.<time>/` (not deleted; `REASON.txt` inside says why), named in a
warning, and rebuilt. Checksums of verified files are remembered per process while the file
is unchanged (`checksums`).

Building is guarded by a lock per entry (`lock`) that works across processes and across hosts
sharing `cache_dir` (NFS included): a process that finds the lock taken waits for the entry
(with a log line every `progress_every_s` seconds) instead of building it too, so a teacher or
reference model is trained once per study, not once per worker or machine.

Entries are readable by the group (directories 0750, files 0640; group-writable when the
cache's root is, and set-group-id directories stay so), so one cache folder serves several
users of a group.

One module per concern: `keys` (cache keys), `checksums` (file and data-file hashes),
`permissions` (group-shared modes), `manifest` (writing and verifying an entry's files),
`lock` (the build lock across processes and hosts), `store` (the `Cache`).
"""

from pipeline.cache.checksums import (
    DATA_INDEX_FILE,
    SETTLE_S,
    data_file_hashes,
    file_checksum,
    forget_checksums,
    sha256_file,
)
from pipeline.cache.keys import cache_key, canonical_json
from pipeline.cache.lock import CacheLockTimeout, read_lock
from pipeline.cache.manifest import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    SPEC_FILE,
    DamagedEntryError,
    check_entry_file,
    verify_entry,
    write_manifest,
)
from pipeline.cache.store import DAMAGED_DIR, REASON_FILE, Cache, CacheEntry, EntryInfo

__all__ = [
    "DAMAGED_DIR",
    "DATA_INDEX_FILE",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "REASON_FILE",
    "SETTLE_S",
    "SPEC_FILE",
    "Cache",
    "CacheEntry",
    "CacheLockTimeout",
    "DamagedEntryError",
    "EntryInfo",
    "cache_key",
    "canonical_json",
    "check_entry_file",
    "data_file_hashes",
    "file_checksum",
    "forget_checksums",
    "read_lock",
    "sha256_file",
    "verify_entry",
    "write_manifest",
]
