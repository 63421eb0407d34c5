"""A study is one question (issue 26): resuming it with another config or another data set is
refused before any work, naming what differs and the two ways out; run-time settings and the
searched keys are not part of the question; a study from before the record resumes with a warning."""

from __future__ import annotations

import logging
import shutil

import optuna
import pytest
from leftovers import assert_nothing_created
from test_data_files import _cfg as purchase_cfg
from test_data_files import _write_purchase

from pipeline.__main__ import run_stage
from pipeline.config import SearchConfig, to_schema
from pipeline.stages.search import study_identity
from pipeline.study import identity, storage


def _open(cfg, **kw):
    s = to_schema(SearchConfig, cfg.search)
    return storage.open_study(s, int(cfg.seed), identity=study_identity(cfg, s), **kw)


def _db(root):
    return f"sqlite:///{root}/mlruns/optuna.db"


def test_a_resumed_study_with_another_config_is_refused_before_any_work(cfg_factory, tmp_path):
    first = cfg_factory("experiment=smoke")
    shared = _open(first)  # the study the first command made (recorded, no trial needed here)
    name = shared.study.study_name
    cfg = cfg_factory("experiment=smoke", "compress.density=0.5", "search.n_trials=3")
    with pytest.raises(ValueError) as err:
        run_stage(cfg)
    text = str(err.value)
    assert f"study {name!r}" in text
    assert "compress.density: 0.2 → 0.5" in text
    assert "search.n_trials" not in text  # a run-time setting
    assert "search.study_name=<a new name>" in text
    derived = identity.derived_name(name, study_identity(cfg, to_schema(SearchConfig, cfg.search)))
    assert f"search.on_mismatch=new to start (or, later, resume) the study {derived!r}" in text
    # nothing was created: no other study, no MLflow store, no trained model
    assert optuna.get_all_study_names(_db(tmp_path)) == [name]
    assert optuna.load_study(study_name=name, storage=_db(tmp_path)).trials == []
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()
    assert not (tmp_path / ".cache" / "teacher").exists()


def test_on_mismatch_new_uses_a_derived_study_and_resumes_it_later(cfg_factory, tmp_path):
    name = _open(cfg_factory("experiment=smoke")).study.study_name
    other = cfg_factory("experiment=smoke", "seed=0", "train.epochs=3", "search.on_mismatch=new")
    shared = _open(other)
    derived = shared.study.study_name
    assert derived.startswith(f"{name}-") and shared.created
    again = _open(other)
    assert again.study.study_name == derived and not again.created  # resumed, not a third study
    assert sorted(optuna.get_all_study_names(_db(tmp_path))) == sorted([name, derived])
    with pytest.raises(ValueError, match="train.epochs: 2 → 3"):  # without the option: refused
        _open(cfg_factory("experiment=smoke", "train.epochs=3"))


@pytest.mark.parametrize(
    "overrides",
    [
        ["search.n_trials=5", "search.n_workers=2", "search.population_size=3"],
        ["runtime.n_threads=2", "runtime.batched_probes=false", "tracking.enabled=false"],
        ["search.heartbeat_interval=2", "search.grace_period=10", "search.on_mismatch=new"],
        ["compress.regrowth.start=0.3", "compress.density_schedule.kind=linear"],  # searched keys
        ["search.space.0.high=0.4"],  # a range, not what a trial answers
        ["attack.reference=both"],  # the final audit's; trials use attack.search_reference
    ],
    ids=["counts", "runtime-tracking", "heartbeats", "searched-keys", "range", "final-reference"],
)
def test_run_time_settings_and_searched_keys_are_not_the_question(cfg_factory, overrides):
    base = cfg_factory("experiment=smoke")
    cfg = cfg_factory("experiment=smoke", *overrides)
    s = to_schema(SearchConfig, cfg.search)
    assert study_identity(cfg, s) == study_identity(base, to_schema(SearchConfig, base.search))


def test_the_identity_holds_the_model_seed_attack_and_what_is_searched(cfg_factory):
    def ident(*o):
        c = cfg_factory("experiment=smoke", *o)
        return study_identity(c, to_schema(SearchConfig, c.search))

    base = ident()
    assert "paths.root" not in base.values and "search.storage" not in base.values
    assert base.values["search.space_keys"][0] == "compress.density_schedule.kind"
    for o in ("model.hidden_sizes=[16]", "seed=1", "attack.search_reference=matched", "shadows.n_models=3",
              "+search.constraints={accuracy_min: 0.3}", "search.objectives=[accuracy,density]"):
        assert ident(o).digest != base.digest, o
    assert ident("paths.root=/elsewhere").digest == base.digest


