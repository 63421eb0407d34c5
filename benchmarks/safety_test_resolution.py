"""Can SafeCompress's safety test tell its candidates apart? Read from tracked runs.

For every SafeCompress configuration of an experiment (one row per report label), reads each
run's `candidates.csv` and prints, over all mask updates: the median spread of the candidates'
in-loop risks (max - min), the median standard error of one risk (Hanley & McNeil), the share
of updates whose spread exceeds two standard errors (a difference the test can resolve), and
the share of updates where the chosen candidate is not the most accurate one.

    python benchmarks/safety_test_resolution.py --experiment frontier \
        --tracking-uri sqlite:///mlruns/mlflow.db
"""

from __future__ import annotations

import argparse
import os
import tempfile

import pandas as pd

from pipeline.tracking import runs
from training import selection


def resolution(tracking_uri: str, experiment: str, mlflow_experiment: str = "safecompress") -> pd.DataFrame:
    from mlflow import MlflowClient

    frame = runs.load_runs(tracking_uri, experiment, mlflow_experiment)
    client = MlflowClient(tracking_uri)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, sub in frame[frame["method"] == "safecompress"].groupby("label"):
            tables = []
            for rid in sub["run_id"]:
                path = client.download_artifacts(rid, "candidates.csv", os.path.join(tmp, rid))
                tables.append(pd.read_csv(path).assign(run=rid))
            summary = selection.resolution(pd.concat(tables))  # the same summary each run logs
            rows.append({
                "setting": label, "runs": len(sub), "updates": int(summary.get("updates", 0)),
                "median risk spread": summary.get("median_risk_spread"),
                "median risk SE": summary.get("median_risk_se"),
                "updates with spread > 2 SE": summary.get("resolved_fraction"),
                "chosen != most accurate": summary.get("less_accurate_chosen_fraction"),
            })
    return pd.DataFrame(rows)


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="frontier")
    ap.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    args = ap.parse_args()
    table = resolution(args.tracking_uri, args.experiment)
    print(table.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
