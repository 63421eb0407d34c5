"""Progress off a terminal is a few log lines, not carriage-return updates; a repeated
warning is logged once per block with its count."""

from __future__ import annotations

import io
import logging

import pytest

from training import progress


def test_off_a_terminal_no_bar_is_drawn_and_long_loops_log_a_count(monkeypatch, caplog):
    err = io.StringIO()  # not a tty
    monkeypatch.setattr("sys.stderr", err)
    caplog.set_level(logging.INFO, logger="training.progress")
    bar = progress.Progress(100, "shadows[dense]", unit="epoch", log_every=0.0)
    for _ in range(100):
        bar.update(1, loss=0.5)
    bar.close()
    assert "\r" not in err.getvalue() and err.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert lines and lines[0].startswith("shadows[dense]: 1/100 epoch")
    assert "loss=0.5" in lines[0]
    assert len(lines) == 99  # the last unit is the stage's own "done" line, not a count


def test_short_loops_log_nothing_and_disabled_progress_is_silent(monkeypatch, caplog):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="training.progress")
    assert list(progress.iterate(range(5), 5, "attack")) == [0, 1, 2, 3, 4]  # default: every 30 s
    with progress.Progress(3, "teacher", enabled=False, log_every=0.0) as bar:
        for _ in range(3):
            bar.update(1)
    assert not caplog.records


def test_on_a_terminal_a_bar_is_drawn(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr("sys.stderr", err)
    with progress.Progress(4, "teacher", unit="epoch") as bar:
        for _ in range(4):
            bar.update(1)
    assert "teacher" in err.getvalue() and "4/4" in err.getvalue()


def test_a_repeated_warning_is_logged_once_per_block_with_its_count(caplog):
    caplog.set_level(logging.WARNING)
    log = logging.getLogger("pipeline.stages.compress")
    with progress.collapsed_warnings("this study's trials") as counts:
        for trial in range(8):
            progress.warn_once(log, "safety test never told the candidates apart", "trial %d: %s", trial, "x")
        progress.warn_once(log, "other", "once only")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:2] == ["trial 0: x", "once only"]
    assert messages[2] == (
        "safety test never told the candidates apart: 8 times in this study's trials (the warning is shown once above)"
    )
    assert len(messages) == 3 and counts == {"safety test never told the candidates apart": 8, "other": 1}
    caplog.clear()
    progress.warn_once(log, "other", "outside a block")  # every time outside a block
    progress.warn_once(log, "other", "outside a block")
    assert len(caplog.records) == 2


@pytest.mark.parametrize("leave", [True, False])
def test_close_is_idempotent(monkeypatch, leave):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    bar = progress.Progress(1, "x", leave=leave)
    bar.close()
    bar.close()
