"""The study layer: one Optuna study shared by worker processes and machines, tracked in MLflow.

- `storage`: open the Optuna storage (RDB with heartbeats, or a journal file) and the study.
- `mlflow_runs`: the MLflow parent run of a study and the nested run of each trial.
- `workers`: the ask/run/tell loop, heartbeats, retrying a trial whose worker died or was
  interrupted (`requeue`), and the extra worker processes of `search.n_workers`.
- `front`: the study's outputs once its trials are done: trials.csv, the Pareto front, its plot.

The search stage (`pipeline.stages.search`) keeps the study session and what a trial computes
(the objective); this package knows nothing about compression.
"""
