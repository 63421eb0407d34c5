"""runtime.n_threads: `auto` shares the cores among a search's workers; bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pipeline import threads


def test_auto_divides_the_cores_among_workers():
    assert threads.threads_per_process("auto", 1, cores=8) == 8
    assert threads.threads_per_process("auto", 2, cores=8) == 4
    assert threads.threads_per_process("auto", 3, cores=8) == 2
    assert threads.threads_per_process("auto", 4, cores=2) == 1  # never 0
    assert threads.threads_per_process("AUTO", 2, cores=2) == 1


def test_an_integer_is_per_process_and_null_is_torchs_default():
    assert threads.threads_per_process(3, 2, cores=8) == 3
    assert threads.threads_per_process(None, 2, cores=8) is None


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True])
def test_bad_values_name_the_allowed_ones(bad):
    with pytest.raises(ValueError, match="'auto', a positive integer or null"):
        threads.threads_per_process(bad)


def test_configure_sets_torch_threads_for_one_of_the_search_workers(cfg_factory):
    before = torch.get_num_threads()
    try:
        cfg = cfg_factory("experiment=smoke", "runtime.n_threads=auto", "search.n_workers=2")
        expected = max(1, threads.available_cores() // 2)
        assert threads.configure(cfg) == expected
        assert torch.get_num_threads() == expected
        # other stages have no workers: the process gets every core
        cfg = cfg_factory(
            "experiment=smoke", "stage=teacher", "search.n_workers=2", "runtime.n_threads=auto"
        )
        assert threads.configure(cfg) == threads.available_cores()
        cfg = cfg_factory("experiment=smoke", "runtime.n_threads=1", "search.n_workers=2")
        assert threads.configure(cfg) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_default_is_one_thread_and_auto_is_accepted(cfg_factory):
    runtime = OmegaConf.load(
        Path(__file__).resolve().parents[2] / "conf" / "runtime" / "default.yaml"
    )
    assert runtime.n_threads == 1
    cfg = cfg_factory("experiment=smoke", "runtime.n_threads=auto", "search.n_workers=2")
    from pipeline.validation import validate

    validate(cfg)  # the config validation accepts auto


def test_auto_workers_are_one_per_core_capped_at_the_trials(cfg_factory, monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    cfg = cfg_factory("experiment=smoke", "search.n_workers=auto", "search.n_trials=3")
    assert threads.resolve_workers(cfg) == 3 and cfg.search.n_workers == 3  # the logged config says 3
    cfg = cfg_factory("experiment=smoke", "search.n_workers=auto", "search.n_trials=8")
    assert threads.resolve_workers(cfg) == 4
    assert threads.threads_per_process("auto", cfg.search.n_workers, cores=4) == 1
    cfg = cfg_factory("experiment=smoke", "search.n_workers=2")
    assert threads.resolve_workers(cfg) == 2  # an integer is kept
    cfg = cfg_factory("experiment=smoke", "search.n_workers=many")
    with pytest.raises(ValueError, match="'auto' or a positive integer, got 'many'"):
        threads.resolve_workers(cfg)