def test_a_changed_data_file_is_a_different_question(tmp_path):
    data = tmp_path / "data" / "dataset_purchase"
    _write_purchase(data, seed=0)
    cfg = purchase_cfg(tmp_path, tmp_path / "data")
    name = _open(cfg).study.study_name

    moved = tmp_path / "elsewhere" / "dataset_purchase"  # the same data in another folder: same study
    moved.parent.mkdir()
    shutil.copy(data, moved)
    assert not _open(purchase_cfg(tmp_path, tmp_path / "elsewhere")).created

    _write_purchase(data, seed=1)  # replaced by other data at the same path
    with pytest.raises(ValueError) as err:
        run_stage(cfg)  # the whole command (stage=search): refused before any work
    text = str(err.value)
    assert f"study {name!r}" in text and "\n  data: " in text and "a data file changed" in text
    assert optuna.get_all_study_names(_db(tmp_path)) == [name]
    assert optuna.load_study(study_name=name, storage=_db(tmp_path)).trials == []
    assert not (tmp_path / ".cache" / "teacher").exists()


def test_a_legacy_study_resumes_with_a_warning_and_is_recorded(cfg_factory, tmp_path, caplog):
    cfg = cfg_factory("experiment=smoke")
    s = to_schema(SearchConfig, cfg.search)
    (tmp_path / "mlruns").mkdir()
    legacy = optuna.create_study(study_name=s.study_name, storage=_db(tmp_path), directions=["maximize", "minimize"])
    legacy.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    with caplog.at_level(logging.WARNING):
        shared = _open(cfg)
    assert not shared.created
    assert "did not record what it answers" in caplog.text
    attrs = optuna.load_study(study_name=s.study_name, storage=_db(tmp_path)).user_attrs
    assert attrs[identity.DIGEST_ATTR] == study_identity(cfg, s).digest  # checked from now on
    with pytest.raises(ValueError, match="compress.density: 0.2 → 0.3"):
        _open(cfg_factory("experiment=smoke", "compress.density=0.3"))


def test_settings_a_newer_version_added_at_their_off_default_do_not_differ():
    old = {"train.lr": 0.1, "data": "k"}
    new = {"train.lr": 0.1, "data": "k", "compress.new_switch": False, "compress.new_list": []}
    assert identity.differences(old, new) == []
    assert identity.differences(old, {**new, "compress.new_knob": 3}) == [
        ("compress.new_knob", identity._ABSENT, 3)
    ]
    assert identity.differences(old, {**new, "train.lr": 0.2}) == [("train.lr", 0.1, 0.2)]


def test_nothing_is_created_when_refused_on_a_fresh_root(cfg_factory, tmp_path):
    """A refusal from the config alone (here an unknown on_mismatch) leaves no study store."""
    with pytest.raises(ValueError, match="search.on_mismatch"):
        run_stage(cfg_factory("experiment=smoke", "search.on_mismatch=ask"))
    assert_nothing_created(tmp_path)


def test_a_users_model_source_and_checkpoint_count_by_content(cfg_factory, tmp_path, monkeypatch):
    src = tmp_path / "pkg_w26" / "w26_net.py"
    src.parent.mkdir()
    src.write_text("from torch import nn\n\nclass Net(nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(src.parent))
    ckpt = tmp_path / "a" / "teacher.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights-1")

    def ident(*o):
        c = cfg_factory("experiment=smoke", "model=custom", "model._target_=w26_net.Net", *o)
        return study_identity(c, to_schema(SearchConfig, c.search)).digest

    base = ident(f"teacher.checkpoint={ckpt}")
    moved = tmp_path / "b" / "teacher.pt"
    moved.parent.mkdir()
    moved.write_bytes(ckpt.read_bytes())
    assert ident(f"teacher.checkpoint={moved}") == base  # where it lies is not the question
    ckpt.write_bytes(b"weights-2")
    assert ident(f"teacher.checkpoint={ckpt}") != base
    ckpt.write_bytes(b"weights-1")
    src.write_text(src.read_text() + "\n# an edited class\n")
    assert ident(f"teacher.checkpoint={ckpt}") != base
