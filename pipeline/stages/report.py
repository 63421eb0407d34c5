"""Stage 6 — report: the papers' tables from tracked runs, trade-off plots, per-model audit reports.

Shape of the SafeCompress tables (Zhu et al. TSE 2024, Tables 3-6): rows are methods,
columns per data set and density, task accuracy and MIA (attack) accuracy. We add the
metrics the papers lacked: AUC, TPR at 0.1% FPR, the real byte size of the export,
each as mean ± std over seeds with the number of seeds. Numbers come only from
MLflow (`pipeline.tracking.runs.load_runs`), never from caches, so a table is what was tracked.

Written under `${paths.output_dir}/reports/<experiment_name>/`: `report.md`,
`report.csv` (tidy: one row per data set × density × method), `report.tex`, one
`tradeoff_<dataset>.png` per data set (test accuracy vs audit AUC across densities,
methods as series, the train-less frontier when its runs exist), and one audit report
per model (`write_audit_report`), each also logged to that model's own MLflow run.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.analysis import audit_scores, set_audit
from pipeline.analysis.frontier import frontier_curves
from pipeline.analysis.plots import plot_tradeoff
from pipeline.analysis.tables import finite, markdown_indexed
from pipeline.config import ReportConfig, to_schema
from pipeline.context import RunContext
from pipeline.tracking import plumbing as tracking
from pipeline.tracking import runs

log = logging.getLogger(__name__)

# (metric, short header, kind): kind decides the number format
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("test_accuracy", "acc", "frac"),
    ("audit_nn_blackbox_balanced_accuracy", "BB-MIA acc", "frac"),
    ("audit_nn_whitebox_balanced_accuracy", "WB-MIA acc", "frac"),
    ("audit_auc", "AUC", "frac"),
    ("audit_tpr_at_0.1pct_fpr", "TPR@0.1%FPR", "frac"),
    # LiRA alone, shown when logged: which references it used depends on attack.reference (the
    # header or cell says it); `_matched` is the rerun with matched references of reference=both
    ("audit_lira_offline_auc", "LiRA AUC", "frac"),
    ("audit_lira_offline_matched_auc", "LiRA AUC", "frac"),
    ("model_size_bytes", "bytes", "int"),
    # SafeCompress only, shown when some run logged it: the share of mask updates at which the
    # safety test told the candidates apart (risk spread > 2 standard errors)
    ("safety_resolved_fraction", "safety resolved", "frac"),
    # defences that train on data beyond the members (DMP), shown when some run logged it: how
    # many reference records the defence drew
    ("defender_reference_size", "ref. data", "int"),
)
OPTIONAL_COLUMNS = (
    "safety_resolved_fraction", "audit_lira_offline_auc", "audit_lira_offline_matched_auc", "defender_reference_size",
)
# metrics whose bootstrap interval (per run: the strongest attack's) gets its own column
CI_METRICS = ("audit_auc", "audit_tpr_at_0.1pct_fpr")
NA = "n/a"


@dataclass(frozen=True)
class ReportResult:
    experiment_name: str
    out_dir: Path
    summary: pd.DataFrame  # tidy: dataset, target_density, label, <metric>_mean/_std/_n, CIs
    markdown: str
    files: tuple[Path, ...]
    audit_reports: tuple[Path, ...]


def report_config(cfg: DictConfig) -> ReportConfig:
    if cfg.get("report") is None:
        return ReportConfig(experiment_name=str(cfg.get("experiment_name", "default")))
    return to_schema(ReportConfig, cfg.report)


def run(ctx: RunContext) -> ReportResult:
    rc = report_config(ctx.cfg)
    uri, mlflow_exp = ctx.tracking.uri, ctx.tracking.experiment
    frame = runs.load_runs(uri, rc.experiment_name, mlflow_exp, stages=rc.stages)
    out = Path(ctx.paths.output_dir) / "reports" / rc.experiment_name
    out.mkdir(parents=True, exist_ok=True)

    summary = summarize(frame)
    markdown = to_markdown(summary, rc.experiment_name)
    files = [out / "report.md", out / "report.csv", out / "report.tex"]
    files[0].write_text(markdown)
    summary.to_csv(files[1], index=False)
    files[2].write_text(to_latex(summary))
    if rc.plots:
        for dataset in summary["dataset"].unique():
            sub = frame[frame["dataset"] == dataset]
            files.append(plot_tradeoff(sub, out / f"tradeoff_{dataset}.png", dataset,
                                       frontier=frontier_curves(sub, rc.frontier)))
    for f in files:
        tracking.log_artifact(f, "report")

    audit_paths: list[Path] = []
    if rc.audit_reports:
        for run_id in frame["run_id"]:
            audit_paths.append(write_audit_report(run_id, uri, out / "audit" / run_id))
    if rc.study_name:
        trials = runs.load_study_trials(uri, rc.study_name, mlflow_exp)
        ranks = trials["pareto_rank"].astype(str) if "pareto_rank" in trials else pd.Series("", index=trials.index)
        pareto = trials[ranks == "0"]
        if pareto.empty:
            log.warning("study %r has no trial tagged pareto_rank=0 yet", rc.study_name)
        for run_id in pareto["run_id"]:
            audit_paths.append(write_audit_report(run_id, uri, out / "study" / rc.study_name / run_id))
        if rc.set_audit and not pareto.empty:
            files += write_set_audit(uri, pareto, rc, out / "study" / rc.study_name)
    if audit_paths:
        log.info("audit reports: %d under %s", len(audit_paths), out)
    return ReportResult(rc.experiment_name, out, summary, markdown, tuple(files), tuple(audit_paths))


# ---------------------------------------------------------------- the released set


def write_set_audit(uri: str, pareto: pd.DataFrame, rc: ReportConfig, out: Path) -> list[Path]:
    """The Pareto front audited as one release (`pipeline.analysis.set_audit`): set_audit.md and .csv
    under `out`, logged to the report's run. Versions without per-example scores are left out
    (logged); the attacks are those every version scored (or `report.set_attacks`)."""
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    audit, fit = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for _, r in pareto.iterrows():
            name = str(r.get("run_name") or r["run_id"][:8])
            a = runs.load_scores(uri, r["run_id"], Path(tmp) / "audit", "audit")
            f = runs.load_scores(uri, r["run_id"], Path(tmp) / "select", "select")
            if a is None or "pool_index" not in a:
                log.warning("set audit: trial run %s has no per-example scores (audit/scores.npz); left out", name)
                continue
            audit[name], fit[name] = a, f
    if not audit:
        return []
    attack_sets = [set(v) - set(audit_scores.NPZ_FIELDS) for v in audit.values()]
    common = sorted(set.intersection(*attack_sets))
    wanted = list(rc.set_attacks) if rc.set_attacks else common
    missing = [a for a in wanted if a not in common]
    if missing:
        raise ValueError(f"report.set_attacks names {missing}, which not every Pareto version scored; scored: {common}")
    fitted = {name: f for name, f in fit.items() if f is not None and "pool_index" in f}
    use_fit = len(fitted) == len(fit)
    tables = [set_audit.set_audit(audit, fitted if use_fit else None, a, seed=0) for a in wanted]
    table = pd.concat(tables, ignore_index=True)
    paths = [out / "set_audit.md", out / "set_audit.csv"]
    paths[0].write_text(set_audit.to_markdown(table, f"Set audit of study {rc.study_name!r}: {len(audit)} Pareto versions"))
    table.to_csv(paths[1], index=False)
    log.info("set audit of %d Pareto versions: %s", len(audit), paths[0])
    return paths


# ---------------------------------------------------------------- the table


def primary_ci(row: pd.Series, metric: str) -> tuple[float, float]:
    """Bootstrap interval of `audit_<m>` in one run: its own, or that of the attack that gave it.

    `audit_auc` is the strongest attack's AUC; its interval is that attack's
    `audit_<attack>_auc_ci_low/_ci_high` (NaN when the run has no intervals).
    """
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if finite(low) and finite(high):
        return float(low), float(high)
    value = row.get(metric)
    if not finite(value):
        return math.nan, math.nan
    suffix = metric[len("audit_"):]
    for col in row.index:
        if not (isinstance(col, str) and col.startswith("audit_") and col.endswith("_" + suffix)):
            continue
        if col == metric or not finite(row[col]) or abs(float(row[col]) - float(value)) > 1e-12:
            continue
        lo, hi = row.get(f"{col}_ci_low"), row.get(f"{col}_ci_high")
        if finite(lo) and finite(hi):
            return float(lo), float(hi)
    return math.nan, math.nan


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof 1) and count over seeds per data set × density × method label."""
    rows = []
    keys = ["dataset", "target_density", "label"]
    for (dataset, density, label), g in frame.groupby(keys, sort=True, dropna=False):
        row: dict[str, Any] = {
            "dataset": dataset,
            "target_density": density,
            "label": label,
            "method": g["method"].iloc[0],
            "variant": g["variant"].iloc[0],
            "seeds": " ".join(str(s) for s in sorted(g["seed"].dropna().astype(int))),
        }
        for metric, _, _ in COLUMNS:
            values = pd.to_numeric(g[metric], errors="coerce").dropna() if metric in g else pd.Series(dtype=float)
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            row[f"{metric}_n"] = int(len(values))
            row[f"{metric}_refs"] = runs.kinds_of(g, metric)  # '' for accuracy and bytes
        for metric in CI_METRICS:
            cis = np.array([primary_ci(r, metric) for _, r in g.iterrows()], dtype=float).reshape(-1, 2)
            ok = np.isfinite(cis).all(axis=1)
            row[f"{metric}_ci_low_mean"] = float(cis[ok, 0].mean()) if ok.any() else math.nan
            row[f"{metric}_ci_high_mean"] = float(cis[ok, 1].mean()) if ok.any() else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def cell(row: pd.Series, metric: str, kind: str) -> str:
    """'0.912 ± 0.004 (3)': mean ± std (n seeds); one seed: '0.912 (1)'; none: 'n/a'."""
    n = int(row.get(f"{metric}_n", 0) or 0)
    if n == 0:
        return "0" if metric == "defender_reference_size" else NA  # no data beyond the members
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    fmt = (lambda v: f"{v:,.0f}") if kind == "int" else (lambda v: f"{v:.3f}")
    return f"{fmt(mean)} ± {fmt(std)} ({n})" if n > 1 else f"{fmt(mean)} ({n})"


