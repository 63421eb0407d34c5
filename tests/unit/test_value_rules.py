"""Value rules declared once on the schema dataclasses (`training.rules`), checked by one walker at
the entry point; a search's space is checked against the same declared rules (issue 28)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf, open_dict

from pipeline.config import RootConfig, SearchParam
from pipeline.search_validation import validate_search_values
from pipeline.validation import _relate, typed_groups, validate
from training.recipes import CompressConfig, SafetyConfig, StrategyConfig
from training.rules import Rule, check_rules, declared_keys, find_rule

# Every range and choice the hand-written checks of pipeline/validation.py refused before the rules
# were declared (issue 28, b66268f), with a value each refused: (key, bad value, key in the message).
OLD_CHECKS = [
    ("train.epochs", 0, None), ("train.batch_size", 0, None), ("train.optimizer", "lbfgs", None),
    ("train.lr_schedule", "step", None), ("train.lr", 0.0, None),
    ("shadows.n_models", -1, None), ("shadows.member_fraction", 1.0, None), ("shadows.recipe", "big", None),
    ("shadows.pool", "everything", None),
    ("compress.method", "magic", None), ("compress.density", 0.0, None), ("compress.epochs", 0, None),
    ("compress.update_every", 0, None), ("compress.n_candidates", 0, None), ("compress.probe_steps", 0, None),
    ("compress.stop_fraction", 1.5, None), ("compress.init", "zeros", None), ("compress.variant", "x", None),
    ("compress.selection.rule", "best", None), ("compress.selection.lam", -1.0, None),
    ("compress.selection.delta", -1.0, None), ("compress.selection.z", -1.0, None),
    ("compress.safety.mmia_members", ["metric", "lira"], None), ("compress.safety.mmia_combine", "sum", None),
    ("compress.safety.attacker_epochs", 0, None), ("compress.safety.attacker_refresh_epochs", -1, None),
    ("compress.safety.holdout_fraction", 0.0, None),
    ("compress.adversarial.kind", "all", None), ("compress.adversarial.lam", -0.1, None),
    ("compress.adversarial.warmup_fraction", 1.0, None),
    ("compress.distill.temperature", 0.0, None), ("compress.distill.weight", 1.5, None),
    ("compress.dp.epsilon", 0.0, None), ("compress.dp.max_grad_norm", 0.0, None),
    ("compress.dp.grad_sample_mode", "fast", None), ("compress.dp.tune_lr", [0.1, 0.0], None),
    ("compress.dp.tune_max_grad_norm", [-1.0], None),
    ("compress.strategies.0.prune", "largest", "compress.strategies[0].prune"),
    ("compress.strategies.0.grow", "best", "compress.strategies[0].grow"),
    ("compress.strategies.0.distill_weight", 1.5, "compress.strategies[0].distill_weight"),
    ("compress.strategies.0.distill_temperature", 0.0, "compress.strategies[0].distill_temperature"),
    ("compress.strategies.0.relaxloss_alpha", -1.0, "compress.strategies[0].relaxloss_alpha"),
    ("compress.density_schedule.kind", "zigzag", None), ("compress.density_schedule.start", 0.0, None),
    ("compress.density_schedule.begin", -0.1, None), ("compress.density_schedule.end", 1.5, None),
    ("compress.regrowth.kind", "zigzag", None), ("compress.regrowth.start", 1.0, None),
    ("compress.regrowth.end", 1.0, None),
    ("compress.relaxloss.alpha", 0.0, None), ("compress.relaxloss.upper", 1.5, None),
    ("compress.dmp.temperature", 0.0, None), ("compress.dmp.member_weight", 1.0, None),
    ("compress.dmp.low_entropy_fraction", 0.0, None),
    ("attack.reference", "mixed", None), ("attack.search_reference", "mixed", None),
    ("attack.n_bootstrap", 50, None), ("attack.query_views", "mirror", None), ("attack.query_shift", 0, None),
    ("search.n_trials", 0, None), ("search.n_workers", 0, None), ("search.population_size", 1, None),
    ("search.heartbeat_interval", 0, None), ("search.grace_period", 0, None),
    ("search.on_mismatch", "merge", None), ("search.objectives", ["accuracy", "speed"], None),
    ("tracking.call_timeout_s", 0.0, None),
    ("cache.action", "purge", None), ("cache.stages", ["teacher", "nosuch"], None),
]


def test_every_old_check_is_a_declared_rule_and_every_rule_is_in_the_table():
    declared = {k.replace("[0]", ".0") for k in declared_keys(RootConfig())}
    old = {key for key, _, _ in OLD_CHECKS}
    assert old - declared == set(), "a range or choice the old checks refused has no declared rule"
    assert declared - old == set(), "a declared rule this table does not exercise"


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory):
    from conftest import make_cfg

    return make_cfg(["experiment=smoke", "stage=cache"], tmp_path_factory.mktemp("rules"))


@pytest.mark.parametrize(("key", "bad", "shown"), OLD_CHECKS, ids=[k for k, _, _ in OLD_CHECKS])
def test_each_old_check_still_refuses_naming_key_value_and_allowed(base_cfg, key, bad, shown):
    cfg = base_cfg.copy()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, bad, merge=False)
    rule = find_rule(RootConfig(), key)
    with pytest.raises(ValueError) as err:
        validate(cfg)
    message = str(err.value)
    assert (shown or key) in message, message
    shown_bad = [v for v in bad if not rule.admits(v)][0] if isinstance(bad, list) else bad
    assert repr(shown_bad) in message or str(shown_bad) in message, message
    assert rule.describe().split(" (")[0] in message or str(list(rule.allowed_choices() or ())) in message


def test_the_walker_names_the_full_key_of_a_nested_field_and_a_list_entry():
    c = CompressConfig(safety=SafetyConfig(holdout_fraction=1.0))
    with pytest.raises(ValueError, match=r"^compress.safety.holdout_fraction must be in \(0, 1\), got 1.0$"):
        check_rules(c, "compress")
    c = CompressConfig(strategies=[StrategyConfig(), StrategyConfig(distill_temperature=-2.0)])
    with pytest.raises(ValueError, match=r"^compress.strategies\[1\].distill_temperature must be > 0, got -2.0$"):
        check_rules(c, "compress")
    c = CompressConfig(safety=SafetyConfig(mmia_members=["metric", "lira"]))
    with pytest.raises(ValueError, match=r"unknown compress.safety.mmia_members entry 'lira'; valid: \['metric'"):
        check_rules(c, "compress")
    check_rules(CompressConfig(), "compress")  # the defaults pass
    check_rules(RootConfig())


def test_a_rule_states_its_values_and_none_or_a_bool_are_no_numbers():
    r = Rule(ge=100, also=(0,), why="(0: off)")
    assert r.describe() == "0 or >= 100 (0: off)" and r.admits(0) and r.admits(100) and not r.admits(50)
    assert Rule(gt=0, le=1).describe() == "in (0, 1]" and Rule(ge=0, lt=1).describe() == "in [0, 1)"
    assert Rule(gt=0).admits(None)  # an Optional field left unset
    assert not Rule(ge=0).admits(True) and not Rule(ge=0).admits("3")
    assert Rule(ge=1, also=("auto",)).admits(" AUTO") and not Rule(choices=("sgd",)).admits("SGD")
    assert find_rule(RootConfig(), "compress.strategies.3.grow") is find_rule(RootConfig(), "compress.strategies.0.grow")
    assert find_rule(RootConfig(), "compress.strategies") is None and find_rule(RootConfig(), "model.x") is None


def _space(cfg, *entries):
    with open_dict(cfg):
        cfg.search.space = [SearchParam(**e) for e in entries]
    return cfg


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"key": "compress.safety.holdout_fraction", "type": "float", "low": 0.2, "high": 1.0},
         r"search space compress.safety.holdout_fraction: the value 1.0 would fail every trial that draws it: "
         r"compress.safety.holdout_fraction must be in \(0, 1\), got 1.0"),
        ({"key": "compress.update_every", "type": "int", "low": 0, "high": 5},
         r"compress.update_every: the value 0 would fail .*must be >= 1, got 0"),
        ({"key": "compress.init", "type": "categorical", "choices": ["erk", "zeros"]},
         r"compress.init: the value 'zeros' would fail .*valid: \['erk', 'uniform', 'teacher'\]"),
        # a cross-field rule the value breaks: with_candidates pairs need an even count
        ({"key": "shadows.n_models", "type": "categorical", "choices": [4, 3]},
         r"shadows.n_models: the value 3 would fail .*must be even, got 3"),
        # the type of the field
        ({"key": "compress.density", "type": "categorical", "choices": [0.1, "dense"]},
         r"compress.density: the value 'dense' would fail every trial"),
    ],
    ids=["float-end", "int-end", "choice", "cross-field", "type"],
)
def test_the_search_checks_each_drawn_value_against_the_fields_rule(base_cfg, entry, message):
    cfg = base_cfg.copy()
    with open_dict(cfg):
        cfg.shadows.pool, cfg.shadows.n_models = "with_candidates", 4
    cfg = _space(cfg, entry)
    groups = typed_groups(cfg)
    with pytest.raises(ValueError, match=message):
        validate_search_values(cfg, groups["search"].space, _relate(groups))


def test_the_search_reads_only_the_searched_value_not_every_group_again(base_cfg, monkeypatch):
    cfg = _space(base_cfg.copy(), {"key": "compress.density", "type": "float", "low": 0.05, "high": 1.0},
                 {"key": "compress.regrowth.kind", "type": "categorical", "choices": ["cosine", "linear"]})
    groups = typed_groups(cfg)
    read = []
    import pipeline.validation as validation

    real = validation.to_schema
    monkeypatch.setattr(validation, "to_schema", lambda schema, node: read.append(schema.__name__) or real(schema, node))
    monkeypatch.setattr(validation, "check_rules", lambda *a: pytest.fail("the declared rules were walked again"))
    validate_search_values(cfg, groups["search"].space, _relate(groups))
    assert read == ["CompressConfig"] * 4  # each value's own group, once
