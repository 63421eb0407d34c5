"""Every report and comparison table names the reference models behind its leakage columns (issue 18)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.analysis import compare_tables, frontier
from pipeline.config import CompareConfig
from pipeline.stages import compare, report
from pipeline.tracking import runs


def _run(reference: str | None, **metrics: float) -> pd.Series:
    row = {"params.attack.reference": reference, **metrics} if reference else dict(metrics)
    return pd.Series(row)


@pytest.mark.parametrize(
    "reference, metric, kind",
    [
        ("dense", "audit_lira_offline_auc", "dense"),
        ("matched", "audit_lira_offline_auc", "matched"),  # the same name, other references
        ("both", "audit_lira_offline_auc", "dense"),
        ("both", "audit_lira_offline_matched_auc", "matched"),
        ("matched", "audit_loss_auc", "none"),
        ("matched", "audit_nn_blackbox_balanced_accuracy", "none"),
        ("dense", "audit_rmia_tpr_at_0.1pct_fpr", "dense"),
        ("matched", "canary_shadow_auc", "matched"),
        ("matched", "test_accuracy", ""),
        ("matched", "model_size_bytes", ""),
        (None, "audit_lira_offline_auc", "?"),  # no logged attack.reference: unknown, not guessed
    ],
)
def test_kind_of_one_attacks_metric(reference, metric, kind):
    assert runs.reference_kind(_run(reference), metric) == kind


def test_kind_of_the_strongest_attack_combines_the_logged_attacks():
    both = _run("both", audit_auc=0.8, audit_loss_auc=0.8, audit_lira_offline_auc=0.7,
                audit_lira_offline_matched_auc=0.75, **{"audit_tpr_at_1pct_fpr": 0.05})
    assert runs.reference_kind(both, "audit_auc") == "dense+matched"
    assert runs.reference_kind(both, "audit_tpr_at_1pct_fpr") == "dense+matched"
    assert runs.reference_kind(_run("matched", audit_auc=0.8, audit_loss_auc=0.8,
                                    audit_lira_offline_auc=0.7), "audit_auc") == "matched"
    # only attacks without references (an attack not run leaves NaN: it does not count)
    loss_only = _run("dense", audit_auc=0.8, audit_loss_auc=0.8, audit_lira_offline_auc=float("nan"))
    assert runs.reference_kind(loss_only, "audit_auc") == "none"
    # the search objectives (attack_*) read the select evaluation's attacks
    sel = _run("dense", attack_auc=0.7, attack_loss_auc=0.7, attack_lira_offline_auc=0.6, audit_loss_auc=0.7)
    assert runs.reference_kind(sel, "attack_auc") == "dense"
    # a named primary attack has that attack's kind
    named = pd.Series({"params.attack.reference": "matched", "params.attack.primary": "loss",
                       "audit_auc": 0.8, "audit_lira_offline_auc": 0.9})
    assert runs.reference_kind(named, "audit_auc") == "none"
    assert runs.reference_kind(pd.Series({"audit_auc": 0.8}), "audit_auc") == "?"  # nothing to tell from


def test_report_headers_name_the_kind_and_cells_do_when_runs_differ():
    def frame(refs):
        rows = []
        for label, reference in refs.items():
            for seed in (0, 1):
                rows.append({"run_id": f"{label}{seed}", "dataset": "p", "target_density": 0.05, "label": label,
                             "method": label, "variant": "", "seed": seed, "params.attack.reference": reference,
                             "test_accuracy": 0.5, "audit_auc": 0.7, "audit_loss_auc": 0.7,
                             "audit_lira_offline_auc": 0.65, "model_size_bytes": 100.0})
        return pd.DataFrame(rows)

    same = report.wide_table(report.summarize(frame({"dst": "matched", "safecompress": "matched"})), "p")
    assert "d=0.05 AUC [refs: matched]" in same.columns
    assert "d=0.05 LiRA AUC [refs: matched]" in same.columns
    assert "d=0.05 acc" in same.columns  # accuracy is no leakage column
    mixed = report.wide_table(report.summarize(frame({"dst": "dense", "safecompress": "matched"})), "p")
    assert "d=0.05 AUC [refs: per cell]" in mixed.columns
    assert mixed.loc["dst", "d=0.05 AUC [refs: per cell]"].endswith("[dense]")
    assert mixed.loc["safecompress", "d=0.05 AUC [refs: per cell]"].endswith("[matched]")
    assert runs.REFERENCE_KINDS_NOTE in report.to_markdown(report.summarize(frame({"dst": "dense"})), "x")


def test_paired_rows_name_both_sides_kinds():
    table = compare_tables.format_paired(pd.DataFrame([
        {"dataset": "p", "density": 0.05, "metric": "audit_auc", "n_pairs": 2, "mean_a": 0.7, "mean_b": 0.6,
         "diff": 0.1, "ci_low_seeds": 0.05, "ci_high_seeds": 0.15, "ci_low_examples": np.nan,
         "ci_high_examples": np.nan, "excludes_zero": True, "refs_a": "matched", "refs_b": "matched"},
        {"dataset": "p", "density": 0.05, "metric": "audit_lira_offline_auc", "n_pairs": 2, "mean_a": 0.7,
         "mean_b": 0.6, "diff": 0.1, "ci_low_seeds": 0.05, "ci_high_seeds": 0.15, "ci_low_examples": np.nan,
         "ci_high_examples": np.nan, "excludes_zero": True, "refs_a": "matched", "refs_b": "dense"},
    ]))
    assert list(table["refs"]) == ["matched", "a: matched / b: dense"]


def test_frontier_table_says_which_points_form_the_frontier_and_their_references(tmp_path):
    rows = []
    for seed in (0, 1):
        for label, method, ep, acc, auc in (
            ("dst [ep=10]", "dst", 10, 0.40, 0.60), ("dst [ep=20]", "dst", 20, 0.50, 0.75 - 0.1 * seed),
            ("dst", "dst", 30, 0.60, 0.70), ("safecompress (bmia)", "safecompress", 30, 0.55, 0.72),
        ):
            rows.append(dict(run_id=f"{label}-{seed}", dataset="p", target_density=0.05, seed=seed, label=label,
                             method=method, variant="", epochs=float(ep), test_accuracy=acc, audit_auc=auc,
                             leakage_refs="matched"))
    frame = pd.DataFrame(rows)
    # seed 0: dst [ep=20] (0.50, 0.75) lies above the envelope (dst at 0.60 has 0.70); seed 1 (0.50, 0.65) forms it
    front = frame[frame["method"] == "dst"]
    forming = frontier.forms_envelope(front)
    assert dict(zip(front["run_id"], forming)) == {
        "dst [ep=10]-0": True, "dst [ep=20]-0": False, "dst-0": True,
        "dst [ep=10]-1": True, "dst [ep=20]-1": True, "dst-1": True,
    }
    table, _ = compare.frontier_table(frame, CompareConfig(a="safecompress", n_bootstrap=200), tmp_path)
    t = compare_tables.format_frontier(table).set_index("method")
    assert t.loc["dst [ep=20] *", "forms frontier"] == "1/2"
    assert t.loc["dst [ep=10] *", "forms frontier"] == "2/2"
    assert t.loc["safecompress (bmia)", "forms frontier"] == ""  # not a member
    assert set(t["refs"]) == {"matched"}
