"""Calibration of `dataset=purchase_synth` (issue 10): does the default set leak like Purchase100?

For each seed: the dense teacher's train/test accuracy and the audit AUC of every
attack (audit members vs test), and the same attacks against a model of the same
recipe trained WITHOUT the audit members (on the known members only), which must
sit at chance (AUC within 0.5 ± 0.03). Prints a table and writes
benchmarks/results/purchase_synth.md. Run by hand:
`python benchmarks/calibrate_purchase_synth.py [paths.root=...] [shadows.n_models=4] [seeds=0,1,2]`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

import attacks
from attacks.signals import compute_signals
from pipeline.context import RunContext, build_model, load_data, train_recipe
from pipeline.stages import shadows as shadows_stage
from pipeline.stages import teacher as teacher_stage
from training.loops import evaluate, train
from training.seeds import generator

CONF = str(Path(__file__).resolve().parents[1] / "conf")
ATTACKS = {"loss": {}, "confidence": {}, "entropy": {}, "modified_entropy": {}, "nn_blackbox": {}, "lira_offline": {},
           "rmia": {}}


def audit(cfg, data, model, refs) -> dict[str, float]:
    s = data.splits
    rng = np.random.default_rng(0)
    n = min(len(s.audit_members), len(s.test))
    idx = np.r_[rng.permutation(s.audit_members)[:n], rng.permutation(s.test)[:n]]
    labels = np.r_[np.ones(n, int), np.zeros(n, int)]
    t = torch.from_numpy(idx)
    x, y = data.dataset.x[t], data.dataset.y[t]
    km = torch.from_numpy(s.known_members[:1000])
    kv = torch.from_numpy(s.val[:1000])
    inputs = attacks.AttackInputs(
        target=compute_signals(model, x, y),
        references=[compute_signals(r, x, y) for r in refs],
        reference_in=np.zeros((len(refs), len(idx)), dtype=bool),
        known_members=compute_signals(model, data.dataset.x[km], data.dataset.y[km]),
        known_nonmembers=compute_signals(model, data.dataset.x[kv], data.dataset.y[kv]),
    )
    res = attacks.run_audit(inputs, ATTACKS, labels)
    return {k: float(v) for k, v in res.table["auc"].items()}


def main(argv: list[str]) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    torch.set_num_threads(1)
    seeds = [0, 1, 2]
    overrides = []
    for a in argv:
        if a.startswith("seeds="):
            seeds = [int(v) for v in a.split("=", 1)[1].split(",")]
        else:
            overrides.append(a)
    lines = ["| seed | teacher train acc | teacher test acc | teacher AUCs (audit members vs test) | never-seen model AUCs |",
             "|---|---|---|---|---|"]
    worst = 0.0
    for seed in seeds:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose(config_name="config", overrides=["dataset=purchase_synth", "tracking.enabled=false",
                                                           "runtime.progress=false", f"seed={seed}", *overrides])
        data = load_data(cfg)
        ctx = RunContext.build(cfg)
        t = teacher_stage.run(ctx)
        teacher = teacher_stage.load(ctx, t)
        refs = shadows_stage.load_models(ctx, shadows_stage.run(ctx))
        unseen = build_model(ctx, data, "never_seen")
        km = torch.from_numpy(data.splits.known_members)
        train(unseen, data.dataset.x[km], data.dataset.y[km], train_recipe(cfg), generator(seed, "never_seen"))
        a_teacher, a_unseen = audit(cfg, data, teacher, refs), audit(cfg, data, unseen, refs)
        worst = max(worst, max(abs(v - 0.5) for v in a_unseen.values()))
        _, tr = evaluate(teacher, *data.part("train"))
        fmt = lambda d: ", ".join(f"{k} {v:.3f}" for k, v in d.items())  # noqa: E731
        lines.append(f"| {seed} | {tr:.3f} | {t.metrics['test_accuracy']:.3f} | {fmt(a_teacher)} | {fmt(a_unseen)} |")
        print(lines[-1], flush=True)
    lines.append(f"\nlargest |AUC - 0.5| against the never-seen models: {worst:.3f} (target <= 0.03)")
    text = "# purchase_synth calibration (default size and noise)\n\n" + "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "purchase_synth.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
