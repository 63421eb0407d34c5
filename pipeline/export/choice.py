"""Which model `stage=export` ships: a trial of a study by number, any tracked run by id, or a
Pareto point by a rule — and everything known about it (metrics, cache keys, the config that made it).

Every check here runs before a file is written: an unknown trial, a study with no complete
trial, a rule no trial satisfies or an unknown run id stops with an error that lists what
exists. Rules read the search objectives (validation data), never test numbers (SPEC: never
select on test).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.analysis.pareto import nondominated_ranks
from pipeline.config import OBJECTIVE_DIRECTIONS, ExportConfig, SearchConfig
from pipeline.tracking.masking import mask_secrets

log = logging.getLogger(__name__)

EXPORTABLE_STAGES = ("compress", "attack", "search")  # runs that made (and logged) a compressed model


@dataclass(frozen=True)
class Source:
    """The model to ship and what is known about it."""

    label: str  # "trial 3 of study 'x'", "run 0123abcd"
    name: str  # the export folder's name
    how: str  # how it was chosen, for the card
    run_id: str | None
    study_name: str | None = None
    trial: int | None = None
    compress_key: str | None = None
    attack_key: str | None = None
    stage: str = "search"
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    config_text: str | None = None  # the config that made it (resolved, `${paths.…}` kept)


# a trial's parameters -> the config text that made it (the stage builds it from its config)
TrialConfig = Callable[[dict[str, Any]], str]


def choose(ec: ExportConfig, s: SearchConfig, tracking_uri: str | None, trial_config: TrialConfig) -> Source:
    """The source named by `export.run_id`, `export.trial` or the rule (in that order of precedence;
    validation refuses both of the first two at once). `tracking_uri`: None when tracking is off."""
    if ec.run_id:
        if tracking_uri is None:
            raise ValueError("export.run_id needs MLflow tracking (tracking.enabled=true)")
        return from_run(tracking_uri, ec.run_id)
    name = ec.study_name or s.study_name
    study = _load_study(s.storage, name)
    if ec.trial is not None:
        trial = _trial(study, name, ec.trial)
        how = f"trial {ec.trial} of study {name!r}, by number (export.trial)"
    else:
        trial, how = _by_rule(study, name, s, ec)
    return from_trial(name, trial, how, tracking_uri, trial_config)


def _load_study(url: str, name: str):
    import optuna

    from pipeline.study.storage import open_storage

    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise ValueError(
            f"no Optuna storage at {url[len('sqlite:///'):]} (search.storage): run stage=search first, "
            "or point search.storage at the study's storage"
        )
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(optuna.get_all_study_names(storage))
        raise ValueError(
            f"no study {name!r} in {mask_secrets(url)}; studies there: {names or 'none'} "
            "(export.study_name=NAME, or the search.* settings that name it)"
        ) from None


def _complete(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _trial(study, name: str, number: int):
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    complete = sorted(t.number for t in _complete(study))
    if number not in trials:
        raise ValueError(f"study {name!r} has no trial {number}; its complete trials: {complete or 'none'}")
    t = trials[number]
    if t.state.name != "COMPLETE":
        raise ValueError(
            f"trial {number} of study {name!r} is {t.state.name}, not COMPLETE: it has no finished model; "
            f"complete trials: {complete or 'none'}"
        )
    return t


def _by_rule(study, name: str, s: SearchConfig, ec: ExportConfig):
    """The rule's trial among the study's complete, feasible, Pareto-optimal trials."""
    done = _complete(study)
    if not done:
        states: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            states[t.state.name] = states.get(t.state.name, 0) + 1
        raise ValueError(
            f"study {name!r} has no complete trial ({states or 'no trials'}): run stage=search with the "
            "same config first, or name a run with export.run_id=ID"
        )
    objectives = list(s.objectives) if len(s.objectives) == len(done[0].values) else ["accuracy", "attack_auc"]
    values = np.array([[_value(t, o, objectives) for o in objectives] for t in done], float)
    feasible = np.array([all(v <= 0 for v in t.constraints.values()) for t in done])
    ranks = nondominated_ranks(values, [OBJECTIVE_DIRECTIONS[o] for o in objectives], feasible)
    front = [t for t, r, f in zip(done, ranks, feasible, strict=True) if r == 0 and f]
    if not front:
        raise ValueError(f"study {name!r} has no feasible complete trial (search.constraints exclude all {len(done)})")
    bounds = []
    pool = front
    if ec.max_attack_auc is not None:
        pool = [t for t in pool if _attr(t, "attack_auc") <= ec.max_attack_auc]
        bounds.append(f"attack_auc <= {ec.max_attack_auc:g}")
    if ec.min_accuracy is not None:
        pool = [t for t in pool if _attr(t, "accuracy") >= ec.min_accuracy]
        bounds.append(f"accuracy >= {ec.min_accuracy:g}")
    if not pool:
        shown = ", ".join(f"trial {t.number}: accuracy {_attr(t, 'accuracy'):.4f}, attack_auc "
                          f"{_attr(t, 'attack_auc'):.4f}" for t in front)
        raise ValueError(f"no Pareto trial of study {name!r} has {' and '.join(bounds)}; the front: {shown}")
    if ec.rule == "max_accuracy":
        best = max(pool, key=lambda t: (_attr(t, "accuracy"), -_attr(t, "attack_auc"), -t.number))
    else:
        best = min(pool, key=lambda t: (_attr(t, "attack_auc"), -_attr(t, "accuracy"), t.number))
    how = (f"export.rule={ec.rule}" + (f" with {' and '.join(bounds)}" if bounds else "")
           + f" over the {len(front)} Pareto trial(s) of study {name!r} ({len(done)} complete), "
           "on the search objectives (validation data)")
    return best, how


def _attr(t, key: str) -> float:
    v = t.user_attrs.get(key)
    return float(v) if v is not None else math.nan


def _value(t, objective: str, objectives: list[str]) -> float:
    return float(t.values[objectives.index(objective)])


def from_trial(name: str, t, how: str, tracking_uri: str | None, trial_config: TrialConfig) -> Source:
    """A complete trial: its tracked run's record when tracking has it, else what the study stored."""
    run_id = t.user_attrs.get("mlflow_run_id")
    base = Source(
        label=f"trial {t.number} of study {name!r}", name=f"{name}-trial{t.number}", how=how, run_id=None,
        study_name=name, trial=t.number, compress_key=t.user_attrs.get("compress_key"),
        attack_key=t.user_attrs.get("attack_key"), stage="search",
        metrics={k: float(v) for k, v in t.user_attrs.items() if isinstance(v, (int, float)) and k != "wall_s"},
        params=dict(t.params), config_text=trial_config(dict(t.params)),
    )
    if not run_id or tracking_uri is None:
        return base
    try:
        tracked = from_run(tracking_uri, str(run_id))
    except ValueError as err:
        log.warning("trial %d's MLflow run %s cannot be read (%s): using what the study stored", t.number, run_id, err)
        return base
    return Source(
        label=base.label, name=base.name, how=how, run_id=tracked.run_id, study_name=name, trial=t.number,
        compress_key=base.compress_key or tracked.compress_key, attack_key=base.attack_key or tracked.attack_key,
        stage="search", metrics={**base.metrics, **tracked.metrics}, params=base.params,
        config_text=tracked.config_text or base.config_text,
    )


