"""How the stages feed each other: the thin layer above the peer stages.

Stages never import each other (a test parses the imports); a stage that needs another's
result takes it as an argument. This module makes those results in order and hands them
on, with the run context (`pipeline.context.RunContext`) the entry point built: the
compress stage gets the teacher, the attack stage the compressed model and the reference
models its attacks need, and the search's trials get one compress + audit each (`Trial`,
passed to the search stage and picklable for its worker processes).
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.context import RunContext, load_model
from pipeline.export import log_compressed
from pipeline.results import (
    AttackResult,
    CompressResult,
    ShadowsResult,
    TeacherResult,
)
from pipeline.stages import attack as attack_stage
from pipeline.stages import compress as compress_stage
from pipeline.stages import shadows as shadows_stage
from pipeline.stages import teacher as teacher_stage


def teacher(ctx: RunContext) -> TeacherResult:
    return teacher_stage.run(ctx)


def shadows(ctx: RunContext) -> ShadowsResult:
    return shadows_stage.run(ctx)


def compress(ctx: RunContext, teacher_result: TeacherResult | None = None) -> CompressResult:
    return compress_stage.run(ctx, teacher_result or teacher_stage.run(ctx))


def attack(
    ctx: RunContext, compressed: CompressResult | None = None, dense_shadows: ShadowsResult | None = None
) -> AttackResult:
    """Audit the run's compressed model (made here unless given) with the references it needs."""
    compressed = compressed or compress(ctx)
    needs = attack_stage.references(ctx.cfg)
    matched = shadows_stage.run(ctx, "matched") if "matched" in needs else None
    if "dense" in needs and dense_shadows is None:
        dense_shadows = shadows_stage.run(ctx)
    return attack_stage.run(ctx, compressed, dense_shadows if "dense" in needs else None, matched)


def log_model(ctx: RunContext, compressed: CompressResult, audit: AttackResult | None = None) -> None:
    """The compressed model as an MLflow Model in the active run (`tracking.log_models`)."""
    log_compressed(ctx, compressed, audit)


def dense_size_bytes(ctx: RunContext, teacher_result: TeacherResult) -> int:
    """Bytes of the dense teacher's weights (the search normalises model size by it)."""
    import sparse

    return sparse.dense_size_bytes(load_model(ctx, ctx.data, teacher_result.model_path))


class Trial:
    """The search's per-trial work, wired here: teacher and dense shadows once, then compress +
    audit per trial. The search hands over the run context, and each trial's config (the run's
    with the trial's parameters), which becomes the trial's run context here. A plain object of
    this module, so spawned search workers can unpickle it."""

    def prepare(
        self, ctx: RunContext, index: int = 0, n_workers: int = 1
    ) -> tuple[TeacherResult, ShadowsResult]:
        """Teacher and shadows for search worker `index` of `n_workers`. On a cold cache worker 0
        trains the teacher while the others train the shadows, each its share first
        (`shadows.run(share=...)`), then worker 0 trains its share too; every worker then finds
        the others' entries in the cache (or waits for them) instead of idling on one lock."""
        share = (index, n_workers)
        if index > 0:
            shadows = shadows_stage.run(ctx, share=share)
            return teacher_stage.run(ctx), shadows
        teacher = teacher_stage.run(ctx)
        return teacher, shadows_stage.run(ctx, share=share)

    def __call__(
        self, cfg: DictConfig, teacher_result: TeacherResult, dense_shadows: ShadowsResult
    ) -> tuple[CompressResult, AttackResult]:
        ctx = RunContext.build(cfg)
        comp = compress_stage.run(ctx, teacher_result)
        audit = attack(ctx, comp, dense_shadows)
        log_model(ctx, comp, audit)
        return comp, audit

    def dense_size_bytes(self, ctx: RunContext, teacher_result: TeacherResult) -> int:
        return dense_size_bytes(ctx, teacher_result)
