"""MODEL_CARD.md: what was measured about one shipped model, and the config that reproduces it.

After Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019), cut to what this tool
measures: the data set and its splits, the recipe, density and bytes per format, test accuracy
with its interval, the membership-inference audit (each attack's AUC and TPR at 1% / 0.1% FPR
with the reference models behind it), the excess over the train-less frontier when known, ε for
DP-SGD, the ONNX check, and the config. Plain formatting of values the export stage gathered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

NA = "n/a"
Z95 = 1.959963984540054


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `accuracy` measured on `n` records (95% by default)."""
    if n <= 0 or not math.isfinite(accuracy):
        return math.nan, math.nan
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class CardFacts:
    title: str
    how_chosen: str
    identity: dict[str, str]  # run id, study, trial, cache keys, git commit, ...
    dataset: str
    splits: dict[str, int]  # split name -> records
    model: str  # the model group's target and arguments
    recipe: dict[str, str]  # a few lines: method, target density, epochs, ...
    density: float
    bytes_per_format: dict[str, int | None]  # file -> bytes (None: not written)
    dense_bytes: float
    test_accuracy: float
    n_test: int
    val_accuracy: float
    accuracy_note: str  # agreement of the shipped model with the tracked numbers
    audit: pd.DataFrame | None  # index attack; columns auc, tpr_at_1pct_fpr, tpr_at_0.1pct_fpr, reference
    audit_sizes: str  # e.g. "200 audit members vs 200 test non-members"
    frontier: str  # the excess over the frontier, or why it is not known
    dp: str | None  # ε and δ of DP-SGD, None for other methods
    onnx: str  # the check's result, or why no ONNX was written
    config_yaml: str
    reproduce: str
    files: list[str] = field(default_factory=list)


def _f(v: Any, fmt: str = "{:.4f}") -> str:
    try:
        return fmt.format(float(v)) if v is not None and math.isfinite(float(v)) else NA
    except (TypeError, ValueError):
        return NA


def render(c: CardFacts) -> str:
    lo, hi = wilson_interval(c.test_accuracy, c.n_test)
    lines = [
        f"# Model card: {c.title}",
        "",
        f"Chosen by: {c.how_chosen}.",
        "",
        "| | |", "|---|---|",
        *(f"| {k} | {v} |" for k, v in c.identity.items() if v),
        "",
        "## Data",
        "",
        f"Data set `{c.dataset}`; disjoint splits (records): "
        + ", ".join(f"{k} {v:,}" for k, v in c.splits.items() if v) + ".",
        "The model trained on `train` only; `val` chose it (search objectives), `test` measured it.",
        "",
        "## Recipe",
        "",
        f"Model: `{c.model}`.",
        "",
        *(f"- {k}: {v}" for k, v in c.recipe.items()),
        "",
        "## Size",
        "",
        f"Density (fraction of prunable weights kept): **{_f(c.density)}**.",
        "",
        "| format | bytes |", "|---|---:|",
        *(f"| {k} | {NA if v is None else f'{v:,}'} |" for k, v in c.bytes_per_format.items()),
        f"| dense float32 weights (reference) | {_f(c.dense_bytes, '{:,.0f}')} |",
        "",
        "## Accuracy",
        "",
        f"Test accuracy **{_f(c.test_accuracy)}** (95% Wilson interval [{_f(lo)}, {_f(hi)}], "
        f"{c.n_test:,} test records); validation accuracy {_f(c.val_accuracy)}. {c.accuracy_note}",
        "",
        "## Privacy audit (membership inference)",
        "",
    ]
    if c.audit is None or c.audit.empty:
        lines.append("Not audited: this model's run had no audit (a `stage=compress` run); export a "
                     "`stage=attack` run or a search trial for one.")
    else:
        lines += [
            f"{c.audit_sizes}. AUC 0.5 = the attack learns nothing; TPR at a low FPR = the share of "
            "members it finds while wrongly flagging that share of non-members (n/a: fewer non-members "
            "than 1/FPR). reference: the reference models the attack used (dense = the teacher's recipe; "
            "matched = this model's own recipe, a defence-aware attack; none = no reference models).",
            "",
            "| attack | AUC | TPR@1%FPR | TPR@0.1%FPR | reference |", "|---|---:|---:|---:|---|",
        ]
        for name, row in c.audit.iterrows():
            lines.append(f"| {name} | {_f(row.get('auc'))} | {_f(row.get('tpr_at_1pct_fpr'))} | "
                         f"{_f(row.get('tpr_at_0.1pct_fpr'))} | {row.get('reference', '?')} |")
    lines += [
        "",
        f"Excess over the train-less frontier: {c.frontier}",
        "",
        f"Differential privacy: {c.dp or 'none (not trained with DP-SGD; no ε applies)'}",
        "",
        "## Formats",
        "",
        f"ONNX: {c.onnx}",
        "",
        "- `model.sc`: the compact export (`sparse.load_export(path, model)` loads it into the model class).",
        "- `state_dict.pt`: a plain PyTorch state_dict, pruned weights as zeros "
        "(`model.load_state_dict(torch.load(path))`).",
        "- `model.onnx`: input `input` (batch, ...), output `logits` (batch, classes).",
        "",
        "## Reproduce",
        "",
        c.reproduce,
        "",
        "```yaml",
        c.config_yaml.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
