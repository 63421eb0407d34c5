"""Benchmark: real export bytes vs dense fp32 bytes, and CPU latency of sparse CSR vs dense Linear.

Issue 5, acceptance 3. For an MLP 64-256-256-10 (digits) and a wide MLP 1024-4096-4096-10 at ERK
densities 0.5, 0.1, 0.05, 0.01: bytes of ``sparse.export_model`` (float32 and float16 values) as a
fraction of the dense fp32 bytes (target: <= 9% at 0.05), and for the wide MLP the median latency
of ``sparse.to_sparse_linear`` (torch sparse CSR) vs the dense model at batch 1 and 64, all measured
in one run. Writes benchmarks/results/sparse_export.{csv,md}.

Run by hand: ``.venv/bin/python benchmarks/bench_sparse_export.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import csv
import os
import platform
from pathlib import Path

import torch
from torch import nn

import sparse

DENSITIES = (0.5, 0.1, 0.05, 0.01)
MODELS = {"mlp_64_256_256_10": (64, 256, 256, 10), "wide_1024_4096_4096_10": (1024, 4096, 4096, 10)}
LATENCY_MODEL = "wide_1024_4096_4096_10"
BATCHES = (1, 64)
OUT = Path(__file__).resolve().parent / "results"


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def main() -> None:
    load_before = os.getloadavg()[0]
    rows: list[dict[str, object]] = []
    for name, sizes in MODELS.items():
        for density in DENSITIES:
            torch.manual_seed(0)
            model = mlp(sizes)
            masks = sparse.random_masks(model, density, "erk", torch.Generator().manual_seed(0))
            masks.apply(model)
            dense_b = sparse.dense_size_bytes(model)
            b32 = sparse.exported_size_bytes(model, masks)
            b16 = sparse.exported_size_bytes(model, masks, "float16")
            header, _, _ = sparse.read_export(sparse.export_model(model, masks))
            encodings = ",".join(e["enc"] for e in header["tensors"] if e["name"] in masks.masks)
            row: dict[str, object] = {
                "model": name,
                "density": density,
                "n_active": masks.n_active(),
                "dense_fp32_bytes": dense_b,
                "export_fp32_bytes": b32,
                "export_fp32_ratio": round(b32 / dense_b, 4),
                "export_fp16_bytes": b16,
                "export_fp16_ratio": round(b16 / dense_b, 4),
                "weight_encodings": encodings,
            }
            if name == LATENCY_MODEL:
                sp = sparse.to_sparse_linear(model)
                for batch in BATCHES:
                    x = torch.randn(batch, sizes[0], generator=torch.Generator().manual_seed(1))
                    with torch.inference_mode():
                        err = (sp(x) - model(x)).abs().max().item()
                    # interleave to share any background load fairly; keep the best median of 3 rounds
                    t_dense, t_sparse = [], []
                    for _ in range(3):
                        t_dense.append(sparse.measure_latency(model, x, n_warmup=2, n_repeat=15))
                        t_sparse.append(sparse.measure_latency(sp, x, n_warmup=2, n_repeat=15))
                    row[f"dense_ms_b{batch}"] = round(1e3 * min(t_dense), 3)
                    row[f"csr_ms_b{batch}"] = round(1e3 * min(t_sparse), 3)
                    row[f"speedup_b{batch}"] = round(min(t_dense) / min(t_sparse), 2)
                    row[f"max_abs_err_b{batch}"] = f"{err:.1e}"
            rows.append(row)
            print(row, flush=True)

    OUT.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(OUT / "sparse_export.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)

    lines = [
        f"# Sparse export size and CSR latency (ERK masks; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()})",
        "",
        "| model | density | dense fp32 bytes | export fp32 bytes | ratio | export fp16 bytes | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['density']} | {r['dense_fp32_bytes']} | {r['export_fp32_bytes']} | "
            f"{r['export_fp32_ratio']:.2%} | {r['export_fp16_bytes']} | {r['export_fp16_ratio']:.2%} |"
        )
    lines += [
        "",
        f"Latency of {LATENCY_MODEL}: dense nn.Linear vs torch sparse CSR (`sparse.to_sparse_linear`),",
        "median of 15 runs, best of 3 interleaved rounds; ideal speed-up = 1/density.",
        f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after the run "
        f"({os.cpu_count()} cores); other jobs on the machine distort latency.",
        "",
        "| density | batch | dense ms | CSR ms | dense/CSR | ideal |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["model"] != LATENCY_MODEL:
            continue
        for b in BATCHES:
            lines.append(
                f"| {r['density']} | {b} | {r[f'dense_ms_b{b}']} | {r[f'csr_ms_b{b}']} | "
                f"{r[f'speedup_b{b}']}x | {1 / float(r['density']):.0f}x |"  # type: ignore[arg-type]
            )
    (OUT / "sparse_export.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    at5 = [r for r in rows if r["density"] == 0.05]
    for r in at5:
        status = "OK" if float(r["export_fp32_ratio"]) <= 0.09 else "ABOVE TARGET"  # type: ignore[arg-type]
        print(
            f"{r['model']} at density 0.05: export = {r['export_fp32_ratio']:.2%} of dense ({status}, target <= 9%)"
        )


if __name__ == "__main__":
    main()
