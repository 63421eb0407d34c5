"""Run every `benchmarks/bench_*.py` as a subprocess and write one results table.

    python benchmarks/run_all.py                    # all of them, one after another
    python benchmarks/run_all.py --only shadows     # the scripts whose name contains "shadows"
                                                    # (their rows replace those of the last run)
    python benchmarks/run_all.py --timeout 1200     # seconds per script

Writes `benchmarks/results/README.md`: per script its status (ok / failed (exit code) /
timed out), wall time, and the key ratio lines it printed (lines with a speed-up or ratio
such as `2.16x`). Each script still writes its own detailed results under
`benchmarks/results/`. Scripts run one at a time: they measure timings, and two at once
would measure each other.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# a ratio printed by a benchmark: "39.6x", "2.16x", "1.00×"
RATIO = re.compile(r"\b\d+(?:\.\d+)?\s?[x×](?![\w])")
MAX_LINES = 8


def ratio_lines(output: str) -> list[str]:
    """The lines of `output` that state a ratio (deduplicated, in order, at most MAX_LINES).

    A script that prints lines starting with `summary:` has those reported instead.
    """
    summaries = [ln.strip()[len("summary:"):].strip() for ln in output.splitlines() if ln.strip().startswith("summary:")]
    if summaries:
        return summaries[:MAX_LINES]
    seen: list[str] = []
    for line in output.splitlines():
        line = line.strip().strip("|").strip()
        if line and RATIO.search(line) and line not in seen:
            seen.append(re.sub(r"\s*\|\s*", " | ", line))
    return seen[:MAX_LINES]


def run_one(script: Path, timeout: float) -> dict[str, object]:
    t0 = time.perf_counter()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=timeout,
            cwd=HERE.parent, env=env,
        )
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        out = proc.stdout + "\n" + proc.stderr
    except subprocess.TimeoutExpired as err:
        status = f"timed out after {timeout:.0f} s"
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
    wall = time.perf_counter() - t0
    lines = ratio_lines(out)
    if status != "ok" and not lines:
        tail = [ln for ln in out.strip().splitlines() if ln.strip()][-1:]
        lines = [f"last output: {tail[0][:200]}"] if tail else []
    return {"script": script.name, "status": status, "wall_s": wall, "lines": lines}


def _row_line(r: dict[str, object]) -> str:
    ratios = "<br>".join(str(x).replace("|", "/") for x in r["lines"]) or "—"
    return f"| `{r['script']}` | {r['status']} | {r['wall_s']:.1f} | {ratios} |"


def _previous_rows(path: Path) -> dict[str, str]:
    """Script name -> its table line in an existing results file."""
    if not path.exists():
        return {}
    rows = (re.match(r"\| `(bench_[^`]+)` \|", ln) for ln in path.read_text().splitlines())
    return {m.group(1): m.string for m in rows if m}


def write_table(rows: list[dict[str, object]], path: Path, keep_others: bool = False) -> str:
    """Write the results table; with `keep_others`, rows of scripts not in `rows` stay as they were."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = {str(r["script"]): _row_line(r) for r in rows}
    kept = {k: v for k, v in _previous_rows(path).items() if k not in table} if keep_others else {}
    table.update(kept)
    note = f" Rows of {', '.join(f'`{k}`' for k in sorted(kept))} are from an earlier run." if kept else ""
    text = "\n".join([
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run_all.py` on {dt.datetime.now():%Y-%m-%d %H:%M}; "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load:.1f} at the end. Each script's own file in this folder has the details.{note}",
        "",
        "| script | status | wall time (s) | key ratios |",
        "|---|---|---|---|",
        *(table[k] for k in sorted(table)),
        "",
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="run only scripts whose file name contains this")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per script")
    ap.add_argument("--out", type=Path, default=RESULTS / "README.md")
    args = ap.parse_args(argv)
    scripts = sorted(p for p in HERE.glob("bench_*.py") if args.only in p.name)
    if not scripts:
        raise SystemExit(f"no benchmarks/bench_*.py matches {args.only!r}")
    rows = []
    for script in scripts:
        print(f"running {script.name} ...", flush=True)
        row = run_one(script, args.timeout)
        print(f"  {row['status']} in {row['wall_s']:.1f} s", flush=True)
        rows.append(row)
    print(write_table(rows, args.out, keep_others=bool(args.only)))
    print(f"written: {args.out}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
