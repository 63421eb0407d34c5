"""Torch threads per process from `runtime.n_threads`, shared out among search workers.

`runtime.n_threads` is `auto` (the cores this process may run on, divided among the
`search.n_workers` processes of a search, at least 1 each), a positive integer (threads per
process, whatever the number of workers), or null (torch's own default). Like everything in
`runtime`, the thread count never enters a cache key; a seed gives identical results for a
given thread count (a different count may change float summation order, so the last bits).
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

AUTO = "auto"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM allocation), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def threads_per_process(n_threads: Any, n_workers: int = 1, cores: int | None = None) -> int | None:
    """Torch threads for one of `n_workers` processes; None leaves torch's default.

    Raises ValueError naming the allowed values for anything but `auto`, a positive integer
    or null.
    """
    if n_threads is None:
        return None
    if isinstance(n_threads, str) and n_threads.strip().lower() == AUTO:
        return max(1, (cores or available_cores()) // max(1, int(n_workers)))
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(
            f"runtime.n_threads must be 'auto', a positive integer or null, got {n_threads!r}"
        )
    return n_threads


def resolve_workers(cfg) -> int:
    """`search.n_workers=auto`: one search worker per core this process may use, at most
    `search.n_trials`; replaced in `cfg` by the number (so the logged config says it). An
    integer is kept. Returns the number."""
    value = cfg.search.get("n_workers", 1)
    if isinstance(value, str) and value.strip().lower() == AUTO:
        from omegaconf import open_dict

        n = max(1, min(available_cores(), int(cfg.search.n_trials)))
        with open_dict(cfg):
            cfg.search.n_workers = n
        log.info("search.n_workers=auto: %d worker process(es) on %d core(s)", n, available_cores())
        return n
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"search.n_workers must be 'auto' or a positive integer, got {value!r}")
    return value


def workers_sharing_cores(cfg) -> int:
    """How many processes of this command share the machine's cores: the search's workers."""
    if str(cfg.get("stage", "")) != "search":
        return 1
    return int(cfg.search.get("n_workers", 1) or 1)


def configure(cfg) -> int | None:
    """Set torch's thread count for this process from `cfg.runtime.n_threads`; returns it."""
    n = threads_per_process(cfg.runtime.get("n_threads"), workers_sharing_cores(cfg))
    if n is not None:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        log.debug("torch threads per process: %d", n)
    return n
