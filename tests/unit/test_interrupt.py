"""Ctrl-C inside `interrupt.guarded()` stops at the next check point, never inside arbitrary code."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from pipeline.config import TrainConfig
from training import interrupt
from training.loops import train
from training.models import MLP


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):  # Python runs the handler between bytecodes, i.e. here
        pass


class _CtrlCInDestructor:
    """Receives SIGINT inside `__del__`, where a raised KeyboardInterrupt would be dropped by Python."""

    def __del__(self):
        _ctrl_c()


def test_first_ctrl_c_is_deferred_to_check_and_not_lost_in_a_destructor():
    with pytest.raises(KeyboardInterrupt):
        with interrupt.guarded():
            obj = _CtrlCInDestructor()
            del obj  # nothing raised here...
            assert interrupt.pending()
            with pytest.raises(KeyboardInterrupt):
                interrupt.check()  # ...but at the check point
            assert interrupt.pending()  # still pending: the block's end raises too
    assert not interrupt.pending()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    interrupt.check()  # nothing pending outside the block


def test_a_block_without_check_points_raises_when_it_ends():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt.guarded():
            _ctrl_c()
            done.append("the rest of the block ran")
    assert done == ["the rest of the block ran"]


def test_second_ctrl_c_raises_at_once():
    with pytest.raises(KeyboardInterrupt):
        with interrupt.guarded():
            _ctrl_c()
            with pytest.raises(KeyboardInterrupt):
                _ctrl_c()  # raised inside the loop, not at a check point


def test_training_stops_at_the_next_step():
    torch.manual_seed(0)
    model = MLP((4,), 3, (8,))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    epochs = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt.guarded():
            _ctrl_c()
            train(model, x, y, TrainConfig(epochs=50, batch_size=8), torch.Generator().manual_seed(0),
                  on_epoch=epochs.append)
    assert epochs == []  # stopped before finishing its first epoch


def test_guarded_leaves_a_callers_own_handler_alone():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with interrupt.guarded():
            _ctrl_c()
            interrupt.check()  # not ours: nothing pending
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)
