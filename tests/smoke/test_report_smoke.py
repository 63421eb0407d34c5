"""End to end: real attack-stage runs (experiment=smoke) -> report table -> compare, all in process."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.__main__ import run_stage
from pipeline.tracking import runs

pytestmark = pytest.mark.smoke


def test_attack_runs_to_report_and_compare(cfg_factory):
    for method in ("dst", "dense"):  # dense at the smoke density 0.2, so the two pair up
        for seed in (0, 1):
            run_stage(cfg_factory("experiment=smoke", "stage=attack", f"compress={method}",
                                  "compress.density=0.2", f"seed={seed}"))
    cfg = cfg_factory("experiment=smoke", "stage=report")
    result = run_stage(cfg)
    s = result.summary
    assert set(s["label"]) == {"dst", "dense"}
    assert (s["test_accuracy_n"] == 2).all()
    # every cell equals the tracked numbers
    frame = runs.load_runs(str(cfg.tracking.uri), "smoke")
    for label, g in frame.groupby("label"):
        row = s[s["label"] == label].iloc[0]
        assert row["audit_auc_mean"] == pytest.approx(g["audit_auc"].mean())
        assert row["model_size_bytes_std"] == pytest.approx(g["model_size_bytes"].std(ddof=1), nan_ok=True)
    # each model got its audit report, logged to its own run
    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    assert len(result.audit_reports) == 4
    for run_id in frame["run_id"]:
        assert "audit_report/audit_report.md" in {a.path for a in client.list_artifacts(run_id, "audit_report")}
    assert "## Attacks" in result.audit_reports[0].read_text()

    cmp = run_stage(cfg_factory("experiment=smoke", "stage=compare", "compare.a=dense",
                                "compare.b=dst", "compare.n_bootstrap=200",
                                "compare.metrics=[test_accuracy,audit_auc,audit_loss_auc]"))
    p = cmp.paired.set_index("metric")
    d = [frame[(frame["method"] == "dense") & (frame["seed"] == s)]["audit_loss_auc"].item()
         - frame[(frame["method"] == "dst") & (frame["seed"] == s)]["audit_loss_auc"].item() for s in (0, 1)]
    assert p.loc["audit_loss_auc", "diff"] == pytest.approx(np.mean(d))
    # scores.npz was read: the example-level interval exists and contains the mean difference
    assert p.loc["audit_loss_auc", "ci_low_examples"] <= np.mean(d) <= p.loc["audit_loss_auc", "ci_high_examples"]
