"""The one entry point: `python -m pipeline [stage=NAME] [group=option ...] [key=value ...]`.

Also installed as `safecompress`, which accepts the stage as a bare first word
(`safecompress compress compress=dst` == `python -m pipeline stage=compress compress=dst`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline import flow, threads
from pipeline.config import as_dict
from pipeline.context import RunContext
from pipeline.datasets import datasets_help
from pipeline.results import METRIC_NAMES
from pipeline.tracking import plumbing as tracking
from pipeline.tracking.masking import config_yaml
from pipeline.validation import validate
from training import interrupt

log = logging.getLogger("pipeline")


def _standalone(stage_name: str, fn: Callable[[RunContext], Any]) -> Callable[[RunContext], Any]:
    """Run a single stage inside its own MLflow run (the search makes its own runs)."""

    @functools.wraps(fn)  # keeps the docstring: the stage's line in --help
    def wrapped(ctx: RunContext) -> Any:
        cfg = ctx.cfg
        exp_id = tracking.setup(ctx.tracking)
        if exp_id is None:
            return fn(ctx)
        import mlflow

        with mlflow.start_run(experiment_id=exp_id, run_name=stage_name):
            tracking.set_tags({"stage": stage_name, "git_commit": tracking.git_commit(), **tracking.run_tags(cfg)})
            tracking.log_params(tracking.flatten(as_dict(cfg)))
            mlflow.log_text(config_yaml(cfg), "config.yaml")
            with tracking.error_tagged():  # a FAILED run always says why
                return fn(ctx)

    return wrapped


def _run_teacher(ctx: RunContext) -> Any:
    """train the dense model on the target's train split"""
    return flow.teacher(ctx)


def _run_shadows(ctx: RunContext) -> Any:
    """train the reference (shadow) models on the attacker's population split"""
    return flow.shadows(ctx)


def _run_compress(ctx: RunContext) -> Any:
    """compress one model (compress={methods})"""
    result = flow.compress(ctx)
    tracking.log_metrics(result.metrics)
    flow.log_model(ctx, result)
    return result


def _run_attack(ctx: RunContext) -> Any:
    """compress, then audit the model with the attack suite (attack=default, full)"""
    comp = flow.compress(ctx)
    tracking.log_metrics(comp.metrics)
    audit = flow.attack(ctx, comp)
    flow.log_model(ctx, comp, audit)
    return audit


def _run_search(ctx: RunContext) -> Any:
    """Optuna NSGA-II over the compress settings; every trial compresses and audits"""
    from pipeline.stages import search

    result = search.run(ctx, flow.Trial())
    _print_pareto(result)
    _print_where(ctx, result)
    return result


def _run_report(ctx: RunContext) -> Any:
    """the papers' tables and plots from tracked runs (report.experiment_name=...)"""
    from pipeline.stages import report

    result = report.run(ctx)
    _print_written(result.markdown, result.files)
    return result


def _run_compare(ctx: RunContext) -> Any:
    """paired comparison of methods, and the train-less frontier (compare.*)"""
    from pipeline.stages import compare

    result = compare.run(ctx)
    _print_written(result.markdown, result.files)
    return result


def _run_export(ctx: RunContext) -> Any:
    """ship one model: ONNX, state_dict, .sc and MODEL_CARD.md (export.trial / run_id / rule; export.register)"""
    from pipeline.stages import export

    result = export.run(ctx)
    _print_written(result.summary, result.files)
    return result


def _run_cache(ctx: RunContext) -> Any:
    """list, verify or clear cached stage results (safecompress cache verify; cache.*)"""
    from pipeline.stages import cache

    report = cache.run(ctx)
    print(cache.format_report(report, ctx.paths.cache_dir))
    return report


# the stage registry: the only list of stage names (`stage=...`, its error message and --help)
STAGE_FUNCTIONS: dict[str, Callable[[RunContext], Any]] = {
    "teacher": _standalone("teacher", _run_teacher),
    "shadows": _standalone("shadows", _run_shadows),
    "compress": _standalone("compress", _run_compress),
    "attack": _standalone("attack", _run_attack),
    "search": _run_search,
    "report": _standalone("report", _run_report),
    "compare": _standalone("compare", _run_compare),
    "export": _standalone("export", _run_export),
    "cache": _run_cache,  # no MLflow run: maintenance of paths.cache_dir
}


