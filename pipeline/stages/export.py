"""Stage 8 — export: ship one compressed model out of the tool.

Chooses the model (`pipeline.export.choice`: a trial by number, a run by id, or a Pareto point
by a rule), rebuilds it from its compact `.sc` export with the config that made it, and writes
`<paths.export_dir>/<name>/`: `model.onnx` (checked with ONNX Runtime against PyTorch on
`export.n_check` inputs, the largest absolute logit difference bounded by `export.max_abs_diff`),
`state_dict.pt` (plain PyTorch, pruned weights as zeros), `model.sc`, `MODEL_CARD.md`
(`pipeline.export.card`), `config.yaml` and `export.json`. The folder is written to a temporary
folder and moved in place. Inside its MLflow run the export logs an MLflow Model with the files
and, with `export.register=NAME`, registers it in the Model Registry with tags and the card.

A model ONNX cannot express gets an `OnnxExportError` naming the module, after every other
file (and the registration) is written.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import sparse
from pipeline.analysis.frontier import frontier_auc, frontier_envelope, frontier_runs
from pipeline.cache import check_entry_file
from pipeline.compress_jobs import load_compressed
from pipeline.config import (
    CompareConfig,
    CompressConfig,
    ExportConfig,
    SearchConfig,
    as_dict,
    as_dictconfig,
    to_schema,
)
from pipeline.context import DataBundle, RunContext
from pipeline.export import N_EXAMPLE, card, choice, mlflow_model
from pipeline.export.checks import validate_export
from pipeline.results import EXPORT_FILE
from pipeline.tracking import plumbing as tracking
from pipeline.tracking import runs
from pipeline.tracking.masking import config_yaml
from training import formats
from training.compress import get_method
from training.loops import evaluate
from training.seeds import derive_seed

log = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    source: choice.Source
    files: tuple[Path, ...]
    bytes_per_format: dict[str, int | None]
    onnx_check: formats.OnnxCheck | None
    model_id: str | None  # the MLflow Model logged in the export's run
    registered_version: int | None
    summary: str


def run(ctx: RunContext) -> ExportResult:
    cfg = ctx.cfg
    ec = validate_export(to_schema(ExportConfig, cfg.export), ctx.tracking)
    uri = ctx.tracking.uri if ctx.tracking.enabled else None
    # every "no such model" error comes from here, before any file is written
    source = choice.choose(ec, to_schema(SearchConfig, cfg.search), uri,
                           lambda params: config_yaml(_trial_config(cfg, params)))
    if source.config_text is None:
        raise ValueError(f"{source.label} has no logged config.yaml: nothing says how to rebuild its model")
    src_cfg = _source_config(ctx.cfg, source.config_text)
    src_ctx = RunContext.build(src_cfg)
    data = src_ctx.data
    root = Path(ctx.paths.export_dir or Path(ctx.paths.output_dir) / "exports")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{source.name}.", dir=root))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the shipped folder from everyone else
    try:
        return _write(ctx, ec, uri, source, src_ctx, data, root, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write(ctx, ec, uri, source, src_ctx, data: DataBundle, root: Path, tmp: Path) -> ExportResult:
    sc = _find_sc(ctx, source, uri, tmp)
    model = load_compressed(src_ctx, data, sc).cpu().eval()
    x_test, y_test = data.part("test")
    example = (x_test if len(x_test) else data.dataset.x)[:N_EXAMPLE]  # >= 2: torch.export keeps the batch dynamic
    sizes: dict[str, int | None] = {"model.sc": sc.stat().st_size}
    sizes["state_dict.pt"] = formats.write_state_dict(model, tmp / formats.STATE_DICT_FILE)
    check, onnx_error = None, None
    if ec.onnx:
        try:
            sizes["model.onnx"] = formats.write_onnx(model, example, tmp / formats.ONNX_FILE, ec.opset)
            gen = torch.Generator().manual_seed(derive_seed(src_ctx.seed, "export", "check") % (2**63))
            inputs, n_real = formats.check_inputs(data.dataset.x, ec.n_check, gen)
            check = formats.check_onnx(tmp / formats.ONNX_FILE, model, inputs, ec.max_abs_diff)
            if not check.passed:
                (tmp / formats.ONNX_FILE).unlink()
                sizes["model.onnx"] = None
                onnx_error = (f"ONNX Runtime and PyTorch differ by up to {check.max_abs_diff:.3g} on {check.n_inputs} "
                              f"inputs, above export.max_abs_diff={ec.max_abs_diff:g}: model.onnx not shipped")
        except formats.OnnxExportError as err:
            sizes["model.onnx"], onnx_error = None, str(err)
            n_real = 0
    _, test_acc = evaluate(model, x_test, y_test)
    _, val_acc = evaluate(model, *data.part("val"))
    model_id = None
    if tracking.active():  # the export's own run: its MLflow Model, the one a registration names
        model_id = mlflow_model.log_model(model, sc, example, mlflow_model.model_metadata(
            {**source.metrics, "test_accuracy": test_acc, "accuracy": val_acc},
            {"source": source.label, "source_run_id": source.run_id, "compress_key": source.compress_key},
        ))
    if ec.register and model_id is None:
        raise RuntimeError(f"export.register={ec.register!r}: the MLflow Model could not be logged (tracking paused?)")
    facts = _facts(ctx, ec, source, src_ctx, data, sizes, check, onnx_error, test_acc, val_acc, model_id,
                   n_real if check else 0, model)
    text = card.render(facts)
    (tmp / CARD_FILE).write_text(text)
    (tmp / "config.yaml").write_text(source.config_text or "")
    summary = {"source": asdict(source) | {"config_text": None}, "bytes": sizes, "test_accuracy": test_acc,
               "val_accuracy": val_acc, "onnx_check": asdict(check) if check else None, "onnx_error": onnx_error,
               "mlflow_model_id": model_id}
    (tmp / "export.json").write_text(json.dumps(summary, indent=1, default=str))
    final = root / source.name
    _move_in_place(tmp, final)
    files = tuple(sorted(p for p in final.iterdir() if p.is_file()))
    for f in files:
        tracking.log_artifact(f, "export")
    tracking.set_tags({"export_source": source.label, "export_source_run_id": source.run_id or "",
                       "compress_key": source.compress_key or ""})
    version = None
    if ec.register:  # model_id is set: a registration without a logged MLflow Model is refused above
        version = mlflow_model.register(uri, cast(str, model_id), ec.register, _registry_tags(source, sizes, check, test_acc), text)
    line = _summary_line(source, final, sizes, check, ec, version)
    if onnx_error:
        raise formats.OnnxExportError(f"{onnx_error}. The other formats were written to {final}", onnx_error)
    return ExportResult(final, source, files, sizes, check, model_id, version, line)


def _trial_config(cfg: DictConfig, params: dict[str, Any]) -> DictConfig:
    """A trial's config: the run's with the trial's parameters, audited with the search's references
    (as the search stage makes it; stages are peers, so its function is not imported)."""
    trial_cfg = as_dictconfig(OmegaConf.create(config_yaml(cfg, masked=False)))
    for k, v in params.items():
        OmegaConf.update(trial_cfg, k, v, merge=False)
    OmegaConf.update(trial_cfg, "attack.reference", str(cfg.attack.get("search_reference", "dense")), merge=False)
    return trial_cfg


def _source_config(cfg: DictConfig, text: str) -> DictConfig:
    """The config that made the model, with this command's paths, runtime and tracking."""
    src = as_dictconfig(OmegaConf.create(text), "the model's logged config.yaml")
    for group in ("paths", "runtime", "tracking"):
        src[group] = as_dict(cfg[group], group)
    return src


