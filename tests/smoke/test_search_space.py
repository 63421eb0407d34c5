"""Search space and objectives as config: bad input fails before any trial or MLflow run exists;
the presets in conf/search/ run, and every trial's run carries its tags."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipeline.__main__ import run_stage

pytestmark = pytest.mark.smoke


def _space(entry: str) -> str:
    return f"search.space=[{entry}]"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            _space("{key: compress.regrowth.startt, type: float, low: 0.1, high: 0.5}"),
            "does not exist",
        ),
        (
            _space("{key: compress.regrowth.start, type: float, low: 0.5, high: 0.1}"),
            "low=0.5 > high=0.1",
        ),
        (_space("{key: compress.density, type: float, low: 0.0, high: 0.5, log: true}"), "low > 0"),
        (
            _space("{key: compress.regrowth.kind, type: categorical, choices: []}"),
            "non-empty choices",
        ),
        (
            _space("{key: compress.regrowth.start, type: uniform, low: 0.1, high: 0.5}"),
            "unknown type",
        ),
        ("search.objectives=[accuracy, attack_aucc]", "unknown search.objectives entry 'attack_aucc'; valid: \\['accuracy'"),
        ("+search.constraints={accuracy_atleast: 0.5}", "unknown search constraint"),
        ("search.storage=postgresql://nouser@127.0.0.1:1/x", "cannot open Optuna storage"),
        ("search.storage=sqlite:///{root}/a_file/optuna.db", "cannot open Optuna storage"),
        (_space("{key: compress.selection.lam, type: float, low: 0.1, high: 3.0}"),
         r"only acts under compress.selection.rule=weighted.*\['lexicographic'\]"),
        ("search=dmp_knobs", r"\['compress.dmp.member_weight', 'compress.dmp.temperature'\] only act under "
                             r"compress=dmp .*compress=safecompress"),
    ],
    ids=[
        "unknown-key",
        "low-gt-high",
        "log-zero",
        "no-choices",
        "bad-type",
        "objective",
        "constraint",
        "postgres-unreachable",
        "sqlite-unwritable",
        "lambda-without-weighted",
        "dmp-knobs-without-dmp",
    ],
)
def test_bad_search_input_fails_before_any_trial(cfg_factory, tmp_path, override, message):
    (tmp_path / "a_file").write_text("a file, not a folder")
    cfg = cfg_factory("experiment=smoke", override.replace("{root}", str(tmp_path)))
    with pytest.raises(ValueError, match=message):
        run_stage(cfg)  # the entry point's one validation pass, then the stage (storage errors)
    # Nothing was started: no MLflow store, no trained teacher, no trial.
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()
    assert not (tmp_path / ".cache").exists()
    db = tmp_path / "mlruns" / "optuna.db"
    if db.exists():
        summaries = optuna.get_all_study_summaries(storage=f"sqlite:///{db}")
        assert all(s.n_trials == 0 for s in summaries)


def test_bad_input_is_also_refused_by_the_cli_entry(cfg_factory, tmp_path):
    cfg = cfg_factory("experiment=smoke", "search.objectives=[accuracy, nonsense]")
    with pytest.raises(ValueError, match="nonsense"):
        run_stage(cfg)
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def _children(cfg, study_name: str):
    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    exp = client.get_experiment_by_name(str(cfg.tracking.experiment))
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.study_name = '{study_name}'"
    )
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_presets_search_their_space_and_tag_every_trial(cfg_factory):
    # selection λ joins the space: each trial logs it as a param and applies it to its config.
    cfg = cfg_factory("experiment=smoke", "search=schedule_regrowth_lambda")
    res = run_stage(cfg)
    assert res.n_complete == 2
    children = _children(cfg, res.study_name)
    assert len(children) == 2
    for r in children:
        lam = float(r.data.params["compress.selection.lam"])
        assert 0.1 <= lam <= 10.0
        assert r.data.params["compress.selection.rule"] == "weighted"  # lambda acts only there
        tags = r.data.tags
        for tag in (
            "teacher_key",
            "shadow_keys",
            "compress_key",
            "attack_key",
            "git_commit",
            "study_name",
            "trial_number",
            "pareto_rank",
            "worker",
        ):
            assert tags.get(tag), f"trial run lacks tag {tag}"
        assert tags["study_name"] == res.study_name
        assert tags["git_commit"] != "unknown"
        config_yaml = Path(r.info.artifact_uri.removeprefix("file://")) / "config.yaml"
        assert f"lam: {lam}" in config_yaml.read_text()

    # Density searched log-uniformly, with model size as the third objective.
    cfg = cfg_factory("experiment=smoke", "search=with_density")
    res = run_stage(cfg)
    study = optuna.load_study(study_name=res.study_name, storage=str(cfg.search.storage))
    assert study.metric_names == ["accuracy", "attack_auc", "model_size_bytes"]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        assert 0.01 <= t.params["compress.density"] <= 0.5
        assert (
            abs(t.user_attrs["density"] - t.params["compress.density"]) < 0.01
        )  # the trial used it
        assert t.values[2] == t.user_attrs["model_size_bytes"]
    assert set(res.pareto.columns) >= {"accuracy", "attack_auc", "model_size_bytes", "pareto_rank"}
