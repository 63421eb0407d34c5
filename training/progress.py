"""Progress of long loops, and warnings that would repeat once per trial.

On a terminal a loop draws a tqdm bar. Elsewhere (a log file, a CI job, a pipe) a bar is a
flood of carriage-return updates, so it is off, and a loop that runs longer than
`LOG_EVERY_S` logs its count that often instead; each stage logs one line when it is done.

A warning that every trial of a study would print again (e.g. "the safety test never told
the candidates apart") goes through `warn_once`: inside `collapsed_warnings()` (one study)
it is logged the first time and counted afterwards, and the count is logged at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0
T = TypeVar("T")


def is_terminal() -> bool:
    """Whether stderr (where tqdm draws) is an interactive terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class Progress:
    """A counter over `total` units of `desc`: a tqdm bar on a terminal, log lines elsewhere.

    `enabled=False` (`runtime.progress=false`) shows nothing. `leave` keeps the finished bar
    on the terminal (stage-level loops) or clears it (loops inside a trial).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        enabled: bool = True,
        leave: bool = True,
        log_every: float = LOG_EVERY_S,
        logger: logging.Logger | None = None,
    ):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = 0
        self.enabled = enabled
        self.log_every = log_every
        self.logger = logger or log
        self.t0 = self._last_line = time.perf_counter()
        self._bar = (
            tqdm(total=self.total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
            if enabled and is_terminal()
            else None
        )

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.enabled and now - self._last_line >= self.log_every and self.n < self.total:
            self._last_line = now
            extra = "".join(f" {k}={_fmt(v)}" for k, v in postfix.items())
            self.logger.info(
                "%s: %d/%d %s (%.0f s)%s", self.desc, self.n, self.total, self.unit, now - self.t0, extra
            )

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iterate(items: Iterable[T], total: int, desc: str, unit: str = "it", enabled: bool = True,
            leave: bool = True) -> Iterator[T]:
    """`items`, counted by a `Progress`."""
    with Progress(total, desc, unit, enabled, leave) as bar:
        for item in items:
            yield item
            bar.update(1)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# key -> times warned, while a `collapsed_warnings()` block is active; None outside one
_repeats: dict[str, int] | None = None


def warn_once(logger: logging.Logger, key: str, msg: str, *args: Any) -> None:
    """`logger.warning(msg, *args)`, only the first time per `collapsed_warnings()` block.

    `key` names the warning in the closing count (a short phrase).
    """
    if _repeats is not None:
        _repeats[key] = _repeats.get(key, 0) + 1
        if _repeats[key] > 1:
            return
    logger.warning(msg, *args)


@contextmanager
def collapsed_warnings(what: str = "trials") -> Iterator[dict[str, int]]:
    """Inside: each `warn_once` key is logged once; at the end each repeated one is counted
    ("... 8 times in this study's trials, shown once above"). Yields the counts, filled at the
    end. An inner block joins the outer one.
    """
    global _repeats
    counts: dict[str, int] = {}
    if _repeats is not None:
        yield counts
        return
    _repeats = {}
    try:
        yield counts
    finally:
        repeats, _repeats = _repeats, None
        counts.update(repeats)
        for key, n in repeats.items():
            if n > 1:
                log.warning("%s: %d times in %s (the warning is shown once above)", key, n, what)
