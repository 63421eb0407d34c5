"""Compare stage on hand-made runs: paired differences, intervals, the frontier, bad input."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_cfg
from mlflow import MlflowClient
from mlflow.entities import Metric

from attacks.metrics import roc_auc
from pipeline.__main__ import run_stage
from pipeline.analysis import compare_tables, frontier, intervals, pareto
from pipeline.config import CompareConfig, FrontierConfig
from pipeline.stages import compare
from pipeline.tracking import runs

SEEDS = (0, 1, 2, 3)


def log_run(client, exp_id, tags, metrics, scores: dict | None = None, tmp: Path | None = None):
    run = client.create_run(exp_id, tags={"stage": "attack", **{k: str(v) for k, v in tags.items()}})
    rid = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(rid, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    if scores is not None:
        f = tmp / rid / "scores.npz"
        f.parent.mkdir(parents=True)
        np.savez_compressed(f, **{f"audit/{k}": v for k, v in scores.items()})
        client.log_artifact(rid, str(f), "audit")
    client.set_terminated(rid, "FINISHED")
    return rid


def _scores(rng, n, shift):
    labels = np.r_[np.ones(n, int), np.zeros(n, int)]
    loss = rng.normal(size=2 * n) + shift * labels
    return {"loss": loss, "labels": labels, "example_index": np.arange(2 * n)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Methods a (leakier, shift 1.0) and b (shift 0.5) on seeds 0-3, with per-example scores;
    c on seeds 7, 8 only; a DST frontier at three epoch budgets plus a dense run."""
    root = tmp_path_factory.mktemp("cmp")
    cfg = make_cfg(["stage=compare", "experiment_name=cmp", "compare.a=a", "compare.b=b",
                    "compare.metrics=[test_accuracy,audit_auc,audit_loss_auc]", "compare.n_bootstrap=200",
                    "compare.frontier.enabled=false"], root)
    Path(str(cfg.paths.mlruns_dir)).mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    art = Path(str(cfg.tracking.artifact_dir)).resolve()
    art.mkdir(parents=True, exist_ok=True)
    exp_id = client.create_experiment(str(cfg.tracking.experiment), artifact_location=art.as_uri())
    rng = np.random.default_rng(1)
    base = dict(experiment_name="cmp", dataset="purchase_synth", variant="", density="0.05")
    truth = {}
    for seed in SEEDS:
        for method, shift, acc in (("a", 1.0, 0.70 + 0.01 * seed), ("b", 0.5, 0.60 + 0.02 * seed)):
            sc = _scores(rng, 150, shift)
            auc = roc_auc(sc["loss"], sc["labels"])
            truth[(method, seed)] = (acc, auc)
            log_run(client, exp_id, {**base, "method": method, "seed": seed},
                    {"test_accuracy": acc, "audit_auc": auc, "audit_loss_auc": auc}, sc, root / "npz")
    for seed in (7, 8):
        log_run(client, exp_id, {**base, "method": "c", "seed": seed}, {"test_accuracy": 0.5, "audit_auc": 0.6})
    return cfg, client, exp_id, truth


def test_paired_difference_and_intervals(store):
    cfg, client, exp_id, truth = store
    result = run_stage(cfg)
    p = result.paired.set_index("metric")
    for metric, i in (("test_accuracy", 0), ("audit_auc", 1)):
        d = np.array([truth[("a", s)][i] - truth[("b", s)][i] for s in SEEDS])
        row = p.loc[metric]
        assert row["n_pairs"] == 4
        assert row["diff"] == pytest.approx(d.mean(), abs=1e-12)
        lo, hi = intervals.seed_bootstrap(d, 200, 0.95, 0)
        assert (row["ci_low_seeds"], row["ci_high_seeds"]) == pytest.approx((lo, hi))
        assert d.min() <= lo <= d.mean() <= hi <= d.max()
    # accuracy differences 0.1 - 0.01*seed are all > 0: the interval excludes zero
    assert p.loc["test_accuracy", "excludes_zero"]
    # the example bootstrap is wider than the seed bootstrap alone and still around the mean
    auc = p.loc["audit_auc"]
    assert auc["ci_low_examples"] < auc["diff"] < auc["ci_high_examples"]
    assert auc["ci_high_examples"] - auc["ci_low_examples"] > auc["ci_high_seeds"] - auc["ci_low_seeds"]
    assert auc["excludes_zero"]  # shift 1.0 vs 0.5 on 150 + 150 points: AUC ~0.76 vs ~0.64
    assert np.isnan(p.loc["test_accuracy", "ci_low_examples"])  # accuracy has no per-example scores here
    assert (result.out_dir / "compare.md").exists() and (result.out_dir / "paired.csv").exists()


