"""Passwords in storage and tracking URLs never reach logs, MLflow or a logged config.yaml, and
a config logged with a password read from the environment still re-runs."""

from __future__ import annotations

import logging
import sys

import pytest
from omegaconf import OmegaConf

from pipeline.study import storage
from pipeline.tracking import masking
from pipeline.tracking import plumbing as tracking

SECRET = "s3cr3t-Pw"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"postgresql://alice:{SECRET}@db:5432/optuna", "postgresql://alice:***@db:5432/optuna"),
        (f"postgresql+psycopg://alice:{SECRET}@db/optuna", "postgresql+psycopg://alice:***@db/optuna"),
        (f"cannot open 'mysql://u:{SECRET}@h/db': refused", "cannot open 'mysql://u:***@h/db': refused"),
        (f"http://bob:{SECRET}@mlflow:5000", "http://bob:***@mlflow:5000"),
        (f"postgresql://h/db?user=u&password={SECRET}&x=1", "postgresql://h/db?user=u&password=***&x=1"),
        (f"host=h password={SECRET} dbname=x", "host=h password=*** dbname=x"),
        # no secret: unchanged
        ("postgresql://alice@db/optuna", "postgresql://alice@db/optuna"),
        ("http://127.0.0.1:5000/api/2.0@x", "http://127.0.0.1:5000/api/2.0@x"),
        ("sqlite:////tmp/mlruns/optuna.db", "sqlite:////tmp/mlruns/optuna.db"),
        ("postgresql://u:${oc.env:PGPASSWORD}@h/db", "postgresql://u:${oc.env:PGPASSWORD}@h/db"),
    ],
)
def test_mask_secrets(text, masked):
    assert masking.mask_secrets(text) == masked


def _cfg(cfg_factory, storage_url: str):
    return cfg_factory("experiment=smoke", f"search.storage={storage_url}", "tracking.uri=http://127.0.0.1:1")


def test_password_from_the_environment_stays_an_interpolation(cfg_factory, monkeypatch):
    monkeypatch.setenv("SC_TEST_PGPASSWORD", SECRET)
    cfg = _cfg(cfg_factory, "'postgresql://alice:${oc.env:SC_TEST_PGPASSWORD}@db/optuna'")
    assert cfg.search.storage == f"postgresql://alice:{SECRET}@db/optuna"  # what the run uses
    logged = masking.config_yaml(cfg)
    assert SECRET not in logged
    assert "postgresql://alice:${oc.env:SC_TEST_PGPASSWORD}@db/optuna" in logged
    # the logged file re-runs: the password comes back from the environment
    assert OmegaConf.create(logged).search.storage == f"postgresql://alice:{SECRET}@db/optuna"
    # worker processes get the real value to connect with
    assert OmegaConf.create(masking.config_yaml(cfg, masked=False)).search.storage == cfg.search.storage


def test_a_literal_password_is_masked_in_the_logged_config(cfg_factory):
    cfg = _cfg(cfg_factory, f"postgresql://alice:{SECRET}@db/optuna")
    logged = masking.config_yaml(cfg)
    assert SECRET not in logged
    assert "postgresql://alice:***@db/optuna" in logged
    assert SECRET in masking.config_yaml(cfg, masked=False)


def test_log_records_are_masked(capsys):
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        masking.mask_logs()
        masking.mask_logs()  # idempotent
        assert sum(isinstance(f, masking.SecretMaskingFilter) for f in handler.filters) == 1
        logging.getLogger("pipeline.some.module").warning("storage %s down", f"postgresql://a:{SECRET}@h/db")
    finally:
        root.removeHandler(handler)
    err = capsys.readouterr().err
    assert "storage postgresql://a:***@h/db down" in err and SECRET not in err


def test_params_and_tags_are_masked_in_mlflow(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    exp_id = mlflow.create_experiment("secrets", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp_id) as run:
        tracking.log_params({"search.storage": f"postgresql://a:{SECRET}@h/db"})
        tracking.set_tags({"storage": f"postgresql://a:{SECRET}@h/db"})
    data = mlflow.MlflowClient().get_run(run.info.run_id).data
    assert data.params["search.storage"] == "postgresql://a:***@h/db"
    assert data.tags["storage"] == "postgresql://a:***@h/db"
    mlflow.set_tracking_uri(None)


def test_a_missing_driver_is_named_with_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` fails as if not installed
    with pytest.raises(ValueError) as err:
        storage.open_storage(f"postgresql://alice:{SECRET}@127.0.0.1:1/optuna")
    text = str(err.value)
    assert "'psycopg'" in text and "postgres extra" in text and ".[postgres]" in text
    assert "postgresql://alice:***@127.0.0.1:1/optuna" in text and SECRET not in text


def test_a_refused_connection_names_no_password():
    pytest.importorskip("psycopg")
    with pytest.raises(ValueError) as err:
        storage.open_storage(f"postgresql://alice:{SECRET}@127.0.0.1:1/optuna")
    text = str(err.value)
    assert "cannot open Optuna storage 'postgresql://alice:***@127.0.0.1:1/optuna'" in text
    assert SECRET not in text
    assert err.value.__suppress_context__  # the driver's own error (it may quote the URL) is not chained
