"""Benchmark: what shipping a compressed model costs — bytes per format, inference latency per
runtime, and the price of logging every trial's model as an MLflow Model.

Issue 25. The default model (MLP 600-256-256-100 of `model=mlp` on purchase_synth) with ERK masks
at density 0.05 and 0.1, weights drawn at random (size and latency do not depend on their values):
- bytes on disk of `model.sc` (the compact export), `state_dict.pt` (dense, zeros in place),
  `model.onnx` (dense initialisers), and the logged MLflow Model folder (pt2 + model.sc + files);
- median latency at batch 1 and 64 of torch dense, torch sparse CSR (`sparse.to_sparse_linear`)
  and ONNX Runtime (1 intra-op thread), torch at 1 thread, best of 3 interleaved rounds;
- seconds `pipeline.export.mlflow_model.log_model` takes (first call in a process, then the median
  of the next 5) into a fresh SQLite store, and its bytes: what `tracking.log_models=true` adds
  per trial.
One run, ratios to torch dense printed. Writes benchmarks/results/export.{csv,md}.

Run by hand: ``.venv/bin/python benchmarks/bench_export.py`` (under a minute on 2 cores).
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sparse  # noqa: E402
from pipeline.export import mlflow_model  # noqa: E402
from training import formats  # noqa: E402
from training.models import MLP  # noqa: E402

DENSITIES = (0.05, 0.1)
BATCHES = (1, 64)
N_LOG = 6  # MLflow Model logs per density: the first (cold) and 5 warm ones
OUT = ROOT / "benchmarks" / "results"


def _model(density: float) -> tuple[torch.nn.Module, sparse.MaskSet]:
    torch.manual_seed(0)
    model = MLP([600], 100, hidden_sizes=[256, 256]).eval()
    masks = sparse.random_masks(model, density, "erk", torch.Generator().manual_seed(0))
    masks.apply(model)
    return model, masks


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_latency(session, x, n_warmup: int = 2, n_repeat: int = 15) -> float:
    feed = {formats.INPUT_NAME: x.numpy()}
    for _ in range(n_warmup):
        session.run(None, feed)
    times = []
    for _ in range(n_repeat):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _log_cost(model, sc: Path, work: Path) -> tuple[float, float, int]:
    """(first, median of the rest) seconds of logging the model, and its folder's bytes."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    exp = mlflow.create_experiment(f"bench-{work.name}", artifact_location=(work / "artifacts").as_uri())
    times, model_id = [], None
    example = torch.randn(2, 600, generator=torch.Generator().manual_seed(2))
    with mlflow.start_run(experiment_id=exp):
        for _ in range(N_LOG):
            t0 = time.perf_counter()
            model_id = mlflow_model.log_model(model, sc, example, {"density": 0.05})
            times.append(time.perf_counter() - t0)
    location = mlflow.MlflowClient().get_logged_model(model_id).artifact_location
    return times[0], statistics.median(times[1:]), _dir_bytes(Path(location.removeprefix("file://")))


def main() -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    load_before = os.getloadavg()[0]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for density in DENSITIES:
            work = Path(tmp) / f"d{density}"
            work.mkdir()
            model, masks = _model(density)
            sc = work / "model.sc"
            row: dict[str, object] = {"density": density, "dense_fp32_bytes": sparse.dense_size_bytes(model)}
            row["sc_bytes"] = sparse.save_export(model, sc, masks=masks)
            row["state_dict_bytes"] = formats.write_state_dict(model, work / "state_dict.pt")
            row["onnx_bytes"] = formats.write_onnx(model, torch.zeros(2, 600), work / "model.onnx")
            first, warm, mlflow_bytes = _log_cost(model, sc, work)
            row.update(mlflow_log_s_first=round(first, 3), mlflow_log_s=round(warm, 3), mlflow_model_bytes=mlflow_bytes)
            csr = sparse.to_sparse_linear(model)
            session = _ort_session(work / "model.onnx")
            for b in BATCHES:
                x = torch.randn(b, 600, generator=torch.Generator().manual_seed(1))
                t = {"dense": [], "csr": [], "ort": []}
                for _ in range(3):  # interleaved rounds share any background load; best median kept
                    t["dense"].append(sparse.measure_latency(model, x, n_warmup=2, n_repeat=15))
                    t["csr"].append(sparse.measure_latency(csr, x, n_warmup=2, n_repeat=15))
                    t["ort"].append(_ort_latency(session, x))
                for k, v in t.items():
                    row[f"{k}_ms_b{b}"] = round(1e3 * min(v), 4)
                row[f"csr_speedup_b{b}"] = round(min(t["dense"]) / min(t["csr"]), 2)
                row[f"ort_speedup_b{b}"] = round(min(t["dense"]) / min(t["ort"]), 2)
            rows.append(row)
            print(row, flush=True)

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "export.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [
        f"# Shipping the compressed model: bytes, latency, MLflow Model cost (MLP 600-256-256-100, ERK masks; "
        f"torch {torch.__version__} at 1 thread, ONNX Runtime {__import__('onnxruntime').__version__} at 1 "
        f"intra-op thread, {platform.machine()}, one run)",
        "",
        "| density | model.sc | state_dict.pt | model.onnx | MLflow Model folder | dense fp32 | .sc / state_dict |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['density']} | {r['sc_bytes']:,} | {r['state_dict_bytes']:,} | {r['onnx_bytes']:,} | "
                     f"{r['mlflow_model_bytes']:,} | {r['dense_fp32_bytes']:,} | "
                     f"{r['sc_bytes'] / r['state_dict_bytes']:.3f}x |")
    lines += [
        "",
        "Median latency (ms) of 15 calls, best of 3 interleaved rounds; speed-up = torch dense / the runtime.",
        f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} cores): "
        "other jobs on the machine distort latency.",
        "",
        "| density | batch | torch dense | torch CSR | ONNX Runtime | CSR speed-up | ORT speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for b in BATCHES:
            lines.append(f"| {r['density']} | {b} | {r[f'dense_ms_b{b}']} | {r[f'csr_ms_b{b}']} | {r[f'ort_ms_b{b}']} | "
                         f"{r[f'csr_speedup_b{b}']}x | {r[f'ort_speedup_b{b}']}x |")
    lines += [
        "",
        "Logging the model as an MLflow Model (`tracking.log_models=true`, what each trial adds): "
        + "; ".join(f"density {r['density']}: first log {r['mlflow_log_s_first']} s"
                    + (" (the process's first: torch.export warms up)" if i == 0 else "")
                    + f", then {r['mlflow_log_s']} s each (median of {N_LOG - 1}), {r['mlflow_model_bytes']:,} bytes"
                    for i, r in enumerate(rows)) + ".",
    ]
    (OUT / "export.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for r in rows:
        print(f"summary: density {r['density']}: .sc {r['sc_bytes'] / r['state_dict_bytes']:.3f}x of state_dict; "
              f"batch 1 CSR {r['csr_speedup_b1']}x, ORT {r['ort_speedup_b1']}x; batch 64 CSR {r['csr_speedup_b64']}x, "
              f"ORT {r['ort_speedup_b64']}x torch dense; MLflow Model {r['mlflow_log_s']} s, "
              f"{r['mlflow_model_bytes']:,} B per trial")


if __name__ == "__main__":
    main()
