"""The `cache` command: list, verify and clear the entries of `paths.cache_dir`.

    python -m pipeline stage=cache                                   # list (sizes checked)
    python -m pipeline stage=cache cache.action=verify               # checksums; damaged moved aside
    python -m pipeline stage=cache cache.action=clear cache.damaged=true
    python -m pipeline stage=cache cache.action=clear cache.stages=[teacher] cache.keys=[3f2a]

A damaged entry is never used by a stage (it is moved aside and rebuilt when read, see
`pipeline.cache`); this command finds damage before a run and removes what is no longer
wanted. Entries another process is building are listed as such and never removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.cache import EntryInfo
from pipeline.config import CacheCommandConfig, to_schema
from pipeline.context import RunContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheReport:
    action: str
    entries: list[EntryInfo]  # the selected entries, with their status after the action
    removed: list[EntryInfo]

    @property
    def n_damaged(self) -> int:
        return sum(e.is_damaged for e in self.entries)


def select(entries: list[EntryInfo], c: CacheCommandConfig) -> list[EntryInfo]:
    out = []
    for e in entries:
        if c.stages and e.stage not in c.stages:
            continue
        if c.keys and not any(e.key.startswith(str(k)) for k in c.keys):
            continue
        if c.damaged and not e.is_damaged:
            continue
        out.append(e)
    return out


def run(ctx: RunContext) -> CacheReport:
    c = to_schema(CacheCommandConfig, ctx.cfg.cache)
    cache = ctx.cache
    if c.action == "verify":
        entries = select(cache.verify_all(), c)
        return CacheReport("verify", entries, [])
    entries = select(cache.entries(checksums=False), c)
    if c.action == "list":
        return CacheReport("list", entries, [])
    # clear (validate() refused a clear without a selection)
    removed = [e for e in entries if cache.remove(e)]
    for e in removed:
        log.info("removed cache entry %s/%s (%s)", e.stage, e.key, e.path)
    return CacheReport("clear", entries, removed)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


def human_age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{seconds / span:.1f} {unit}"
    return f"{seconds:.0f} s"


def format_report(report: CacheReport, root: str) -> str:
    lines = [f"cache {root}: {len(report.entries)} entr{'y' if len(report.entries) == 1 else 'ies'}"]
    if report.entries:
        width = max(len(e.stage) for e in report.entries)
        lines.append(f"{'stage':<{width}}  {'key':<20}  {'size':>10}  {'age':>8}  status")
        for e in report.entries:
            lines.append(
                f"{e.stage:<{width}}  {e.key:<20}  {human_size(e.size_bytes):>10}  {human_age(e.age_s):>8}  {e.status}"
            )
    if report.action == "verify":
        lines.append(
            f"verified {len(report.entries)}: {len(report.entries) - report.n_damaged} ok, "
            f"{report.n_damaged} damaged (moved aside: rebuilt when next needed)"
        )
    if report.action == "clear":
        total = sum(e.size_bytes for e in report.removed)
        lines.append(f"removed {len(report.removed)} of {len(report.entries)} selected ({human_size(total)})")
    return "\n".join(lines)
