"""Rows of issue 15's table that can be known from the config: refused before any training, and
the refused command leaves nothing behind (no cache entry, no study, no tracking store or run).
An error after the parent run started tags it with the error."""

from __future__ import annotations

import pytest
from leftovers import assert_nothing_left

from pipeline.__main__ import run_stage


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["shadows.n_models=0"], r"shadows.n_models=0 but attack.audit runs \['lira_offline'\]"),
        (
            ["search.space=[{key: compress.density_schedule.kind, type: categorical, choices: [linear, zigzag]}]"],
            r"compress.density_schedule.kind: the value 'zigzag' would fail .* valid: \[",
        ),
        (["search.space=[{key: compress.density, type: float, low: 0.1, high: 1.5}]"], r"compress.density: the value 1.5"),
        (["search.space=[{key: compress.no_such_key, type: float, low: 0.1, high: 0.5}]"], "does not exist"),
        (["search.study_name=\"it's\""], r"search.study_name=\"it's\" cannot be used: .*MLflow run filters"),
        (["experiment_name='a\"b'"], "experiment_name="),
        (["attack.n_audit=100000"], r"attack.n_audit: n_audit=100000 must be in \[1, "),
    ],
    ids=["no-references", "bad-categorical", "bad-range", "unknown-key", "quote-in-study", "quote-in-experiment", "n_audit"],
)
def test_refused_before_any_work(cfg_factory, tmp_path, overrides, words):
    cfg = cfg_factory("experiment=smoke", "stage=search", *overrides)
    with pytest.raises(ValueError, match=words):
        run_stage(cfg)
    assert_nothing_left(tmp_path)


def test_no_references_needed_when_no_reference_attack(cfg_factory):
    from pipeline.validation import validate

    validate(cfg_factory("experiment=smoke", "stage=search", "shadows.n_models=0", "~attack.audit.lira_offline"))


@pytest.mark.smoke
@pytest.mark.parametrize("stage", ["teacher", "search"])
def test_error_after_the_run_started_is_tagged(cfg_factory, stage):
    import mlflow

    cfg = cfg_factory("experiment=smoke", f"stage={stage}", "train.optimizer=adam", "train.lr=1e9")
    with pytest.raises(Exception, match="diverged|training loss is"):
        run_stage(cfg)
    mlflow.set_tracking_uri(str(cfg.tracking.uri))
    runs = mlflow.search_runs(experiment_names=[str(cfg.tracking.experiment)])
    assert len(runs) == 1 and runs["status"][0] == "FAILED"
    assert "diverged" in runs["tags.error"][0] or "training loss is" in runs["tags.error"][0]