def _find_sc(ctx: RunContext, source: choice.Source, uri: str | None, tmp: Path) -> Path:
    """The model's `.sc` export copied into `tmp`: from the stage cache, else from its MLflow Model."""
    dst = tmp / EXPORT_FILE
    if source.compress_key:
        cached = ctx.cache.entry_dir("compress", source.compress_key) / EXPORT_FILE
        if cached.is_file():
            check_entry_file(cached)  # a damaged entry is refused, naming it
            shutil.copyfile(cached, dst)
            return dst
    if uri and source.run_id:
        model_id = mlflow_model.logged_model_id(uri, source.run_id)
        got = mlflow_model.download_sc(uri, model_id, tmp / ".download") if model_id else None
        if got is not None:
            shutil.move(str(got), dst)
            shutil.rmtree(tmp / ".download", ignore_errors=True)
            return dst
    raise ValueError(
        f"{source.label} has no compressed model to export: no cache entry compress/{source.compress_key} under "
        f"{ctx.paths.cache_dir} and no logged MLflow Model with {EXPORT_FILE} (tracking.log_models was off?); "
        "rerun its config with the same paths.cache_dir, or with tracking.log_models=true"
    )


def _move_in_place(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp` (an older export of the same model is moved aside, then removed)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    keep = tmp.with_name(tmp.name + ".done")
    tmp.rename(keep)
    keep.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _audit_table(ctx: RunContext, source: choice.Source, uri: str | None, reference: str) -> pd.DataFrame | None:
    path = ctx.cache.entry_dir("attack", source.attack_key) / "audit.csv" if source.attack_key else None
    with tempfile.TemporaryDirectory() as dl:
        if (path is None or not path.is_file()) and uri and source.run_id:
            path = runs.download_artifact(uri, source.run_id, "audit/audit.csv", Path(dl))
        if path is None or not path.is_file():
            return None
        table = pd.read_csv(path, index_col=0)
    table["reference"] = [runs.attack_reference_kind(str(a), reference) for a in table.index]
    return table


def _frontier(ctx: RunContext, src: DictConfig, test_acc: float, audit_auc: float) -> str:
    """The excess AUC over the train-less frontier of the same data set, density and seed, when tracked."""
    c = to_schema(CompressConfig, src.compress)
    name, dataset, seed = str(src.get("experiment_name", "default")), str(src.dataset.name), int(src.seed)
    where = f"experiment {name!r}, data set {dataset}, density {c.density:g}, seed {seed}"
    if not math.isfinite(audit_auc):
        return "not known (the model has no audit AUC)."
    if not ctx.tracking.enabled:
        return "not known (tracking is off: the frontier's runs are read from MLflow)."
    methods = to_schema(CompareConfig, src.compare).frontier.methods if "compare" in src else ["dst", "dense"]
    try:
        frame = runs.load_runs(ctx.tracking.uri, name, ctx.tracking.experiment)
    except runs.NoRunsError:
        frame = pd.DataFrame()
    front = frontier_runs(frame, dataset, c.density, methods) if len(frame) else frame
    front = front[front["seed"] == seed] if len(front) else front
    if front.empty:
        return (f"not known: no frontier runs ({', '.join(methods)}) are tracked for {where} "
                "(`python -m pipeline -m experiment=frontier` runs them; `stage=compare` compares).")
    f = frontier_auc(frontier_envelope(front["test_accuracy"], front["audit_auc"]), test_acc)
    if not math.isfinite(f):
        return f"not known: the model is more accurate than every frontier run of {where}."
    return (f"**{audit_auc - f:+.4f}** (audit AUC {audit_auc:.4f} against the frontier's {f:.4f} at test accuracy "
            f"{test_acc:.4f}; {len(front)} frontier runs of {where}; negative = below the frontier). The frontier "
            "runs' audits used their own attack.reference: compare like with like in `stage=compare`.")


def _dp(src: DictConfig, source: choice.Source, data: DataBundle) -> str | None:
    c = to_schema(CompressConfig, src.compress)
    if not get_method(c.method).differentially_private:
        return None
    delta = c.dp.delta if c.dp.delta is not None else 1.0 / len(data.splits.train)
    spent = source.metrics.get("compress_epsilon")
    shown = f", ε spent by the accountant {spent:.3f}" if spent is not None else ""
    return f"DP-SGD (Opacus, RDP accountant) at target ε = {c.dp.epsilon:g}, δ = {delta:.3g}{shown}."


def _facts(ctx, ec, source, src_ctx, data, sizes, check, onnx_error, test_acc, val_acc, model_id, n_real, model):
    src = src_ctx.cfg
    c = to_schema(CompressConfig, src.compress)
    m = source.metrics
    reference = str(src.attack.get("reference", "?"))
    audit = _audit_table(ctx, source, ctx.tracking.uri if ctx.tracking.enabled else None, reference)
    logged = m.get("test_accuracy")
    same = logged is not None and abs(float(logged) - test_acc) <= 1e-9
    note = ("It equals the tracked value (the shipped weights are the measured model)." if same else
            f"The tracked value was {logged}: the shipped model differs from the measured one." if logged is not None
            else "No tracked value to compare with.")
    splits = {k: len(getattr(data.splits, k)) for k in ("train", "val", "test", "population")}
    splits.update({k: len(v) for k in ("reference", "canaries") if len(v := getattr(data.splits, k, ())) > 0})
    n_audit = min(len(data.splits.audit_members), len(data.splits.test))
    made = (f"{n_real:,} data records, the rest mixes of two records" if check and n_real < check.n_inputs
            else "data records")
    onnx = onnx_error or (f"checked with ONNX Runtime against PyTorch on {check.n_inputs:,} inputs ({made}): "
                          f"max abs logit difference {check.max_abs_diff:.3g} "
                          f"(bound {check.bound:g}), same predicted class on {check.argmax_agreement:.2%}."
                          if check else "not written (export.onnx=false).")
    recipe = {
        "method": f"{c.method}" + (f" ({c.variant})" if c.method == "safecompress" else ""),
        "target density": f"{c.density:g} ({c.init} mask)",
        "training": f"{src.train.get('optimizer', '?')}, lr {src.train.get('lr')}, "
                    f"{c.epochs or src.train.get('epochs')} epochs, batch {src.train.get('batch_size')}",
        "schedules": f"density {c.density_schedule.kind} from {c.density_schedule.start:g}; regrowth "
                     f"{c.regrowth.kind} from {c.regrowth.start:g}; mask update every {c.update_every} steps",
        "seed": str(src.seed),
        **({"searched parameters": ", ".join(f"{k}={v}" for k, v in source.params.items())} if source.params else {}),
    }
    identity = {
        "source": source.label, "MLflow run": source.run_id, "study": source.study_name,
        "trial": None if source.trial is None else str(source.trial), "compress cache key": source.compress_key,
        "attack cache key": source.attack_key, "export's MLflow Model": f"models:/{model_id}" if model_id else None,
        "exported by commit": tracking.git_commit(),
    }
    rerun = ("Save `config.yaml` (beside this card) as `logged.yaml` in a folder DIR, then\n\n"
             "```bash\npython -m pipeline --config-dir DIR --config-name logged stage=attack paths.root=/tmp/rerun "
             "hydra.run.dir=/tmp/rerun/outputs/run\n```\n\nretrains and re-audits this model with the same seeds "
             "(same numbers on the same thread count).")
    return card.CardFacts(
        title=source.label, how_chosen=source.how, identity={k: str(v) for k, v in identity.items() if v},
        dataset=str(src.dataset.name), splits=splits, model=_model_line(src),
        recipe=recipe, density=float(m.get("density", math.nan)), bytes_per_format=sizes,
        dense_bytes=float(sparse.dense_size_bytes(model)), test_accuracy=test_acc, n_test=len(data.splits.test),
        val_accuracy=val_acc, accuracy_note=note, audit=audit,
        audit_sizes=f"{n_audit:,} audit members (train records no attacker was fitted on) vs {n_audit:,} test non-members",
        frontier=_frontier(ctx, src, test_acc, float(m.get("audit_auc", math.nan))), dp=_dp(src, source, data),
        onnx=onnx, config_yaml=source.config_text or "", reproduce=rerun,
    )


