"""Stage compare — paired differences between two methods, and the train-less frontier.

Paired comparison: two methods run on the same seeds (matched on data set, target
density and seed) give per-seed differences a − b. The interval is a percentile
bootstrap: over seeds (resample the seed pairs), and — when both runs saved
per-example scores (`audit/scores.npz`) — hierarchically over seeds and examples
(within each seed resample audit members and non-members separately; both
methods get the same resample when they audited the same examples, so example
difficulty cancels in the difference). An interval that excludes zero is the
claim; with 3–5 seeds it is wide, and that is the point.

Train-less frontier (issue 10; Aerni, Zhang & Tramèr 2024, arXiv 2404.17399): a
defence counts only if it beats strong cheap baselines at equal accuracy. Per seed,
the frontier is the lower monotone envelope of (test accuracy, audit AUC) over
plain DST at several epoch budgets, the dense model, dense + adversarial
regularization and DP-SGD: f(acc) = the lowest AUC reached at an accuracy >= acc,
linearly interpolated between the envelope's points. A method's excess AUC is
AUC − f(its accuracy), per seed, then the mean with a bootstrap interval over
seeds; negative means it beats the frontier. Above the most accurate frontier
model the frontier is undefined (reported as n/a with a count).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.analysis.compare_tables import (
    FRONTIER_NOTE,
    format_frontier,
    format_paired,
    format_study,
)
from pipeline.analysis.frontier import (
    excess_auc,
    forms_envelope,
    frontier_runs,
    mean_envelope,
    with_leakage,
)
from pipeline.analysis.intervals import AUDIT_METRIC, example_bootstrap, seed_bootstrap
from pipeline.analysis.pareto import front_hypervolume
from pipeline.analysis.plots import plot_tradeoff
from pipeline.analysis.tables import finite, markdown
from pipeline.config import CompareConfig, to_schema
from pipeline.context import RunContext
from pipeline.tracking import plumbing as tracking
from pipeline.tracking import runs

log = logging.getLogger(__name__)

MATCH = ("dataset", "target_density", "seed")


@dataclass(frozen=True)
class CompareResult:
    paired: pd.DataFrame  # one row per (dataset, density, metric)
    frontier: pd.DataFrame | None  # one row per (dataset, density, method label)
    out_dir: Path
    files: tuple[Path, ...]
    markdown: str = ""  # the comparison as the command prints it


def compare_config(cfg: DictConfig) -> CompareConfig:
    c = to_schema(CompareConfig, cfg.compare) if cfg.get("compare") is not None else CompareConfig()
    if c.n_bootstrap < 100:
        raise ValueError(f"compare.n_bootstrap must be >= 100 for a 95% interval, got {c.n_bootstrap}")
    if not 0.5 < c.confidence < 1.0:
        raise ValueError(f"compare.confidence must be in (0.5, 1), got {c.confidence}")
    return c


def run(ctx: RunContext) -> CompareResult:
    c = compare_config(ctx.cfg)
    uri, mlflow_exp = ctx.tracking.uri, ctx.tracking.experiment
    frame = runs.load_runs(uri, c.experiment_name, mlflow_exp, stages=["attack"])
    if c.dataset is not None:
        frame = frame[frame["dataset"] == c.dataset]
    out = Path(ctx.paths.output_dir) / "compare" / c.experiment_name / _slug(f"{c.a}_vs_{c.b}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # everything is written to a staging folder that replaces `out` only when all of it succeeded:
    # bad input found late (an unknown study, an epoch budget) leaves no half-written comparison
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        paired, frontier, text, names = _compare(c, frame, uri, mlflow_exp, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    stage.rename(out)
    files = [out / name for name in names]
    for f in files:
        tracking.log_artifact(f, "compare")
    return CompareResult(paired, frontier, out, tuple(files), text)


def _compare(
    c: CompareConfig, frame: pd.DataFrame, uri: str, mlflow_exp: str, out: Path
) -> tuple[pd.DataFrame, pd.DataFrame | None, str, list[str]]:
    """The paired table, the frontier and the study comparison, written under `out`:
    (paired, frontier, the Markdown text, the written files' names in logging order)."""
    with tempfile.TemporaryDirectory() as tmp:
        loader = (lambda run_id: runs.load_scores(uri, run_id, Path(tmp))) if c.use_examples else None
        paired = paired_table(frame, c, loader)
    files = [out / "paired.csv", out / "compare.md"]
    paired.to_csv(files[0], index=False)
    text = f"## {c.a} − {c.b} (paired over seeds, {c.confidence:.0%} bootstrap intervals)\n\n"
    text += markdown(format_paired(paired))
    few = int(paired["n_pairs"].max()) if len(paired) else 0
    if few < 5:
        text += (f"\n\nOnly {few} paired seed(s): a seed interval needs >= 2 seeds and is coarse below 5 "
                 "(SPEC: compare over >= 5 paired seeds).")
    frontier = None
    if c.frontier.enabled:
        leak = with_leakage(frame, c.frontier.metrics)
        # the reference models behind each run's leakage measure (the maximum of the frontier metrics)
        leak["leakage_refs"] = [
            runs.combine_kinds(runs.reference_kind(r, m) for m in c.frontier.metrics) for _, r in frame.iterrows()
        ]
        frontier, plots = frontier_table(leak, c, out)
        if frontier is not None:
            files.append(out / "frontier.csv")
            frontier.to_csv(files[-1], index=False)
            text += "\n\n## Excess audit AUC over the train-less frontier (per seed, then mean)\n\n"
            text += markdown(format_frontier(frontier)) + FRONTIER_NOTE
            files += plots
        if c.study:
            study = study_table(leak, runs.load_study_trials(uri, c.study, mlflow_exp), c)
            files.append(out / "study_vs_frontier.csv")
            study.to_csv(files[-1], index=False)
            text += f"\n\n## Study {c.study!r}: its Pareto trials against the frontier\n\n"
            text += format_study(study)
    files[1].write_text(text + "\n")
    return paired, frontier, text, [f.name for f in files]


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


# ---------------------------------------------------------------- selecting runs


def select(frame: pd.DataFrame, selector: str) -> pd.DataFrame:
    """Runs of one method: a row label (`dst [ep=10]`), `method/variant`, or a method name."""
    if selector in set(frame["label"]):
        return frame[frame["label"] == selector]
    if "/" in selector:
        method, variant = selector.split("/", 1)
        return frame[(frame["method"] == method) & (frame["variant"] == variant)]
    return frame[frame["method"] == selector]


def _unique_per_key(sel: pd.DataFrame, selector: str) -> pd.DataFrame:
    dup = sel[sel.duplicated(list(MATCH), keep=False)]
    if len(dup):
        raise ValueError(
            f"{selector!r} matches several configurations per (dataset, density, seed): "
            f"{sorted(set(dup['label']))}; name one of these labels in compare.a / compare.b"
        )
    return sel


def pairs(frame: pd.DataFrame, a: str, b: str, density: float | None = None) -> pd.DataFrame:
    """A's and B's runs matched on (dataset, target_density, seed): columns `<col>_a`, `<col>_b`."""
    sa, sb = select(frame, a), select(frame, b)
    if density is not None:
        sa = sa[np.isclose(sa["target_density"], density)]
        sb = sb[np.isclose(sb["target_density"], density)]
    for sel, name in ((sa, a), (sb, b)):
        if sel.empty:
            known = sorted(set(frame["label"]))
            raise ValueError(f"no runs of {name!r}{'' if density is None else f' at density {density:g}'}; "
                             f"tracked methods: {known}")
    sa, sb = _unique_per_key(sa, a), _unique_per_key(sb, b)
    merged = sa.merge(sb, on=list(MATCH), suffixes=("_a", "_b"))
    if merged.empty:
        def seeds(s: pd.DataFrame) -> str:
            return "; ".join(
                f"{d} @ {t:g}: seeds {sorted(int(x) for x in g['seed'])}"
                for (d, t), g in s.groupby(["dataset", "target_density"])
            )
        raise ValueError(
            f"methods {a!r} and {b!r} share no seeds on a common (dataset, density): "
            f"{a} has {seeds(sa)}; {b} has {seeds(sb)}. Run both on the same seeds "
            f"(e.g. `-m seed=0,1,2,3,4`)."
        )
    only = set(map(tuple, sa[list(MATCH)].astype(str).values)) ^ set(map(tuple, sb[list(MATCH)].astype(str).values))
    if only:
        log.warning("unpaired runs ignored (dataset, density, seed): %s", sorted(only))
    return merged


def paired_table(frame: pd.DataFrame, c: CompareConfig, load_scores=None) -> pd.DataFrame:
    """Per (dataset, density, metric): n pairs, means of a and b, mean difference, intervals."""
    merged = pairs(frame, c.a, c.b, c.density)
    rows = []
    for (dataset, density), g in merged.groupby(["dataset", "target_density"]):
        scores = None
        if load_scores is not None:
            scores = [(load_scores(ra), load_scores(rb)) for ra, rb in zip(g["run_id_a"], g["run_id_b"], strict=True)]
            if any(sa is None or sb is None for sa, sb in scores):
                scores = None
        runs_a = frame[frame["run_id"].isin(g["run_id_a"])]
        runs_b = frame[frame["run_id"].isin(g["run_id_b"])]
        for metric in c.metrics:
            ca, cb = f"{metric}_a", f"{metric}_b"
            if ca not in g or cb not in g:
                rows.append({"dataset": dataset, "density": density, "metric": metric, "n_pairs": 0})
                continue
            refs_a, refs_b = runs.kinds_of(runs_a, metric), runs.kinds_of(runs_b, metric)
            if refs_a != refs_b:
                log.warning("%s on %s @ %g: %r audited with %s references, %r with %s: the difference mixes "
                            "attacks of unequal strength", metric, dataset, density, c.a, refs_a, c.b, refs_b)
            ok = g[[ca, cb, "seed"]].dropna()
            d = (ok[ca] - ok[cb]).to_numpy(float)
            lo, hi = seed_bootstrap(d, c.n_bootstrap, c.confidence, c.seed)
            row: dict[str, Any] = {
                "dataset": dataset, "density": density, "metric": metric, "n_pairs": len(d),
                "seeds": " ".join(str(int(s)) for s in ok["seed"]),
                "mean_a": float(ok[ca].mean()) if len(d) else math.nan,
                "mean_b": float(ok[cb].mean()) if len(d) else math.nan,
                "diff": float(d.mean()) if len(d) else math.nan,
                "ci_low_seeds": lo, "ci_high_seeds": hi,
                "ci_low_examples": math.nan, "ci_high_examples": math.nan,
                "refs_a": refs_a, "refs_b": refs_b,
            }
            if scores is not None and len(d) == len(g) and AUDIT_METRIC.match(metric):
                row["ci_low_examples"], row["ci_high_examples"] = example_bootstrap(
                    scores, metric, c.n_bootstrap, c.confidence, c.seed)
            lo_x, hi_x = (row["ci_low_examples"], row["ci_high_examples"])
            use_lo, use_hi = (lo_x, hi_x) if finite(lo_x) else (lo, hi)
            row["excludes_zero"] = bool(finite(use_lo) and (use_lo > 0 or use_hi < 0))
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- frontier


def _check_epochs(front: pd.DataFrame, frame: pd.DataFrame, c: CompareConfig) -> pd.DataFrame:
    """DST budgets must not exceed the compared method's epochs (else it is not 'train less')."""
    ref = select(frame, c.a)
    ref_epochs = float(np.nanmax(ref["epochs"])) if len(ref) and np.isfinite(ref["epochs"]).any() else math.nan
    if c.frontier.epoch_budgets is not None:
        too_long = [e for e in c.frontier.epoch_budgets if math.isfinite(ref_epochs) and e > ref_epochs]
        if too_long:
            raise ValueError(
                f"compare.frontier.epoch_budgets {too_long} exceed the epochs of {c.a!r} ({ref_epochs:g}); "
                f"the train-less frontier uses budgets <= the method's own"
            )
        dst = front["method"] == "dst"
        front = front[~dst | front["epochs"].isin([float(e) for e in c.frontier.epoch_budgets])]
    dst = front[front["method"] == "dst"]
    if math.isfinite(ref_epochs) and (dst["epochs"] > ref_epochs).any():
        bad = sorted({float(e) for e in dst.loc[dst["epochs"] > ref_epochs, "epochs"]})
        raise ValueError(
            f"frontier DST runs with epoch budgets {bad} exceed the epochs of {c.a!r} ({ref_epochs:g}); "
            f"set compare.frontier.epoch_budgets to budgets <= {ref_epochs:g}"
        )
    return front


def frontier_table(frame: pd.DataFrame, c: CompareConfig, out: Path) -> tuple[pd.DataFrame | None, list[Path]]:
    """Excess AUC of every method over the per-seed frontier, per (dataset, density < 1)."""
    rows: list[dict[str, Any]] = []
    plots: list[Path] = []
    if not {"test_accuracy", "audit_auc"} <= set(frame.columns):
        return None, plots
    groups = frame[frame["target_density"] < 1.0].groupby(["dataset", "target_density"])
    if c.density is not None:
        groups = frame[np.isclose(frame["target_density"], c.density)].groupby(["dataset", "target_density"])
    for (dataset, density), _ in groups:
        front = frontier_runs(frame, dataset, density, c.frontier.methods)
        if front.empty:
            log.warning("no frontier runs (%s) for %s at density %g", c.frontier.methods, dataset, density)
            continue
        front = _check_epochs(front, frame, c)
        forming = forms_envelope(front)
        candidates = frame[(frame["dataset"] == dataset) & (
            np.isclose(frame["target_density"], density) | frame["run_id"].isin(front["run_id"]))]
        for label, g in candidates.groupby("label"):
            ex = excess_auc(g, front)
            ok = ex["excess_auc"].dropna().to_numpy(float)
            lo, hi = seed_bootstrap(ok, c.n_bootstrap, c.confidence, c.seed)
            acc_lo, acc_hi = seed_bootstrap(ex["test_accuracy"].dropna().to_numpy(float), c.n_bootstrap,
                                            c.confidence, c.seed)
            auc_lo, auc_hi = seed_bootstrap(ex["audit_auc"].dropna().to_numpy(float), c.n_bootstrap,
                                            c.confidence, c.seed)
            lira = pd.to_numeric(g.get("audit_lira_offline_tpr_at_1pct_fpr"), errors="coerce") \
                if "audit_lira_offline_tpr_at_1pct_fpr" in g else pd.Series(dtype=float)
            canary = pd.to_numeric(g.get("canary_tpr_at_1pct_fpr"), errors="coerce") \
                if "canary_tpr_at_1pct_fpr" in g else pd.Series(dtype=float)
            member = bool(g["run_id"].isin(front["run_id"]).all())
            # records a defence trained on beyond the members (DMP's reference set); 0 when none
            ref_data = pd.to_numeric(g["defender_reference_size"], errors="coerce").fillna(0) \
                if "defender_reference_size" in g else pd.Series(0.0, index=g.index)
            rows.append({
                "dataset": dataset, "density": density, "label": label,
                "on_frontier": member,
                # seeds in which this frontier member is a vertex of the envelope (forms the frontier)
                "n_forming": int(forming[front["run_id"].isin(g["run_id"])].sum()) if member else 0,
                "refs": ", ".join(sorted(set(g["leakage_refs"]))) if "leakage_refs" in g else "",
                "n_seeds": len(g), "defender_reference_size": float(ref_data.mean()),
                "test_accuracy": float(ex["test_accuracy"].mean()), "test_accuracy_ci_low": acc_lo,
                "test_accuracy_ci_high": acc_hi,
                "audit_auc": float(ex["audit_auc"].mean()), "audit_auc_ci_low": auc_lo, "audit_auc_ci_high": auc_hi,
                "lira_tpr_at_1pct_fpr": float(lira.mean()) if lira.notna().any() else math.nan,
                "canary_tpr_at_1pct_fpr": float(canary.mean()) if canary.notna().any() else math.nan,
                "excess_auc": float(ok.mean()) if len(ok) else math.nan,
                "excess_auc_ci_low": lo, "excess_auc_ci_high": hi,
                "n_above_frontier_range": int(ex["excess_auc"].isna().sum()),
            })
        plots.append(_plot_frontier(frame, front, dataset, density, out / f"frontier_{dataset}_{density:g}.png"))
    return (pd.DataFrame(rows) if rows else None), plots


def study_table(frame: pd.DataFrame, trials: pd.DataFrame, c: CompareConfig) -> pd.DataFrame:
    """Each Pareto trial (tag pareto_rank=0, chosen on validation) of a study, on test data: its excess
    leakage over the frontier of its seed and density, and both fronts' hypervolumes."""
    ranks = trials["pareto_rank"].astype(str) if "pareto_rank" in trials else pd.Series("", index=trials.index)
    if "test_accuracy" not in trials:
        raise runs.NoRunsError(f"the trials of study {c.study!r} did not log test_accuracy (searches before "
                               f"2026-11-24 did not); run the search again under a new search.study_name")
    pareto = with_leakage(trials[ranks == "0"], c.frontier.metrics)
    if pareto.empty:
        raise runs.NoRunsError(f"study {c.study!r} has no trial tagged pareto_rank=0; let its search finish first")
    pareto["seed"] = pd.to_numeric(pareto["seed"], errors="coerce").astype("Int64")  # as load_runs types it
    parts = []
    for (dataset, density, seed), g in pareto.groupby(["dataset", "target_density", "seed"]):
        front = frontier_runs(frame, dataset, float(density), c.frontier.methods)
        front = front[front["seed"] == seed]
        if front.empty:
            raise runs.NoRunsError(
                f"no frontier runs ({c.frontier.methods}) for {dataset} at density {float(density):g}, seed {seed} "
                f"in experiment {c.experiment_name!r}: run the frontier grid with that seed first")
        ex = excess_auc(g, front)
        if "leakage_refs" in front:
            trial_refs = [runs.combine_kinds(runs.reference_kind(r, m) for m in c.frontier.metrics)
                          for _, r in g.iterrows()]
            ex["refs"] = [f"{k} / {', '.join(sorted(set(front['leakage_refs'])))}" for k in trial_refs]
        parts.append(ex.assign(
            dataset=dataset, density=float(density), trial=g["trial_number"].to_numpy() if "trial_number" in g else None,
            hv_study=front_hypervolume(g["test_accuracy"], g["audit_auc"]),
            hv_frontier=front_hypervolume(front["test_accuracy"], front["audit_auc"]),
            hv_union=front_hypervolume(np.r_[g["test_accuracy"], front["test_accuracy"]],
                                       np.r_[g["audit_auc"], front["audit_auc"]]),
        ))
    return pd.concat(parts, ignore_index=True)


def _plot_frontier(frame: pd.DataFrame, front: pd.DataFrame, dataset: str, density: float, path: Path) -> Path:
    sub = frame[(frame["dataset"] == dataset) & (
        np.isclose(frame["target_density"], density) | frame["run_id"].isin(front["run_id"]))]
    return plot_tradeoff(sub, path, f"{dataset} @ density {density:g}", frontier=mean_envelope(front))
