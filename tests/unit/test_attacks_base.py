"""Registry, make_attack, run_audit/AuditResult and the in-loop loss_attack_auc."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import attacks
from attacks import ATTACKS, AttackInputs, MissingInputError, Signals, make_attack, run_audit

CONTRACT_NAMES = {
    "loss",
    "confidence",
    "entropy",
    "modified_entropy",
    "lira_offline",
    "lira_online",
    "rmia",
}


def leaky_inputs(n=400, k=6, seed=0):
    """Members get higher true-class logits; references are OUT on every point."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n // 2, int), np.zeros(n // 2, int)]
    y = rng.integers(0, 3, n)

    def sig(boost):
        z = rng.normal(0, 1, (n, 3)).astype(np.float32)
        z[np.arange(n), y] += 1.0 + boost
        return Signals(z, y)

    target = sig(1.5 * labels)
    refs = [sig(0.0) for _ in range(k)]
    return AttackInputs(target=target, references=refs), labels


def test_registry_lists_the_contract_names():
    assert CONTRACT_NAMES <= set(ATTACKS)


def test_unknown_attack_lists_valid_names():
    with pytest.raises(ValueError, match="valid: .*'lira_offline'.*'loss'"):
        make_attack("lira_ofline")


def test_bad_parameter_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown parameter.*'varience'.*valid: \\['variance', 'per_example_min'\\]"):
        make_attack("lira_offline", varience="global")
    with pytest.raises(ValueError, match="variance must be one of"):
        make_attack("lira_offline", variance="pooled")


def test_run_audit_table_scores_roc_and_files(tmp_path):
    inputs, labels = leaky_inputs()
    result = run_audit(
        inputs,
        {
            "loss": {},
            "lira_offline": {},
            "lira_pe": {"attack": "lira_offline", "variance": "per_example"},
        },
        labels,
        n_bootstrap=100,
        seed=1,
    )
    assert list(result.table.index) == ["loss", "lira_offline", "lira_pe"]
    for col in (
        "auc",
        "tpr_at_1pct_fpr",
        "balanced_accuracy",
        "advantage",
        "auc_ci_low",
        "auc_ci_high",
    ):
        assert col in result.table.columns
    assert (result.table["auc"] > 0.75).all()
    assert result.scores["loss"].shape == (len(labels),)
    result.to_csv(tmp_path / "audit.csv")
    back = pd.read_csv(tmp_path / "audit.csv", index_col="attack")
    assert back.loc["loss", "auc"] == pytest.approx(result.table.loc["loss", "auc"])
    result.roc_to_csv(tmp_path / "roc.csv")
    assert set(pd.read_csv(tmp_path / "roc.csv")["attack"]) == {"loss", "lira_offline", "lira_pe"}
    result.plot_roc(tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 1000


def test_run_audit_missing_inputs_raise_or_are_skipped_with_reason():
    inputs, labels = leaky_inputs()
    target_only = AttackInputs(target=inputs.target)
    with pytest.raises(MissingInputError, match="references"):
        run_audit(target_only, ["loss", "lira_offline"], labels)
    result = run_audit(target_only, ["loss", "lira_offline"], labels, skip_missing=True)
    assert list(result.table.index) == ["loss"]
    assert "references" in result.skipped["lira_offline"]
    # online LiRA with only OUT references is a missing input too
    result = run_audit(inputs, ["lira_online"] + ["loss"], labels, skip_missing=True)
    assert "IN reference" in result.skipped["lira_online"]


def test_run_audit_bad_labels_and_names():
    inputs, labels = leaky_inputs()
    with pytest.raises(ValueError, match="labels has 10 entries"):
        run_audit(inputs, ["loss"], labels[:10])
    with pytest.raises(ValueError, match="single membership class"):
        run_audit(inputs, ["loss"], np.ones_like(labels))
    with pytest.raises(ValueError, match="unknown attack"):
        run_audit(inputs, ["los"], labels)


def test_attack_inputs_validate_shapes():
    inputs, _ = leaky_inputs(n=10, k=2)
    with pytest.raises(ValueError, match="references\\[0\\] has 5 points"):
        AttackInputs(target=inputs.target, references=[inputs.target.subset(np.arange(5))])
    with pytest.raises(ValueError, match="reference_in has shape"):
        AttackInputs(
            target=inputs.target, references=inputs.references, reference_in=np.zeros((3, 10), bool)
        )


class Memorizer(nn.Module):
    """Predicts the stored label for stored inputs, uniform elsewhere."""

    def __init__(self, x, y, n_classes=4):
        super().__init__()
        self.x, self.y, self.n_classes = x, y, n_classes

    def forward(self, x):
        hit = (torch.cdist(x, self.x) < 1e-3).float()  # (n, n_mem)
        return 10.0 * hit @ nn.functional.one_hot(self.y, self.n_classes).float()


def test_loss_attack_auc_is_one_for_a_memorizer_and_half_for_unseen():
    g = torch.Generator().manual_seed(0)
    xm, ym = torch.randn(30, 3, generator=g), torch.randint(0, 4, (30,), generator=g)
    xn, yn = torch.randn(40, 3, generator=g), torch.randint(0, 4, (40,), generator=g)
    model = Memorizer(xm, ym)
    assert attacks.loss_attack_auc(model, xm, ym, xn, yn) == 1.0
    assert attacks.loss_attack_auc(Memorizer(torch.randn(5, 3), ym[:5]), xm, ym, xn, yn) == 0.5


def test_every_registered_attack_declares_what_it_needs_and_a_class_that_does_not_is_refused():
    from attacks import registry

    for name in registry.ATTACKS:
        attack = registry.make_attack(name)
        assert isinstance(attack.requires, tuple) and isinstance(attack.wants, tuple), name
        assert isinstance(attack.needs_grads, bool), name
        assert set(attack.requires) | set(attack.wants) <= set(AttackInputs.__dataclass_fields__), name

    class Undeclared:  # fit and score, but no `wants` / `needs_grads`
        requires = ()

        def fit(self, inputs):
            return self

        def score(self, inputs):
            return inputs

    with pytest.raises(ValueError, match=r"does not declare \['wants', 'needs_grads'\]"):
        registry.register("undeclared", Undeclared)
    assert "undeclared" not in registry.ATTACKS


def test_which_attacks_need_references_comes_from_what_they_declare():
    """validation asks the registry (no hand list): an MMIA whose member is LiRA needs references
    although its own name is none of LiRA's, and online LiRA needs references IN the audit points."""
    from attacks import registry
    from pipeline.config import AttackConfig, ShadowsConfig
    from pipeline.validation import validate_references

    assert {n for n in registry.ATTACKS if registry.uses_references(registry.make_attack(n))} == {
        "lira_offline", "lira_online", "rmia", "shadow"}
    assert {n for n in registry.ATTACKS if registry.needs_in_references(registry.make_attack(n))} == {"lira_online"}
    none = ShadowsConfig(n_models=0)
    validate_references(AttackConfig(audit={"loss": {}, "mmia": {}}), none)  # loss + NN members: no references
    with pytest.raises(ValueError, match=r"shadows.n_models=0 but attack.audit runs \['mix'\]"):
        validate_references(AttackConfig(audit={"mix": {"attack": "mmia", "members": ["loss", "lira_offline"]}}), none)
    with pytest.raises(ValueError, match=r"runs \['lira_online'\], which need references that trained on the audit"):
        validate_references(AttackConfig(audit={"lira_online": {}}), ShadowsConfig(n_models=4))