def test_example_bootstrap_of_identical_models_is_zero():
    rng = np.random.default_rng(0)
    pairs = [(s, dict(s)) for s in (_scores(rng, 100, 1.0) for _ in range(3))]
    assert intervals.example_bootstrap(pairs, "audit_loss_auc", 200, 0.95) == (0.0, 0.0)
    assert intervals.example_bootstrap(pairs, "audit_auc", 200, 0.95) == (0.0, 0.0)
    # 100 non-members cannot give a TPR at 0.1% FPR: no interval rather than a one-sample number
    assert all(np.isnan(intervals.example_bootstrap(pairs, "audit_tpr_at_0.1pct_fpr", 200, 0.95)))


def test_methods_without_shared_seeds_name_the_seeds(store):
    cfg, *_ = store
    frame = runs.load_runs(str(cfg.tracking.uri), "cmp")
    with pytest.raises(ValueError, match=r"share no seeds.*seeds \[0, 1, 2, 3\].*seeds \[7, 8\]"):
        compare.pairs(frame, "a", "c")
    with pytest.raises(ValueError, match=r"no runs of 'zzz'"):
        compare.pairs(frame, "a", "zzz")


def test_bootstrap_count_below_100_is_an_error(store):
    cfg, *_ = store
    cfg.compare.n_bootstrap = 50
    with pytest.raises(ValueError, match=r"compare.n_bootstrap must be >= 100.*got 50"):
        run_stage(cfg)
    cfg.compare.n_bootstrap = 200


def test_frontier_envelope_and_interpolation():
    # (acc, auc): (0.5, 0.55) (0.6, 0.60) (0.7, 0.70) are the envelope; (0.55, 0.65) is dominated
    env = frontier.frontier_envelope([0.6, 0.5, 0.7, 0.55], [0.60, 0.55, 0.70, 0.65])
    np.testing.assert_allclose(env, [[0.5, 0.55], [0.6, 0.60], [0.7, 0.70]])
    assert frontier.frontier_auc(env, 0.4) == pytest.approx(0.55)  # below: the lowest AUC at acc >= 0.4
    assert frontier.frontier_auc(env, 0.55) == pytest.approx(0.575)  # halfway between 0.55 and 0.60
    assert frontier.frontier_auc(env, 0.65) == pytest.approx(0.65)
    assert frontier.frontier_auc(env, 0.7) == pytest.approx(0.70)
    assert np.isnan(frontier.frontier_auc(env, 0.71))  # more accurate than every frontier model
    # a more accurate model with lower AUC dominates everything below it
    env = frontier.frontier_envelope([0.5, 0.6, 0.9], [0.70, 0.80, 0.60])
    np.testing.assert_allclose(env, [[0.9, 0.60]])


def _frontier_frame():
    rows = []
    for seed in (0, 1, 2):
        for label, method, d, ep, acc, auc in (
            ("dst [ep=5]", "dst", 0.05, 5, 0.50, 0.55), ("dst [ep=15]", "dst", 0.05, 15, 0.60, 0.60),
            ("dst", "dst", 0.05, 30, 0.70, 0.70), ("dense", "dense", 1.0, 30, 0.80, 0.80),
            ("safecompress (bmia)", "safecompress", 0.05, 30, 0.65 + 0.01 * seed, 0.60),
        ):
            rows.append(dict(run_id=f"{label}-{seed}", dataset="p", target_density=d, seed=seed, label=label,
                             method=method, variant="", epochs=float(ep), test_accuracy=acc, audit_auc=auc))
    return pd.DataFrame(rows)


