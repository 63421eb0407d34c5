"""Bad options fail before any training, naming the value and the valid ones."""

import pytest
from hydra.errors import ConfigCompositionException

from pipeline.__main__ import run_stage
from pipeline.validation import validate


@pytest.mark.parametrize(
    "override, message",
    [
        ("stage=bogus", "unknown stage 'bogus'; valid"),
        ("compress.density=0", "compress.density must be in \\(0, 1\\]"),
        ("compress.density=1.5", "compress.density must be in \\(0, 1\\]"),
        ("shadows.n_models=-1", "shadows.n_models must be >= 0"),
        ("compress.n_candidates=0", "compress.n_candidates must be >= 1"),
        ("compress.probe_steps=0", "compress.probe_steps must be >= 1"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("compress.method=magic", "unknown compress.method 'magic'; valid"),
        ("train.optimizer=lbfgs", "unknown train.optimizer 'lbfgs'; valid"),
        ("search.objectives=[accuracy,speed]", "unknown search.objectives entry 'speed'; valid"),
        ("attack.n_bootstrap=10", "attack.n_bootstrap must be 0 or >= 100 \\(0: off\\), got 10"),
        ("compress.density_schedule.begin=0.9", "window"),
        ("compress.strategies=[{prune: magnitude, grow: random}, {prune: random, grow: random}]",
         "unknown compress.strategies\\[1\\].prune 'random'; valid: \\['magnitude', 'set', 'taylor'\\]"),
        ("compress.strategies=[{prune: magnitude, grow: best}]", "unknown compress.strategies\\[0\\].grow 'best'"),
        ("compress.density_schedule.kind=bogus", "unknown compress.density_schedule.kind 'bogus'; valid"),
        ("compress.regrowth.kind=bogus", "unknown compress.regrowth.kind 'bogus'; valid"),
        ("+attack.audit.lira_offline.variance=bogus", "attack.audit: attack 'lira_offline': variance must be one of"),
        ("attack.primary=bogus", "attack.primary='bogus' must be 'max' or one of"),
        ("compress.selection.lam=-1", "compress.selection.lam must be >= 0, got -1"),
        ("runtime.device=tpu", "unknown runtime.device 'tpu'; valid: \\['cpu', 'cuda'"),
    ],
)
def test_bad_values_raise_before_training(cfg_factory, monkeypatch, override, message):
    def no_training(*args, **kwargs):
        raise AssertionError("a model was trained before the bad value was reported")

    monkeypatch.setattr("pipeline.stages.teacher.train", no_training)
    cfg = cfg_factory("experiment=smoke", "stage=attack", override)
    with pytest.raises(ValueError, match=message):
        run_stage(cfg)


def test_unknown_group_option_lists_the_valid_ones(cfg_factory):
    with pytest.raises(ConfigCompositionException, match="digits"):
        cfg_factory("dataset=imagenet")


def test_split_fractions_over_one_raise(cfg_factory):
    from pipeline.context import load_data

    cfg = cfg_factory("experiment=smoke", "dataset.split.train=0.9")
    with pytest.raises(ValueError, match="sum to at most 1"):
        load_data(cfg)


def test_unknown_model_and_attack_names(cfg_factory):
    from pipeline.context import RunContext, build_model, load_data
    from pipeline.stages.attack import attack_config

    cfg = cfg_factory("experiment=smoke", "model._target_=training.models.Transformer")
    with pytest.raises(ValueError, match="unknown model .* valid"):
        build_model(RunContext.build(cfg), load_data(cfg))
    cfg = cfg_factory("experiment=smoke", "+attack.audit.telepathy={}")
    with pytest.raises(ValueError, match="unknown attack.*telepathy.*valid"):
        attack_config(cfg)


def test_the_default_config_validates(cfg_factory):
    validate(cfg_factory())
    validate(cfg_factory("experiment=smoke"))


def test_a_missing_gpu_is_reported_before_training(cfg_factory, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = cfg_factory("experiment=smoke", "runtime.device=cuda")
    with pytest.raises(ValueError, match="runtime.device='cuda' but torch .* sees no CUDA device"):
        run_stage(cfg)


def test_an_audit_mapping_replaces_the_schemas_default_attacks(cfg_factory):
    # a mapping merged into the schema used to keep the default's entries: an attack option file
    # (or `~attack.audit.lira_offline`) listing only the loss attack still ran offline
    # LiRA (and trained its shadows) while the cache key said loss only
    from pipeline.stages.attack import attack_config

    cfg = cfg_factory("experiment=smoke", "~attack.audit.lira_offline")
    assert list(attack_config(cfg).audit) == ["loss"]
    assert list(attack_config(cfg_factory("experiment=smoke")).audit) == ["loss", "lira_offline"]


# ------------------------------------------------------------------ the root schema (ConfigStore)


@pytest.mark.parametrize(
    "override, key",
    [
        ("compress.densty=0.1", "compress.densty"),  # a misspelled key
        ("train.epochs=2.5", "train.epochs"),  # a wrong type
        ("compress.adversarial.enabled=maybe", "compress.adversarial.enabled"),
        ("seed=first", "seed"),
        ("runtime.progress=sometimes", "runtime.progress"),
        ("tracking.enabled=perhaps", "tracking.enabled"),
    ],
)
def test_hydra_refuses_unknown_keys_and_wrong_types_at_composition(cfg_factory, override, key):
    with pytest.raises(ConfigCompositionException) as err:
        cfg_factory("experiment=smoke", override)
    text = f"{err.value} {err.value.__cause__}"
    assert key.rsplit(".", 1)[-1] in text, text


@pytest.mark.parametrize("override", ["+train.epoch=3", "+tracking.urii=sqlite:///x.db", "+compress.safety.depth=2"])
def test_keys_appended_with_plus_are_checked_by_the_validation_pass(cfg_factory, override):
    # Hydra lets `+key=value` add a key the schema lacks; the one validation pass refuses it
    cfg = cfg_factory("experiment=smoke", override)
    key = override[1:].split("=")[0]
    with pytest.raises(ValueError, match=f"config key {key}: Key '{key.rsplit('.', 1)[-1]}' not in"):
        validate(cfg)
    validate(cfg_factory("experiment=smoke", "+dataset.canaries=4"))  # `_target_` groups take new keys


def test_the_root_schema_types_the_composed_config(cfg_factory):
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from pipeline.config import SCHEMA_NAME, CompressConfig, RootConfig

    assert f"{SCHEMA_NAME}.yaml" in ConfigStore.instance().list("")
    cfg = cfg_factory("experiment=smoke", "compress=dense")
    assert OmegaConf.get_type(cfg) is RootConfig
    assert OmegaConf.get_type(cfg.compress) is CompressConfig
    assert isinstance(cfg.compress.density, float)  # dense.yaml's 1.0, typed
    # `_target_` groups keep their own keys (their constructors are their schemas)
    assert cfg.dataset._target_ == "training.embedded.load_synthetic"


def test_each_group_mapping_replaces_the_schema_default_under_the_root_schema(cfg_factory):
    # the root schema has no default audit, so an attack option's mapping is the whole audit
    assert list(cfg_factory("experiment=smoke").attack.audit) == ["loss", "lira_offline"]
    full = cfg_factory("experiment=smoke", "attack=full").attack.audit
    assert list(full)[:3] == ["loss", "lira_offline", "confidence"] and len(full) == 9


def test_as_dict_and_as_dictconfig_accept_a_mapping_and_name_anything_else(cfg_factory):
    from omegaconf import OmegaConf

    from pipeline.config import as_dict, as_dictconfig

    cfg = cfg_factory()
    plain = as_dict(cfg)
    assert isinstance(plain, dict) and plain["seed"] == cfg.seed and isinstance(plain["train"], dict)
    assert as_dict(OmegaConf.create({"a": 1, "b": "${a}"})) == {"a": 1, "b": 1}  # resolved
    assert as_dictconfig(cfg) is cfg
    with pytest.raises(TypeError, match="a worker's config must be a mapping of keys to values, got ListConfig"):
        as_dictconfig(OmegaConf.create("[1, 2]"), "a worker's config")
    with pytest.raises(TypeError, match="model must be a mapping"):
        as_dict(OmegaConf.create(["x"]), "model")


def test_a_search_param_gives_its_bounds_and_choices_or_names_what_is_missing():
    from pipeline.config import SearchParam

    assert SearchParam("train.lr", "float", 0.01, 0.1).bounds() == (0.01, 0.1)
    assert SearchParam("compress.selection.rule", "categorical", choices=["a", "b"]).choice_list() == ["a", "b"]
    with pytest.raises(ValueError, match="'train.epochs': int needs low and high"):
        SearchParam("train.epochs", "int", low=1).bounds()
    with pytest.raises(ValueError, match="'x': categorical needs a non-empty choices list"):
        SearchParam("x", "categorical", choices=[]).choice_list()
