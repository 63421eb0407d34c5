"""Shared fixtures: compose the real Hydra config (the same `conf/` the CLI uses) into tmp_path."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import pipeline.config  # noqa: F401 - registers the root schema that conf/config.yaml names first

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# One torch thread per test process: our models are small, and two OpenMP threads competing
# with another process on a 2-core machine spin and run many times slower.
torch.set_num_threads(1)
# A shell that starts pytest in the background without job control (`cmd &`, nohup) hands it
# SIGINT ignored, and the children it spawns inherit that: the Ctrl-C tests (tests/unit/
# test_interrupt.py, the killed-and-resumed study) would then test nothing. Python's own handler
# is what a user's terminal gives the CLI, so the tests run under it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def make_cfg(overrides: list[str], root: Path | None = None) -> DictConfig:
    """The composed config with `overrides`; paths under `root` (never the repository)."""
    extra = [f"paths.root={root}"] if root is not None else []
    # and one thread in the stages run here (the default, auto, would take every core)
    if not any(o.lstrip("+~").startswith("runtime.n_threads") for o in overrides):
        extra.append("runtime.n_threads=1")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, *extra])


@pytest.fixture
def cfg_factory(tmp_path):
    def factory(*overrides: str, root: Path | None = None) -> DictConfig:
        return make_cfg(list(overrides), root or tmp_path)

    return factory