def stages_help() -> str:
    """--help's stage list, one line per registered stage (its function's docstring)."""
    from training.compress import METHODS

    return "\n".join(
        f"{name:<9} {(fn.__doc__ or '').strip().format(methods=', '.join(METHODS))}"
        for name, fn in STAGE_FUNCTIONS.items()
    )


# conf/config.yaml's help header lists the stages and the data sets through these resolvers
OmegaConf.register_new_resolver("safecompress_stages", stages_help, replace=True)
OmegaConf.register_new_resolver("safecompress_datasets", datasets_help, replace=True)


def run_stage(cfg: DictConfig) -> Any:
    """Validate the config, set threads and logging, build the run context and run `cfg.stage`."""
    name = str(cfg.stage)
    if name not in STAGE_FUNCTIONS:
        raise ValueError(f"unknown stage {name!r}; valid: {sorted(STAGE_FUNCTIONS)}")
    threads.resolve_workers(cfg)  # search.n_workers=auto: one per core
    validate(cfg, data=True)  # everything knowable from the config, before any store, run or model
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    threads.configure(cfg)  # runtime.n_threads: auto shares the cores among search workers
    ctx = RunContext.build(cfg)  # built once: every stage of this command gets it
    logging.getLogger().setLevel(ctx.runtime.log_level)
    with interrupt.guarded():  # a Ctrl-C swallowed by a garbage-collector callback is raised again
        return STAGE_FUNCTIONS[name](ctx)


def _print_written(text: str, files: Any) -> None:
    """The command's answer on stdout (stages log; the entry point prints what the user asked for)."""
    print(text)
    for f in files:
        print(f"written: {f}")


def _print_pareto(result: Any) -> None:
    table = result.pareto
    cols = [c for c in ("trial", *METRIC_NAMES) if c in table.columns]
    print(f"\nPareto front of study {result.study_name!r} ({result.n_complete} complete trials):")
    print(table[cols].to_string(
        index=False, na_rep="n/a", float_format=lambda v: f"{v:.4f}",
        formatters={"model_size_bytes": lambda v: "n/a" if v != v else f"{v:,.0f}"},
    ))


def _print_where(ctx: RunContext, result: Any) -> None:
    """The demo's last lines: where the results are and how to open both UIs."""
    if result.pareto_csv is not None:
        out = result.pareto_csv.parent
        print(f"\nResults in {out}/: pareto.csv (the front), trials.csv (every trial), pareto.png (the plot)")
    uri = ctx.tracking.uri
    if ctx.tracking.enabled:
        exp_id = tracking.setup(ctx.tracking)
        if uri.startswith(("http://", "https://")):
            print(f"MLflow: {tracking.ui_url(exp_id, uri.rstrip('/'))}")
        else:
            print(f"MLflow: `make ui` (or: mlflow ui --backend-store-uri {uri} --host 127.0.0.1), then open\n"
                  f"        {tracking.ui_url(exp_id)}  (expand the study's run; README: 'Compare trials')")
    storage = str(result.storage)
    if storage.startswith("journal:"):
        shown = storage[len("journal:"):]  # optuna-dashboard reads a journal file by its path
    else:
        shown = storage if storage.startswith("sqlite:") else "<the storage URL>"  # never print a password
    print(f"Optuna: `make dashboard` (or: optuna-dashboard {shown} --host 127.0.0.1), then open http://127.0.0.1:8080")


def config_dir() -> str:
    """The Hydra config tree, as an absolute path: inside the package in a wheel install
    (`pipeline/conf`, see setup.py), beside it in a checkout or an editable install (`conf/`).

    Absolute, so the entry point works from any folder: with a relative path Hydra looks
    for a Python module `conf` when `pipeline.__main__` is imported by the console script.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"no Hydra config tree (config.yaml) in {here / 'conf'} or {here.parent / 'conf'}")


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_stage(cfg)


def cli() -> None:
    """Console script: a bare first word is the stage (`safecompress search ...`)."""
    if len(sys.argv) > 1 and "=" not in sys.argv[1] and not sys.argv[1].startswith("-"):
        sys.argv[1] = f"stage={sys.argv[1]}"
        # `safecompress cache verify` == `python -m pipeline stage=cache cache.action=verify`
        if sys.argv[1] == "stage=cache" and len(sys.argv) > 2 and "=" not in sys.argv[2] and not sys.argv[2].startswith("-"):
            sys.argv[2] = f"cache.action={sys.argv[2]}"
    main()


if __name__ == "__main__":
    main()
