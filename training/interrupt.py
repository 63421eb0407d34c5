"""Ctrl-C that stops a run at a safe point, and is never lost.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread is.
Two places made that go wrong in a study (both seen in the kill-and-resume test):
- inside a weak-reference callback or `__del__` run by the garbage collector, Python
  prints "Exception ignored in ..." and carries on: the interrupt was lost and the
  study went on running trials;
- inside an MLflow or Optuna database call, the transaction was abandoned with its
  SQLite write lock held, and the clean-up that marks the trial failed then waited on
  that lock for ever.

Within `guarded()` the first Ctrl-C only records the request (and says so on stderr);
`check()`, called by every training step and between trials, raises KeyboardInterrupt
there, outside any database call. A stage without check points stops when it ends.
A second Ctrl-C raises at once, wherever the program is.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_pending = False

_NOTICE = b"\nCtrl-C: stopping at the next safe point (press Ctrl-C again to stop at once)\n"


def _on_sigint(signum, frame) -> None:  # noqa: ARG001 - the signal module's signature
    global _pending
    if _pending:
        raise KeyboardInterrupt  # asked twice: stop now
    _pending = True
    try:
        os.write(2, _NOTICE)  # not print/logging: their locks and buffers are not reentrant
    except OSError:
        pass


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed inside `guarded()`."""
    if _pending:
        raise KeyboardInterrupt


def pending() -> bool:
    return _pending


@contextmanager
def guarded() -> Iterator[None]:
    """Defer a Ctrl-C inside this block to the next `check()` (or to the block's end).

    Only the main thread can install signal handlers; elsewhere, and where SIGINT is not
    handled by Python's default handler (ignored, or a caller's own handler, or an outer
    `guarded()`), this does nothing.
    """
    global _pending
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    _pending = False
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        asked, _pending = _pending, False
    if asked:
        raise KeyboardInterrupt  # pressed during a stretch with no check point
