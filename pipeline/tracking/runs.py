"""Tracked runs as a pandas table: the input of the report and compare stages.

Every stage run (`python -m pipeline stage=attack ...`) is one MLflow run tagged with
`experiment_name`, `dataset`, `method`, `variant`, `density`, `seed` (see
`pipeline.tracking.plumbing.run_tags`). This module reads those runs back: one row per run,
metrics under their own names (`test_accuracy`, `audit_auc`, ...), the identifying
tags as plain columns, the flattened config as `params.<key>` columns, and the
target density (the `density` tag) as `target_density`, since the `density`
*metric* is the density the model really has (1.0 for a dense baseline).

`reference_kind` says which reference models a run's leakage metric rests on (dense:
trained by the teacher's recipe; matched: by the audited method's own recipe), so every
table can name it: `audit_lira_offline_auc` is LiRA with dense references under
`attack.reference=dense|both` but with matched ones under `attack.reference=matched`.

A grid run twice (or a resumed multirun) logs the same configuration twice; the
latest finished run per configuration and seed is kept, so no seed counts twice.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.analysis.tables import finite
from pipeline.tracking.labels import as_float, epochs_of, logged_param, run_label

log = logging.getLogger(__name__)

ID_TAGS = ("stage", "experiment_name", "dataset", "method", "variant", "seed", "model", "git_commit",
           "study_name", "trial_number", "pareto_rank", "safecompress.study")
# what identifies one configuration of one seed (duplicates of it are re-runs)
CONFIG_KEYS = ("dataset", "label", "target_density", "seed")


class NoRunsError(LookupError):
    """No finished tracked runs match; the message says what to run first."""


def _client(tracking_uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file in a report
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def search_runs(
    tracking_uri: str,
    mlflow_experiment: str,
    filter_string: str,
    status: str | None = "FINISHED",
) -> pd.DataFrame:
    """Raw rows of `MlflowClient.search_runs` over one MLflow experiment (all pages)."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(mlflow_experiment)
    if exp is None:
        return pd.DataFrame()
    if status:
        filter_string = " and ".join(f for f in (filter_string, f"attributes.status = '{status}'") if f)
    rows: list[dict[str, Any]] = []
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id], filter_string=filter_string, max_results=5000, page_token=token
        )
        for r in page:
            row: dict[str, Any] = {
                "run_id": r.info.run_id,
                "run_name": r.info.run_name,
                "status": r.info.status,
                "start_time": r.info.start_time,
                "artifact_uri": r.info.artifact_uri,
            }
            for k, v in r.data.tags.items():
                if k in ID_TAGS:
                    row[k] = v
            row["target_density"] = as_float(r.data.tags.get("density"))
            for k, v in r.data.params.items():
                row[f"params.{k}"] = v
            row.update({k: float(v) for k, v in r.data.metrics.items()})
            rows.append(row)
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows)


def load_runs(
    tracking_uri: str,
    experiment_name: str,
    mlflow_experiment: str = "safecompress",
    stages: Sequence[str] | None = ("attack",),
    dedupe: bool = True,
) -> pd.DataFrame:
    """Finished runs whose tag `experiment_name` is `experiment_name` (optionally of some stages).

    Columns: run_id, the ID_TAGS, target_density, seed (int), label (see `run_label`),
    epochs, `params.*` and one column per metric. Raises NoRunsError when nothing matches.
    """
    flt = f"tags.experiment_name = '{experiment_name}'"
    if stages and len(stages) == 1:
        flt += f" and tags.stage = '{stages[0]}'"
    frame = search_runs(tracking_uri, mlflow_experiment, flt)
    if len(frame) and stages:
        frame = frame[frame.get("stage", pd.Series(index=frame.index, dtype=object)).isin(list(stages))]
    if frame.empty:
        what = f" (stage {'/'.join(stages)})" if stages else ""
        raise NoRunsError(
            f"no finished runs for experiment {experiment_name!r}{what} in MLflow experiment "
            f"{mlflow_experiment!r} at {tracking_uri}; run `python -m pipeline experiment="
            f"{experiment_name} -m` first (or name another one with report.experiment_name=...)"
        )
    frame = frame.copy()
    for col in ("dataset", "method", "variant"):
        if col not in frame.columns:
            frame[col] = ""
        frame[col] = frame[col].fillna("")
    frame["seed"] = pd.to_numeric(frame.get("seed"), errors="coerce").astype("Int64")
    frame["label"] = [run_label(r) for _, r in frame.iterrows()]
    frame["epochs"] = [epochs_of(r) for _, r in frame.iterrows()]
    if dedupe:
        _warn_differing_duplicates(frame)
        n = len(frame)
        frame = (
            frame.sort_values("start_time")
            .drop_duplicates(list(CONFIG_KEYS), keep="last")
            .sort_values(["dataset", "target_density", "label", "seed"])
        )
        if len(frame) < n:
            log.info("%d older duplicate run(s) of the same configuration and seed ignored", n - len(frame))
    return frame.reset_index(drop=True)


# params that never change what a run computes
_NEUTRAL = ("params.paths.", "params.runtime.", "params.tracking.", "params.report.", "params.compare.",
            "params.stage", "params.hydra")


