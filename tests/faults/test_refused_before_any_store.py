"""Issue 26's value rules: everything checkable from the config is refused by the entry point's
validation pass, before any Optuna study, MLflow run or cache entry exists (docs/manual.md "When
something breaks"); a study that fails once it runs ends its parent run FAILED with the error."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from leftovers import assert_nothing_created
from omegaconf import OmegaConf, open_dict

from pipeline.__main__ import run_stage
from pipeline.validation import validate, validate_numbers


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["tracking.call_timeout_s=0"], r"tracking.call_timeout_s must be >= .* got 0"),
        (["model.hidden_sizes=[0]"], r"cannot be built .*hidden sizes must be >= 1, got \[0\]"),
        (["train.lr=inf"], r"train.lr=inf: every number in the config must be finite"),
        (["compress.density=nan"], r"compress.density=nan: every number"),
        (["search.heartbeat_interval=0"], r"search.heartbeat_interval must be >= 1 .* got 0"),
        (
            ["search.space=[{key: compress.n_candidates, type: int, low: 1.5, high: 3}]"],
            r"'compress.n_candidates': an int range needs whole-number bounds, got low=1.5",
        ),
        (["search.on_mismatch=merge"], r"unknown search.on_mismatch 'merge'; valid: \['refuse', 'new'\]"),
    ],
    ids=["call-timeout-0", "hidden-0", "lr-inf", "density-nan", "heartbeat-0", "int-space-1.5", "on-mismatch"],
)
def test_search_refused_before_any_study_or_run(cfg_factory, tmp_path, overrides, words):
    cfg = cfg_factory("experiment=smoke", "stage=search", *overrides)
    with pytest.raises(ValueError, match=words):
        run_stage(cfg)
    assert_nothing_created(tmp_path)


def test_a_function_as_model_target_is_refused_without_calling_it(cfg_factory, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append(a) or 0)
    cfg = cfg_factory("experiment=smoke", "stage=search", "model._target_=os.system")
    with pytest.raises(ValueError, match=r"model._target_='os.system' is a function, not a torch.nn.Module subclass"):
        run_stage(cfg)
    assert calls == []
    assert_nothing_created(tmp_path)


def test_a_class_that_is_no_module_is_refused(cfg_factory):
    with pytest.raises(ValueError, match=r"'collections.OrderedDict' is a class that is not a torch.nn.Module subclass"):
        validate(cfg_factory("experiment=smoke", "model._target_=collections.OrderedDict"))


def _float_keys(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _float_keys(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(node, float):
        yield prefix


def test_inf_and_nan_are_refused_for_every_float(cfg_factory):
    """`validate` runs `validate_numbers` first (the run_stage cases above show it for train.lr)."""
    base = cfg_factory("experiment=smoke", "stage=search")
    keys = sorted(_float_keys(OmegaConf.to_container(base, resolve=True)))
    assert {"train.lr", "compress.density", "compress.dp.epsilon", "tracking.call_timeout_s"} <= set(keys)
    for key in keys:
        for bad in (math.inf, -math.inf, math.nan):
            cfg = base.copy()
            with open_dict(cfg):
                OmegaConf.update(cfg, key, bad, merge=False)
            with pytest.raises(ValueError, match=rf"{key}=(-?inf|nan): every number"):
                validate_numbers(cfg)


def test_unknown_cache_stage_is_refused_and_nothing_removed(cfg_factory, tmp_path):
    entry = tmp_path / ".cache" / "teacher" / "abc"
    entry.mkdir(parents=True)
    cfg = cfg_factory("stage=cache", "cache.action=clear", "cache.stages=[nosuch]")
    with pytest.raises(ValueError, match=r"unknown cache.stages entry 'nosuch'; valid: \['teacher', 'shadow'"):
        run_stage(cfg)
    assert entry.exists()


def test_every_cache_stage_name_is_listed():
    """`cache.stages` takes CACHE_STAGES: every stage that writes entries must be in it."""
    import ast

    from pipeline.config import CACHE_STAGES

    names = set()
    for path in (Path(__file__).resolve().parents[2] / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                    in ("get_or_create", "cache_key") and node.args and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
    assert names - {"data"} == set(CACHE_STAGES)


@pytest.mark.smoke
def test_a_failed_study_ends_its_parent_run_failed_with_the_error(cfg_factory):
    import mlflow

    cfg = cfg_factory("experiment=smoke", "stage=search", "compress=dpsgd", "compress.dp.lr=1e9")
    with pytest.raises(RuntimeError, match="trials failed in a row"):
        run_stage(cfg)
    client = mlflow.MlflowClient(tracking_uri=str(cfg.tracking.uri))
    exp = client.get_experiment_by_name(str(cfg.tracking.experiment))
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    assert parents[0].info.status == "FAILED"
    assert "trials failed in a row" in parents[0].data.tags["error"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert children and all(r.info.status == "FAILED" for r in children)
