"""Report stage on hand-made MLflow runs (logged with MlflowClient into a tmp SQLite store)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_cfg
from mlflow import MlflowClient
from mlflow.entities import Metric

from pipeline.__main__ import run_stage
from pipeline.analysis import frontier, plots
from pipeline.stages import report
from pipeline.tracking import runs


def log_fake_run(client, exp_id, tags, metrics, artifacts: dict[str, Path] | None = None, status="FINISHED"):
    """One finished attack-stage run with these tags and metrics (what `stage=attack` logs)."""
    run = client.create_run(exp_id, tags={"stage": "attack", **{k: str(v) for k, v in tags.items()}})
    rid = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(rid, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    for dest, path in (artifacts or {}).items():
        client.log_artifact(rid, str(path), dest)
    client.set_terminated(rid, status=status)
    return rid


def fake_store(cfg):
    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    exp = client.get_experiment_by_name(str(cfg.tracking.experiment))
    if exp is None:
        art = Path(str(cfg.tracking.artifact_dir)).resolve()
        art.mkdir(parents=True, exist_ok=True)
        return client, client.create_experiment(str(cfg.tracking.experiment), artifact_location=art.as_uri())
    return client, exp.experiment_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one costs seconds): 48 runs of experiment `tables`."""
    cfg = make_cfg(["stage=report", "experiment_name=tables", "report.audit_reports=false"],
                   tmp_path_factory.mktemp("store"))
    Path(str(cfg.paths.mlruns_dir)).mkdir(parents=True, exist_ok=True)
    client, exp_id = fake_store(cfg)
    rng = np.random.default_rng(0)
    for dataset in ("digits", "purchase_synth"):
        for method, variant in (("dst", ""), ("safecompress", "bmia")):
            for density in (0.05, 0.2):
                for seed in (0, 1, 2):
                    metrics = {
                        "test_accuracy": rng.uniform(0.5, 0.9),
                        "audit_auc": rng.uniform(0.5, 0.8),
                        "audit_nn_blackbox_balanced_accuracy": rng.uniform(0.5, 0.7),
                        "audit_nn_whitebox_balanced_accuracy": rng.uniform(0.5, 0.7),
                        "model_size_bytes": float(rng.integers(1000, 2000)),
                        "density": density,
                    }
                    if dataset == "purchase_synth":
                        metrics["audit_tpr_at_0.1pct_fpr"] = rng.uniform(0, 0.1)
                    tags = dict(experiment_name="tables", dataset=dataset, method=method, variant=variant,
                                density=f"{density:g}", seed=seed)
                    log_fake_run(client, exp_id, tags, metrics)
    # noise the report must ignore: another experiment, a failed run, an older duplicate (logged first)
    log_fake_run(client, exp_id, dict(experiment_name="other", dataset="digits", method="dst", variant="",
                                      density="0.05", seed=0), {"test_accuracy": 0.01})
    log_fake_run(client, exp_id, dict(experiment_name="tables", dataset="digits", method="dst", variant="",
                                      density="0.05", seed=3), {"test_accuracy": 0.01}, status="FAILED")
    return cfg, client, exp_id


def _mlflow_values(client, exp_id, dataset, method, density, metric):
    found = client.search_runs(
        [exp_id],
        f"tags.experiment_name = 'tables' and tags.dataset = '{dataset}' and tags.method = '{method}' "
        f"and tags.density = '{density:g}' and attributes.status = 'FINISHED'",
    )
    return np.array([r.data.metrics[metric] for r in found if metric in r.data.metrics])


