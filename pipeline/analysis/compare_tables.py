"""The compare stage's tables as printed: paired differences, the frontier's excess, a study
against the frontier (markdown cells from the frames `pipeline.stages.compare` computes)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.analysis.tables import finite, markdown
from pipeline.tracking import runs


def format_study(t: pd.DataFrame) -> str:
    cells = pd.DataFrame({
        "trial": t["trial"], "seed": t["seed"], "test acc": t["test_accuracy"].map("{:.4f}".format),
        "audit AUC": t["audit_auc"].map("{:.4f}".format),
        "frontier AUC there": t["frontier_auc"].map(lambda v: f"{v:.4f}" if finite(v) else "n/a"),
        "excess AUC": t["excess_auc"].map(lambda v: f"{v:+.4f}" if finite(v) else "n/a (above range)"),
        "refs (trial / frontier)": t["refs"] if "refs" in t else "",
    })
    hv = t.drop_duplicates(["dataset", "density", "seed"])
    lines = [f"- {r.dataset} @ {r.density:g}, seed {r.seed}: hypervolume (reference accuracy 0, AUC 1) "
             f"study {r.hv_study:.4f}, frontier {r.hv_frontier:.4f}, union {r.hv_union:.4f} "
             f"(the study adds {r.hv_union - r.hv_frontier:+.4f} to the frontier's staircase; the excess column, "
             f"against the interpolated frontier, is the stricter test)" for r in hv.itertuples()]
    return markdown(cells) + "\n\n" + "\n".join(lines)


def _ci(lo: Any, hi: Any) -> str:
    return f"[{lo:+.4f}, {hi:+.4f}]" if finite(lo) and finite(hi) else "n/a"


def format_paired(p: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in p.iterrows():
        if not r.get("n_pairs"):
            rows.append({"dataset": r["dataset"], "density": f"{r['density']:g}", "metric": r["metric"],
                         "pairs": 0, "a": "n/a", "b": "n/a", "a − b": "n/a", "CI seeds": "n/a",
                         "CI seeds+examples": "n/a", "excludes 0": "", "refs": "—"})
            continue
        rows.append({
            "dataset": r["dataset"], "density": f"{r['density']:g}", "metric": r["metric"],
            "pairs": int(r["n_pairs"]), "a": f"{r['mean_a']:.4f}", "b": f"{r['mean_b']:.4f}",
            "a − b": f"{r['diff']:+.4f}", "CI seeds": _ci(r["ci_low_seeds"], r["ci_high_seeds"]),
            "CI seeds+examples": _ci(r["ci_low_examples"], r["ci_high_examples"]),
            "excludes 0": "yes" if r["excludes_zero"] else "no",
            "refs": _refs_pair(r.get("refs_a", ""), r.get("refs_b", "")),
        })
    return pd.DataFrame(rows)


def _refs_pair(a: Any, b: Any) -> str:
    """The reference kind of a paired row: one kind when a and b share it, else 'a: x / b: y'."""
    a, b = ("" if not isinstance(v, str) else v for v in (a, b))
    if a == b:
        return a or "—"
    return f"a: {a or '—'} / b: {b or '—'}"


def format_frontier(f: pd.DataFrame) -> pd.DataFrame:
    def mci(m, lo, hi):
        return f"{m:.4f} [{lo:.4f}, {hi:.4f}]" if finite(m) and finite(lo) else ("n/a" if not finite(m) else f"{m:.4f}")

    rows = []
    for _, r in f.iterrows():
        rows.append({
            "dataset": r["dataset"], "density": f"{r['density']:g}",
            "method": r["label"] + (" *" if r["on_frontier"] else ""), "seeds": int(r["n_seeds"]),
            "test acc": mci(r["test_accuracy"], r["test_accuracy_ci_low"], r["test_accuracy_ci_high"]),
            "audit AUC": mci(r["audit_auc"], r["audit_auc_ci_low"], r["audit_auc_ci_high"]),
            "LiRA TPR@1%": f"{r['lira_tpr_at_1pct_fpr']:.4f}" if finite(r["lira_tpr_at_1pct_fpr"]) else "n/a",
            "canary TPR@1%": f"{r['canary_tpr_at_1pct_fpr']:.4f}" if finite(r["canary_tpr_at_1pct_fpr"]) else "n/a",
            "excess AUC": (f"{r['excess_auc']:+.4f} {_ci(r['excess_auc_ci_low'], r['excess_auc_ci_high'])}"
                           if finite(r["excess_auc"]) else "n/a"),
            "above range": int(r["n_above_frontier_range"]),
            "forms frontier": f"{int(r['n_forming'])}/{int(r['n_seeds'])}" if r["on_frontier"] else "",
            "ref. data": f"{r.get('defender_reference_size', 0.0):,.0f}",
            "refs": r.get("refs", "") or "—",
        })
    return pd.DataFrame(rows)


FRONTIER_NOTE = ("\n\n`*`: a frontier member (its excess is >= 0 by construction). Excess < 0 with an interval "
                 "below 0: beats the frontier. `above range`: seeds whose accuracy exceeds every frontier model. "
                 "`forms frontier`: in how many seeds a member is a vertex of that seed's frontier (the other "
                 "members lie above it there). `ref. data`: records the defence trained on beyond the members "
                 "(DMP's reference set; mean over seeds). `refs`: the reference models behind the audit AUC "
                 f"({runs.REFERENCE_KINDS_NOTE.removeprefix('refs: the reference models behind a leakage column: ')})")
