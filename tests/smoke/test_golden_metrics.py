"""Golden metrics: restructuring the pipeline must not change a single number.

The seeded smoke search and a seeded digits `stage=attack` per compress method are run and
their metrics compared, to the last digit, with `golden_metrics.json` (recorded on main before
issue 16's restructuring). The digits configs are the smallest that still exercise each
method's own path: SafeCompress's CSR probe and NN safety test (density 0.05, bmia), its
sequential probe with white-box signals (mmia), the grouped dense probe (the smoke search,
density 0.2), matched reference models (the attack's default `reference=matched` trains the
method once per shadow), adversarial regularization past its warm-up, DP-SGD with Opacus.

A change that is meant to alter numbers re-records the file and says why in its commit:

    PYTHONPATH=.:tests python tests/smoke/test_golden_metrics.py --write
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.smoke

GOLDEN = Path(__file__).with_name("golden_metrics.json")

DIGITS = [
    "dataset=digits",
    "model.hidden_sizes=[64]",
    "train.epochs=8",
    "train.lr=0.01",
    "compress.density=0.1",
    "shadows.n_models=2",
    "compress.update_every=6",
    "compress.probe_steps=2",
    "compress.safety.attacker_epochs=2",
    "compress.safety.attacker_refresh_epochs=1",
    "compress.adversarial.attacker_warmup_steps=5",
    "tracking.enabled=false",
    "runtime.progress=false",
    "seed=3",
]
# case name -> overrides of one `stage=attack` run on digits
CASES = {
    "dense": ["compress=dense", "compress.density=1.0"],
    "oneshot": ["compress=oneshot"],
    "gmp": ["compress=gmp"],
    "dst": ["compress=dst"],
    "dst_adv": ["compress=dst_adv"],
    "safecompress": ["compress=safecompress"],
    "safecompress_mmia": ["compress=safecompress", "compress.variant=mmia", "compress.n_candidates=2",
                          "compress.distill.enabled=true"],
    "dpsgd": ["compress=dpsgd", "compress.density=1.0", "compress.dp.batch_size=64"],
}
SEARCH = ["experiment=smoke", "stage=search", "tracking.enabled=false", "seed=1"]


def _clean(metrics: dict) -> dict:
    """Metrics as JSON can hold them (NaN as the string "nan"), sorted by name."""
    return {
        k: ("nan" if isinstance(v, float) and math.isnan(v) else v.item() if hasattr(v, "item") else v)
        for k, v in sorted(metrics.items())
    }


def compute_case(name: str, root: Path) -> dict:
    from conftest import make_cfg

    from pipeline.__main__ import run_stage

    if name == "search":
        result = run_stage(make_cfg(SEARCH, root))
        table = result.pareto.drop(columns=["mlflow_run_id"], errors="ignore")
        return {"n_complete": result.n_complete, "pareto": [_clean(r) for r in table.to_dict("records")]}
    from pipeline.stages import compress

    cfg = make_cfg(["stage=attack", *DIGITS, *CASES[name]], root)
    attack_metrics = run_stage(cfg).metrics
    compress_metrics = compress.run(cfg).metrics  # a cache hit: the run above trained it
    return {"compress": _clean(compress_metrics), "attack": _clean(attack_metrics)}


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", [*CASES, "search"])
def test_metrics_equal_the_recorded_ones_to_the_last_digit(name, tmp_path):
    expected = _golden()[name]
    got = json.loads(json.dumps(compute_case(name, tmp_path)))  # the same float round trip
    assert got == expected


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: PYTHONPATH=.:tests python tests/smoke/test_golden_metrics.py --write")
    import torch

    torch.set_num_threads(1)  # as in tests/conftest.py
    out = {}
    for case in [*CASES, "search"]:
        with tempfile.TemporaryDirectory() as tmp:
            out[case] = compute_case(case, Path(tmp))
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"written: {GOLDEN}")