def _warn_differing_duplicates(frame: pd.DataFrame) -> None:
    """Runs that share a row label and seed but differ in config: only the latest will count."""
    params = [c for c in frame.columns if c.startswith("params.") and not c.startswith(_NEUTRAL)]
    for key, g in frame.groupby(list(CONFIG_KEYS), dropna=False):
        if len(g) < 2 or not params:
            continue
        differ = [c for c in params if g[c].astype(str).nunique() > 1]
        if differ:
            log.warning(
                "runs %s share %s but differ in %s; only the latest counts (give such runs their own "
                "experiment_name)", list(g["run_id"]), dict(zip(CONFIG_KEYS, key, strict=True)), differ[:5],
            )


def load_study_trials(tracking_uri: str, study_name: str, mlflow_experiment: str = "safecompress") -> pd.DataFrame:
    """Finished trial runs of an Optuna study (nested runs tagged `study_name`)."""
    frame = search_runs(tracking_uri, mlflow_experiment, f"tags.study_name = '{study_name}'")
    if frame.empty:
        raise NoRunsError(
            f"no finished trial runs for study {study_name!r} in MLflow experiment {mlflow_experiment!r} "
            f"at {tracking_uri}; run `python -m pipeline stage=search search.study_name={study_name}` first"
        )
    return frame.reset_index(drop=True)


def download_artifact(tracking_uri: str, run_id: str, path: str, dst: Path) -> Path | None:
    """One artifact of a run copied under `dst`, or None when the run has no such artifact."""
    client = _client(tracking_uri)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except Exception as err:  # noqa: BLE001 - MLflow raises several types for a missing artifact
        log.debug("run %s has no artifact %s: %s", run_id, path, err)
        return None


def load_scores(tracking_uri: str, run_id: str, dst: Path, evaluation: str = "audit") -> dict[str, np.ndarray] | None:
    """Per-example audit scores of a run (`audit/scores.npz`): {attack: (n,), "labels", "example_index"}."""
    f = download_artifact(tracking_uri, run_id, "audit/scores.npz", dst / run_id)
    if f is None:
        return None
    with np.load(f) as z:
        prefix = f"{evaluation}/"
        out = {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}
    if "labels" not in out:
        return None
    return out


# ---------------------------------------------------------------- reference kinds

_LEAK_METRIC = re.compile(
    r"^(?P<prefix>audit|attack|canary)_(?:(?P<attack>.+?)_)?"
    r"(?P<key>auc|tpr_at_[0-9.]+pct_fpr|balanced_accuracy|advantage)$"
)
REFERENCE_KINDS_NOTE = (
    "refs: the reference models behind a leakage column: dense = trained by the teacher's recipe; "
    "matched = trained by the audited method's own recipe (a defence-aware attack); dense+matched = "
    "the strongest attack over both; none = its attacks use no reference models."
)


@functools.cache
def _uses_references(attack: str) -> bool | None:
    """Whether the registered attack `attack` reads reference models (None: not a registered name)."""
    from attacks import registry

    if attack not in registry.ATTACKS:
        return None
    return registry.uses_references(registry.make_attack(attack))


def attack_reference_kind(attack: str, reference: str | None) -> str:
    """'dense', 'matched', 'none' (no reference models) or '?' for one audit entry of a run
    audited with `attack.reference=reference` (`<attack>_matched` entries: the matched rerun)."""
    if attack.endswith("_matched"):
        return "matched"
    uses = _uses_references(attack)
    if uses is None or (uses and reference not in ("dense", "matched", "both")):
        return "?"
    if not uses:
        return "none"
    return "matched" if reference == "matched" else "dense"


def combine_kinds(kinds: Iterable[str]) -> str:
    """The kind of a maximum over attacks: 'dense+matched' when it takes both, 'none' when neither."""
    ks = set(kinds) - {"none", ""}
    if "?" in ks:
        return "?"
    return "+".join(sorted(ks)) if ks else "none"


def reference_kind(row: pd.Series, metric: str) -> str:
    """The reference models one run's metric rests on ('' when it is no leakage metric).

    A named attack's metric (`audit_lira_offline_auc`) has that attack's kind; the primary
    metrics (`audit_auc`, `attack_tpr_at_1pct_fpr`, ...: the strongest attack with
    `attack.primary=max`) combine the kinds of the attacks the run logged.
    """
    m = _LEAK_METRIC.match(metric)
    if m is None:
        return ""
    reference = logged_param(row, "attack.reference")
    if m.group("attack") is not None:
        return attack_reference_kind(m.group("attack"), reference)
    primary = logged_param(row, "attack.primary") or "max"
    if primary != "max":
        return attack_reference_kind(primary, reference)
    prefix = m.group("prefix") + "_"
    names = [
        str(col)[len(prefix):-len("_auc")] for col, v in row.items()
        if isinstance(col, str) and col.startswith(prefix) and col.endswith("_auc") and col != prefix + "auc"
        and finite(v)
    ]
    if not names:
        return "?"  # the run logged no attack's own numbers: nothing says which attacks made it
    return combine_kinds(attack_reference_kind(n, reference) for n in names)


def kinds_of(frame: pd.DataFrame, metric: str) -> str:
    """The reference kinds of `metric` over the runs of `frame` that logged it, ', '-joined
    (more than one: the runs were audited differently)."""
    if metric not in frame:
        return ""
    ok = frame[pd.to_numeric(frame[metric], errors="coerce").notna()]
    return ", ".join(sorted({reference_kind(r, metric) for _, r in ok.iterrows()} - {""}))