def test_report_cells_equal_mlflow(store):
    cfg, client, exp_id = store
    result = run_stage(cfg)
    s = result.summary
    assert len(s) == 2 * 2 * 2  # dataset x method x density; other experiment and failed run ignored
    for dataset, method, density, metric in [
        ("digits", "dst", 0.05, "test_accuracy"),
        ("purchase_synth", "safecompress", 0.2, "audit_auc"),
        ("digits", "safecompress", 0.05, "audit_nn_whitebox_balanced_accuracy"),
        ("purchase_synth", "dst", 0.2, "model_size_bytes"),
        ("purchase_synth", "dst", 0.05, "audit_tpr_at_0.1pct_fpr"),
    ]:
        values = _mlflow_values(client, exp_id, dataset, method, density, metric)
        assert len(values) == 3
        row = s[(s["dataset"] == dataset) & (s["method"] == method) & np.isclose(s["target_density"], density)].iloc[0]
        assert row[f"{metric}_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert row[f"{metric}_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        assert row[f"{metric}_n"] == 3
        kind = "int" if metric == "model_size_bytes" else "frac"
        text = report.cell(row, metric, kind)
        expected = f"{values.mean():,.0f}" if kind == "int" else f"{values.mean():.3f} ± {values.std(ddof=1):.3f} (3)"
        assert text.startswith(expected)
        assert text in result.markdown
    # digits has no TPR@0.1% logged: n/a, not 0
    digits = report.wide_table(s, "digits")
    assert (digits["d=0.05 TPR@0.1%FPR"] == "n/a").all()
    assert "safecompress (bmia)" in digits.index
    out = result.out_dir
    for name in ("report.md", "report.csv", "report.tex", "tradeoff_digits.png", "tradeoff_purchase_synth.png"):
        assert (out / name).exists(), name
    tex = (out / "report.tex").read_text()
    assert "\\begin{tabular}" in tex and "safecompress (bmia)" in tex and "$\\pm$" in tex
    csv = pd.read_csv(out / "report.csv")
    assert set(csv["dataset"]) == {"digits", "purchase_synth"}
    # the report's own MLflow run carries the files
    rep = client.search_runs([exp_id], "tags.stage = 'report'", order_by=["attributes.start_time DESC"])
    assert rep and rep[0].data.tags["experiment_name"] == "tables"
    names = {a.path for a in client.list_artifacts(rep[0].info.run_id, "report")}
    assert "report/report.md" in names and "report/report.tex" in names


def test_duplicate_runs_count_once(store):
    cfg, client, exp_id = store
    tags = dict(experiment_name="dups", dataset="digits", method="dst", variant="", density="0.05")
    for seed, acc in ((0, 0.5), (1, 0.6), (0, 0.123)):  # seed 0 re-run: the newest counts, once
        log_fake_run(client, exp_id, {**tags, "seed": seed}, {"test_accuracy": acc})
        time.sleep(0.01)
    frame = runs.load_runs(str(cfg.tracking.uri), "dups")
    assert sorted(frame["test_accuracy"]) == pytest.approx([0.123, 0.6])


def test_no_finished_runs_is_a_clear_error(cfg_factory):
    cfg = cfg_factory("stage=report", "experiment_name=never_ran")
    with pytest.raises(runs.NoRunsError, match=r"no finished runs for experiment 'never_ran'.*experiment=never_ran -m"):
        run_stage(cfg)


def test_audit_report_is_logged_to_its_run(store, tmp_path):
    cfg, client, exp_id = store
    table = pd.DataFrame({"auc": [0.61, 0.55], "tpr_at_1pct_fpr": [0.05, math.nan]}, index=["lira_offline", "loss"])
    csv = tmp_path / "audit.csv"
    table.to_csv(csv)
    conf = tmp_path / "config.yaml"
    conf.write_text("compress:\n  method: dst\n")
    rid = log_fake_run(client, exp_id, dict(experiment_name="x", dataset="digits", method="dst", density="0.05", seed=0),
                       {"test_accuracy": 0.9, "audit_auc": 0.61, "model_size_bytes": 1234, "density": 0.05},
                       artifacts={"audit": csv})
    client.log_artifact(rid, str(conf))
    path = report.write_audit_report(rid, str(cfg.tracking.uri), tmp_path / "ar")
    text = path.read_text()
    assert "lira_offline" in text and "0.6100" in text and "1,234" in text and "method: dst" in text
    assert "| loss | 0.5500 | n/a |" in text
    logged = {a.path for a in client.list_artifacts(rid, "audit_report")}
    assert "audit_report/audit_report.md" in logged
    assert client.get_run(rid).info.status == "FINISHED"


def test_primary_ci_reads_the_strongest_attacks_interval():
    row = pd.Series({"audit_auc": 0.7, "audit_loss_auc": 0.6, "audit_lira_offline_auc": 0.7,
                     "audit_lira_offline_auc_ci_low": 0.65, "audit_lira_offline_auc_ci_high": 0.75,
                     "audit_loss_auc_ci_low": 0.55, "audit_loss_auc_ci_high": 0.66})
    assert report.primary_ci(row, "audit_auc") == (0.65, 0.75)
    assert all(math.isnan(v) for v in report.primary_ci(pd.Series({"audit_auc": 0.7}), "audit_auc"))


def test_pareto_trials_of_a_study_get_audit_reports(store, tmp_path):
    cfg, client, exp_id = store
    ids = {}
    for trial, rank in ((0, 0), (1, 1), (2, 0)):
        ids[trial] = log_fake_run(client, exp_id, dict(study_name="st", trial_number=trial, pareto_rank=rank),
                                  {"test_accuracy": 0.8, "audit_auc": 0.6})
    cfg = make_cfg(["stage=report", "experiment_name=tables", "report.audit_reports=false",
                    "report.study_name=st", "report.plots=false"], Path(str(cfg.paths.root)))
    result = run_stage(cfg)
    assert sorted(p.parent.name for p in result.audit_reports) == sorted([ids[0], ids[2]])
    for trial, rid in ids.items():
        logged = {a.path for a in client.list_artifacts(rid, "audit_report")}
        assert ("audit_report/audit_report.md" in logged) == (trial != 1)


def test_safecompress_labels_name_non_default_selection():
    base = {"method": "safecompress", "variant": "bmia", "target_density": "0.05",
            "params.compress.selection.rule": "lexicographic", "params.compress.selection.delta": "0.005",
            "params.compress.selection.noise_floor": "True",
            "params.compress.strategies": "[{'prune': 'magnitude', 'grow': 'random'}]"}
    assert runs.run_label(pd.Series(base)) == "safecompress (bmia)"
    weighted = {**base, "params.compress.selection.rule": "weighted", "params.compress.selection.lam": "3.0",
                "params.compress.selection.noise_floor": "False"}
    assert runs.run_label(pd.Series(weighted)) == "safecompress (bmia) [sel=weighted, sel_lam=3.0, floor=off]"
    pool = {**base, "params.compress.selection.delta": "0.02",
            "params.compress.strategies": "[{'prune': 'magnitude', 'grow': 'random'}, "
                                          "{'prune': 'magnitude', 'grow': 'gradient'}]"}
    assert runs.run_label(pd.Series(pool)) == "safecompress (bmia) [delta=0.02, pool=2]"


def test_tradeoff_plot_draws_the_frontier_of_each_density(tmp_path):
    rows = []
    for seed in (0, 1):
        for method, label, d, acc, auc in (("dst", "dst", 0.05, 0.5, 0.7), ("dst", "dst [ep=10]", 0.05, 0.3, 0.6),
                                           ("dst", "dst", 0.2, 0.6, 0.75), ("dense", "dense", 1.0, 0.7, 0.9),
                                           ("oneshot", "oneshot", 0.05, 0.45, 0.8)):
            rows.append(dict(run_id=f"{label}{d}{seed}", dataset="p", method=method, label=label, seed=seed,
                             target_density=d, test_accuracy=acc + 0.01 * seed, audit_auc=auc))
    frame = pd.DataFrame(rows)
    curves = frontier.frontier_curves(frame, ["dst", "dense"])
    at = {d: g[["accuracy", "auc"]].to_numpy() for d, g in curves.groupby("density")}
    np.testing.assert_allclose(at[0.05], [[0.305, 0.6], [0.505, 0.7], [0.705, 0.9]])  # oneshot is no member
    np.testing.assert_allclose(at[0.2], [[0.605, 0.75], [0.705, 0.9]])
    path = plots.plot_tradeoff(frame, tmp_path / "t.png", "p", frontier=curves)
    assert path.stat().st_size > 0
    assert frontier.frontier_curves(frame[frame["method"] == "oneshot"], ["dst"]).empty


def test_sparse_labels_name_non_default_schedules():
    row = {"method": "dst", "target_density": "0.05", "params.compress.density_schedule.kind": "constant",
           "params.compress.density_schedule.start": "0.5", "params.compress.regrowth.kind": "cosine",
           "params.compress.regrowth.start": "0.5"}
    assert runs.run_label(pd.Series(row)) == "dst"
    row.update({"params.compress.density_schedule.kind": "linear", "params.compress.density_schedule.start": "0.385",
                "params.compress.regrowth.kind": "linear", "params.compress.regrowth.start": "0.49"})
    assert runs.run_label(pd.Series(row)) == "dst [sched=linear@0.385, regrow=linear@0.49]"
    assert runs.run_label(pd.Series({**row, "method": "oneshot"})) == "oneshot"  # no schedule there


def test_safety_resolved_column_appears_only_when_some_run_logged_it():
    from pipeline.stages.report import COLUMNS, _columns

    def summary(n_safety: int) -> pd.DataFrame:
        row = {f"{m}_n": 3 for m, _, _ in COLUMNS}
        row["safety_resolved_fraction_n"] = n_safety
        row.update({"audit_auc_ci_low_mean": float("nan"), "audit_tpr_at_0.1pct_fpr_ci_low_mean": float("nan")})
        return pd.DataFrame([row])

    assert "safety resolved" not in [h for _, h, _ in _columns(summary(0))]
    assert "safety resolved" in [h for _, h, _ in _columns(summary(5))]