def test_frontier_excess_per_seed(tmp_path):
    frame = _frontier_frame()
    c = CompareConfig(a="safecompress", b="dst", n_bootstrap=200)
    table, plots = compare.frontier_table(frame, c, tmp_path)
    t = table.set_index("label")
    # seed s: acc 0.65 + 0.01 s on the segment (0.6, 0.6)-(0.7, 0.7): frontier AUC = acc; excess = 0.6 - acc
    expected = np.mean([0.60 - (0.65 + 0.01 * s) for s in (0, 1, 2)])
    assert t.loc["safecompress (bmia)", "excess_auc"] == pytest.approx(expected)
    assert t.loc["safecompress (bmia)", "excess_auc_ci_high"] < 0  # beats this frontier on every seed
    assert t.loc["dst", "excess_auc"] == pytest.approx(0.0) and t.loc["dst", "on_frontier"]
    assert set(t.index) >= {"dense", "dst [ep=5]"}  # dense rows join the density-0.05 table
    assert plots and plots[0].exists()


def test_frontier_table_names_reference_data_and_keeps_defences_off_the_frontier(tmp_path):
    """A RelaxLoss run of `dst` is judged against the frontier, not part of it (below it here, it
    would otherwise lower the frontier and its own excess would be 0); DMP's reference records show."""
    frame = _frontier_frame()
    extra = []
    for seed in (0, 1, 2):
        extra.append(dict(run_id=f"relax-{seed}", dataset="p", target_density=0.05, seed=seed, label="dst [relax=1.0]",
                          method="dst", variant="", epochs=30.0, test_accuracy=0.65, audit_auc=0.55,
                          **{"params.compress.relaxloss.enabled": "True"}))
        extra.append(dict(run_id=f"dmp-{seed}", dataset="p", target_density=0.05, seed=seed, label="dmp [ref=5000]",
                          method="dmp", variant="", epochs=30.0, test_accuracy=0.65, audit_auc=0.62,
                          defender_reference_size=5000.0))
    frame = pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)
    table, _ = compare.frontier_table(frame, CompareConfig(a="dmp", b="dst", n_bootstrap=200), tmp_path)
    t = table.set_index("label")
    assert not t.loc["dst [relax=1.0]", "on_frontier"]
    assert t.loc["dst [relax=1.0]", "excess_auc"] == pytest.approx(0.55 - 0.65)  # frontier there: AUC = acc
    assert t.loc["dmp [ref=5000]", "excess_auc"] == pytest.approx(0.62 - 0.65)
    shown = compare_tables.format_frontier(table).set_index("method")
    assert shown.loc["dmp [ref=5000]", "ref. data"] == "5,000"
    assert shown.loc["dst *", "ref. data"] == "0"


def test_epoch_budget_larger_than_the_methods_is_an_error(tmp_path):
    frame = _frontier_frame()
    c = CompareConfig(a="safecompress", b="dst", n_bootstrap=200, frontier=FrontierConfig(epoch_budgets=[5, 60]))
    with pytest.raises(ValueError, match=r"epoch_budgets \[60\] exceed the epochs of 'safecompress' \(30\)"):
        compare.frontier_table(frame, c, tmp_path)
    frame.loc[frame["label"] == "dst", "epochs"] = 45.0
    with pytest.raises(ValueError, match=r"epoch budgets \[45.0\] exceed the epochs of 'safecompress' \(30\)"):
        compare.frontier_table(frame, CompareConfig(a="safecompress", n_bootstrap=200), tmp_path)


def test_ambiguous_method_names_its_configurations():
    frame = _frontier_frame()
    metric = frame[frame["method"] == "safecompress"].assign(
        label="safecompress (metric)", variant="metric", run_id=lambda f: f["run_id"] + "m")
    frame = pd.concat([frame, metric], ignore_index=True)
    with pytest.raises(ValueError, match=r"'safecompress' matches several configurations.*'safecompress \(metric\)'"):
        compare.pairs(frame, "safecompress", "dst")
    # a label, or method/variant, picks one; "dst" is the label of the full-budget runs
    merged = compare.pairs(frame, "safecompress/metric", "dst [ep=15]")
    assert sorted(merged["seed"]) == [0, 1, 2]
    assert set(compare.pairs(frame, "safecompress (bmia)", "dst")["epochs_b"]) == {30.0}


