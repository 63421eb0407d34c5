"""The study layer: one Optuna study shared by worker processes and machines, tracked in MLflow.

- `storage`: open the Optuna storage (RDB with heartbeats, or a journal file) and the study.
- `mlflow_runs`: the MLflow parent run of a study and the nested run of each trial.
- `workers`: the ask/run/tell loop, heartbeats, retrying a trial whose worker died or was
  interrupted, and the extra worker processes of `search.n_workers`.

The search stage (`pipeline.stages.search`) keeps what a trial computes (the objective)
and the Pareto outputs; this package knows nothing about compression.
"""