def _model_line(src: DictConfig) -> str:
    args = {k: v for k, v in as_dict(src.model, "model").items() if k != "_target_"}
    return f"{src.model.get('_target_')}({', '.join(f'{k}={v}' for k, v in args.items())})"


def _registry_tags(source: choice.Source, sizes: dict[str, Any], check, test_acc: float) -> dict[str, Any]:
    m = source.metrics
    tags: dict[str, str] = {k: f"{float(m[k]):.6g}" for k in ("density", "model_size_bytes", "audit_auc", "audit_tpr_at_1pct_fpr",
                                              "audit_tpr_at_0.1pct_fpr", "attack_auc") if k in m}
    tags.update({"test_accuracy": f"{test_acc:.6g}", "source": source.label, "source_run_id": source.run_id or "",
                 "compress_key": source.compress_key or "", "onnx": "yes" if sizes.get("model.onnx") else "no"})
    if check is not None:
        tags["onnx_max_abs_diff"] = f"{check.max_abs_diff:.3g}"
    return {k: v for k, v in tags.items() if v != ""}


def _summary_line(source, final: Path, sizes, check, ec, version) -> str:
    parts = ", ".join(f"{k} {v:,} B" for k, v in sizes.items() if v is not None)
    line = f"exported {source.label} to {final}: {parts}"
    if check is not None:
        line += f" (ONNX Runtime vs PyTorch on {check.n_inputs} inputs: max abs diff {check.max_abs_diff:.3g} <= {check.bound:g})"
    if version is not None:
        line += f"; registered as {ec.register!r} version {version}"
    return line