def ci_cell(row: pd.Series, metric: str) -> str:
    lo, hi = row.get(f"{metric}_ci_low_mean"), row.get(f"{metric}_ci_high_mean")
    return f"[{lo:.3f}, {hi:.3f}]" if finite(lo) and finite(hi) else NA


def _columns(summary: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The table's metric columns, plus a CI column after each metric that has intervals."""
    cols: list[tuple[str, str, str]] = []
    for metric, header, kind in COLUMNS:
        if metric in OPTIONAL_COLUMNS and not (summary[f"{metric}_n"] > 0).any():
            continue
        cols.append((metric, header, kind))
        if metric in CI_METRICS and summary[f"{metric}_ci_low_mean"].notna().any():
            cols.append((metric, f"{header} 95% CI", "ci"))
    return cols


def refs_header(sub: pd.DataFrame, metric: str) -> str | None:
    """' [refs: <kind>]' when every run behind `metric` in `sub` shares one reference kind,
    '' for a metric that is no leakage metric, None when the kinds differ (each cell names its own)."""
    col = f"{metric}_refs"
    if col not in sub:
        return ""
    kinds = {k for v in sub[col].dropna() for k in str(v).split(", ") if k}
    if not kinds:
        return ""
    return f" [refs: {kinds.pop()}]" if len(kinds) == 1 else None


def wide_table(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """One data set: rows method label, columns (density, metric) as formatted strings.

    A leakage column's header names the reference models behind it (`runs.reference_kind`);
    when its runs were audited against different kinds, each cell names its own."""
    sub = summary[summary["dataset"] == dataset]
    cols = _columns(summary)
    densities = sorted(sub["target_density"].unique())
    table = pd.DataFrame(index=sorted(sub["label"].unique()))
    table.index.name = "method"
    for d in densities:
        for metric, header, kind in cols:
            refs = refs_header(sub, metric)
            values = {}
            for _, row in sub[sub["target_density"] == d].iterrows():
                text = ci_cell(row, metric) if kind == "ci" else cell(row, metric, kind)
                if refs is None and kind != "ci" and row.get(f"{metric}_refs"):
                    text += f" [{row[f'{metric}_refs']}]"
                values[row["label"]] = text
            if refs is None:
                refs = " [refs: per cell]" if kind != "ci" else ""
            table[f"d={d:g} {header}{refs}"] = pd.Series(values)
    return table.fillna("—")  # — : this method has no run at this density


def to_markdown(summary: pd.DataFrame, experiment_name: str) -> str:
    lines = [
        f"# Report: experiment `{experiment_name}`",
        "",
        "Each cell: mean ± sample std over seeds (number of seeds). `n/a`: the metric was not",
        "logged (attack not configured, or too few non-members for that FPR); `—`: no run.",
        "acc: test accuracy; BB/WB-MIA acc: balanced accuracy of Nasr's black-/white-box attack;",
        "AUC and TPR@0.1%FPR: the strongest audit attack (members vs test); bytes: compressed export.",
        runs.REFERENCE_KINDS_NOTE,
        "",
    ]
    for dataset in summary["dataset"].unique():
        table = wide_table(summary, dataset)
        lines += [f"## {dataset}", "", markdown_indexed(table), ""]
    return "\n".join(lines)


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("—", "--")):
        s = s.replace(a, b)
    return s


def to_latex(summary: pd.DataFrame) -> str:
    """One booktabs tabular per data set, densities as column groups (written by hand: no jinja2)."""
    cols = _columns(summary)
    parts = ["% generated by `python -m pipeline stage=report`; needs \\usepackage{booktabs}"]
    for dataset in summary["dataset"].unique():
        table = wide_table(summary, dataset)
        densities = sorted(summary.loc[summary["dataset"] == dataset, "target_density"].unique())
        k = len(cols)
        parts += [
            f"% {dataset}",
            "\\begin{tabular}{l" + ("|" + "c" * k) * len(densities) + "}",
            "\\toprule",
            " & ".join(["", *(f"\\multicolumn{{{k}}}{{c}}{{density {d:g}}}" for d in densities)]) + " \\\\",
            " & ".join(["method", *(_tex(h) for _ in densities for _, h, _ in cols)]) + " \\\\",
            "\\midrule",
        ]
        for label, row in table.iterrows():
            parts.append(" & ".join([_tex(str(label)), *(_tex(str(v)) for v in row)]) + " \\\\")
        parts += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------- per-model audit report


def write_audit_report(run_id: str, tracking_uri: str, out_dir: Path, log_to_run: bool = True) -> Path:
    """A Markdown audit report for one tracked model, written to `out_dir` and logged to its run.

    Contents: the model's identity (tags), test accuracy, density and bytes, the attack ×
    metric table (`audit/audit.csv`), the ROC plot (`audit/roc.png`) and the config that
    made it (`config.yaml`). Logged under the run's `audit_report/` artifacts with
    `MlflowClient.log_artifact(run_id, ...)`, so stages can call it on any finished run.
    """
    client = runs._client(tracking_uri)
    r = client.get_run(run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".download"
    audit_csv = runs.download_artifact(tracking_uri, run_id, "audit/audit.csv", tmp)
    roc = runs.download_artifact(tracking_uri, run_id, "audit/roc.png", tmp)
    config = runs.download_artifact(tracking_uri, run_id, "config.yaml", tmp)
    m, tags = r.data.metrics, r.data.tags

    def num(key: str, fmt: str = "{:.4f}") -> str:
        return fmt.format(m[key]) if key in m and math.isfinite(m[key]) else NA

    ident = {k: tags[k] for k in ("experiment_name", "dataset", "model", "method", "variant", "density", "seed",
                                  "study_name", "trial_number", "pareto_rank", "git_commit") if tags.get(k)}
    lines = [
        f"# Audit report: run `{run_id}`" + (f" ({r.info.run_name})" if r.info.run_name else ""),
        "",
        "| | |", "|---|---|",
        *(f"| {k} | {v} |" for k, v in ident.items()),
        f"| test accuracy | {num('test_accuracy')} |",
        f"| validation accuracy | {num('accuracy')} |",
        f"| density (measured) | {num('density')} |",
        f"| size of the compressed export (bytes) | {num('model_size_bytes', '{:,.0f}')} |",
        f"| dense size (bytes) | {num('dense_size_bytes', '{:,.0f}')} |",
        f"| audit AUC (strongest attack) | {num('audit_auc')} |",
        f"| audit TPR@1%FPR | {num('audit_tpr_at_1pct_fpr')} |",
        f"| audit TPR@0.1%FPR | {num('audit_tpr_at_0.1pct_fpr')} |",
        "",
        "## Attacks (audit members vs test non-members)",
        "",
    ]
    if audit_csv is not None:
        table = pd.read_csv(audit_csv, index_col=0)
        table.index.name = "attack"
        lines.append(markdown_indexed(table.map(lambda v: NA if isinstance(v, float) and not math.isfinite(v)
                                         else (f"{v:.4f}" if isinstance(v, float) else str(v)))))
    else:
        lines.append("(this run has no `audit/audit.csv`: it was not an attack run)")
    lines += ["", "A TPR at an FPR below 1/n (n non-members) rests on one sample and is shown as n/a.", ""]
    if roc is not None:
        shutil.copy(roc, out_dir / "roc.png")
        lines += ["## ROC (log-log)", "", "![ROC](roc.png)", ""]
    if config is not None:
        lines += ["## Config that made this model", "", "```yaml", config.read_text().rstrip(), "```", ""]
    path = out_dir / "audit_report.md"
    path.write_text("\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)
    if log_to_run:
        client.log_artifact(run_id, str(path), "audit_report")
        if (out_dir / "roc.png").exists():
            client.log_artifact(run_id, str(out_dir / "roc.png"), "audit_report")
    return path
