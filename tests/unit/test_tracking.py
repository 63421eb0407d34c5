"""The MLflow experiment is made as a model-training experiment (MLflow 3's experiment kind),
and one made before that gets the kind without losing a user's own choice."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from pipeline.context import RunContext
from pipeline.tracking import plumbing as tracking

KIND = "mlflow.experimentKind"


def test_a_new_experiment_is_a_model_training_experiment(cfg_factory):
    cfg = cfg_factory("experiment=smoke")
    exp_id = tracking.setup(RunContext.build(cfg).tracking)
    exp = MlflowClient(str(cfg.tracking.uri)).get_experiment(exp_id)
    assert exp.tags[KIND] == "custom_model_development"
    assert tracking.ui_url(exp_id).endswith(f"#/experiments/{exp_id}/runs?workflowType=machine_learning")


def test_an_older_experiment_gets_the_kind_and_a_chosen_kind_stays(cfg_factory, tmp_path):
    cfg = cfg_factory("experiment=smoke")
    uri = str(cfg.tracking.uri)
    (tmp_path / "mlruns").mkdir(exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    old = client.create_experiment(str(cfg.tracking.experiment))
    assert KIND not in client.get_experiment(old).tags
    assert tracking.setup(RunContext.build(cfg).tracking) == old
    assert client.get_experiment(old).tags[KIND] == "custom_model_development"

    client.set_experiment_tag(old, KIND, "genai_development")  # the user's own choice in the UI
    tracking.setup(RunContext.build(cfg).tracking)
    assert client.get_experiment(old).tags[KIND] == "genai_development"


def test_summary_metrics_lead_and_are_logged_once(cfg_factory):
    cfg = cfg_factory("experiment=smoke")
    exp_id = tracking.setup(RunContext.build(cfg).tracking)
    with mlflow.start_run(experiment_id=exp_id) as run:
        with tracking.summary_first() as summary:
            tracking.log_metrics({"loss": 1.0}, step=0, prefix="compress_")
            tracking.log_metrics({"attack_auc": 0.6, "audit_auc": 0.55})
            summary.update({"accuracy": 0.9, "attack_auc": 0.6})
    client = MlflowClient(str(cfg.tracking.uri))
    metrics = client.get_run(run.info.run_id).data.metrics
    assert list(metrics)[:2] == ["accuracy", "attack_auc"]
    assert set(metrics) == {"accuracy", "attack_auc", "audit_auc", "compress_loss"}
    assert len(client.get_metric_history(run.info.run_id, "attack_auc")) == 1