def test_leakage_measure_is_the_max_of_the_named_metrics():
    frame = pd.DataFrame({"audit_auc": [0.9, 0.8], "audit_loss_auc": [0.6, 0.7],
                          "audit_lira_offline_auc": [0.65, 0.5]})
    out = frontier.with_leakage(frame, ["audit_loss_auc", "audit_lira_offline_auc"])
    np.testing.assert_allclose(out["audit_auc"], [0.65, 0.7])
    np.testing.assert_allclose(frame["audit_auc"], [0.9, 0.8])  # the input is left alone
    with pytest.raises(ValueError, match=r"\['audit_rmia_auc'\] are not logged.*audit_loss_auc"):
        frontier.with_leakage(frame, ["audit_rmia_auc"])


def test_front_hypervolume_by_hand():
    # (acc, auc) (0.5, 0.6) and (0.7, 0.8): as (1 - acc, auc) with reference (1, 1):
    # 0.5 * 0.4 + (0.7 - 0.5) * (1 - 0.8) = 0.2 + 0.04
    assert pareto.front_hypervolume([0.5, 0.7], [0.6, 0.8]) == pytest.approx(0.24)
    assert pareto.front_hypervolume([0.5, 0.7, 0.4], [0.6, 0.8, 0.7]) == pytest.approx(0.24)  # dominated
    assert pareto.front_hypervolume([], []) == 0.0


def test_study_pareto_trials_against_the_frontier():
    frame = _frontier_frame()
    trials = pd.DataFrame({
        "dataset": "p", "target_density": 0.05, "seed": "1", "trial_number": ["0", "1", "2"],
        "pareto_rank": ["0", "0", "1"], "test_accuracy": [0.65, 0.75, 0.6], "audit_auc": [0.60, 0.9, 0.9]})
    c = CompareConfig(study="s", n_bootstrap=200)
    t = compare.study_table(frame, trials, c).set_index("trial")
    assert list(t.index) == ["0", "1"]  # rank-1 trials are not on the study's front
    assert t.loc["0", "frontier_auc"] == pytest.approx(0.65)  # on the (0.6, 0.6)-(0.7, 0.7) segment
    assert t.loc["0", "excess_auc"] == pytest.approx(-0.05)
    assert t.loc["1", "frontier_auc"] == pytest.approx(0.75)  # between dst (0.7, 0.7) and dense (0.8, 0.8)
    assert t.loc["1", "excess_auc"] == pytest.approx(0.15)
    front = frame[(frame["seed"] == 1) & frame["method"].isin(["dst", "dense"])]
    hv_front = pareto.front_hypervolume(front["test_accuracy"], front["audit_auc"])
    assert t.loc["0", "hv_frontier"] == pytest.approx(hv_front)
    assert t.loc["0", "hv_union"] > hv_front  # the trial below the frontier adds area
    with pytest.raises(runs.NoRunsError, match="seed 9"):
        compare.study_table(frame, trials.assign(seed="9"), c)
    with pytest.raises(runs.NoRunsError, match="did not log test_accuracy"):
        compare.study_table(frame, trials.drop(columns="test_accuracy"), c)


def test_bad_input_found_late_leaves_nothing_half_written(store):
    cfg, *_ = store
    out = run_stage(cfg).out_dir  # a_vs_b, complete
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    cfg.compare.a, cfg.compare.b = "b", "a"  # a new comparison, b_vs_a
    cfg.compare.frontier.enabled = True
    cfg.compare.frontier.metrics = ["audit_nonexistent_auc"]  # fails after the paired table is computed
    try:
        with pytest.raises(ValueError, match=r"\['audit_nonexistent_auc'\] are not logged"):
            run_stage(cfg)
    finally:
        cfg.compare.a, cfg.compare.b = "a", "b"
        cfg.compare.frontier.enabled = False
        cfg.compare.frontier.metrics = ["audit_auc"]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no b_vs_a, no staging folder
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