def from_run(tracking_uri: str, run_id: str) -> Source:
    """A tracked compress/attack run or search trial, by its MLflow run id."""
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import runs

    client = runs._client(tracking_uri)
    try:
        r = client.get_run(run_id)
    except MlflowException as err:
        raise ValueError(f"no tracked run {run_id!r} at {mask_secrets(tracking_uri)} (export.run_id): "
                         f"{str(err).splitlines()[0]}") from None
    tags = r.data.tags
    stage = tags.get("stage", "")
    if stage not in EXPORTABLE_STAGES:
        raise ValueError(f"run {run_id} is a stage={stage or '?'} run, which made no compressed model; "
                         f"export takes a run of stage {list(EXPORTABLE_STAGES)} (a search trial's run is stage=search)")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        config = runs.download_artifact(tracking_uri, run_id, "config.yaml", Path(tmp))
        text = config.read_text() if config is not None else None
    if tags.get("trial_number"):
        label, name = f"trial {tags['trial_number']} of study {tags.get('study_name')!r}", f"{tags.get('study_name')}-trial{tags['trial_number']}"
    else:
        label, name = f"run {run_id[:8]} (stage={stage})", f"run-{run_id[:8]}"
    return Source(
        label=label, name=name, how=f"run {run_id}, by id (export.run_id)", run_id=run_id,
        study_name=tags.get("study_name"), trial=int(tags["trial_number"]) if tags.get("trial_number") else None,
        compress_key=tags.get("compress_key"), attack_key=tags.get("attack_key"), stage=stage,
        metrics=dict(r.data.metrics), config_text=text,
    )
