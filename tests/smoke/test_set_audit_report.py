"""stage=report audits a study's Pareto front as one release (issue 27), end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.__main__ import run_stage

pytestmark = pytest.mark.smoke


def test_report_writes_the_set_audit_of_the_pareto_front(cfg_factory):
    # density searched too: three objectives give a Pareto front of several versions
    search = run_stage(cfg_factory("experiment=smoke", "search=with_density", "search.n_trials=4", "seed=2"))
    front = search.pareto
    assert len(front) >= 2, "the test needs a front of several versions"
    report = ["experiment=smoke", "stage=report", f"report.study_name={search.study_name}", "report.stages=[search]",
              "report.audit_reports=false"]
    result = run_stage(cfg_factory(*report))
    table = pd.read_csv(result.out_dir / "study" / search.study_name / "set_audit.csv")
    assert set(table.attack) == {"loss", "lira_offline"}  # the smoke audit's attacks
    for _, t in table.groupby("attack"):
        singles = t[t.kind == "single"]
        assert len(singles) == len(front)
        assert t[t.kind == "best_single"].auc.item() == pytest.approx(singles.auc.max())
        full = t[t.kind == "set"]
        assert set(full.combiner) == {"mean", "max", "learned"} and (full.k == len(front)).all()
        assert np.isfinite(full.auc).all() and ((full.auc >= 0) & (full.auc <= 1)).all()
    md = (result.out_dir / "study" / search.study_name / "set_audit.md").read_text()
    assert "Best single version" in md and "over the best single" in md
    bad = cfg_factory(*report, "report.set_attacks=[rmia]")
    with pytest.raises(ValueError, match="set_attacks names \\['rmia'\\]"):
        run_stage(bad)
