"""benchmarks/run_all.py: ratio lines are picked from a script's output; the table has one row per script."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "run_all", Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py")
run_all = importlib.util.module_from_spec(SPEC)
sys.modules["run_all"] = run_all
SPEC.loader.exec_module(run_all)


def test_ratio_lines_keep_only_ratios():
    out = "\n".join([
        "# Shadow training", "| method | seconds | speed-up |", "|---|---|---|",
        "| sequential loop | 1.16 | 1.00x |", "| grouped (baddbmm) | 0.54 | 2.16x |",
        "written: results/x.md", "max abs difference 3.58e-07", "torch.func 39.6× faster",
    ])
    assert run_all.ratio_lines(out) == [
        "sequential loop | 1.16 | 1.00x", "grouped (baddbmm) | 0.54 | 2.16x", "torch.func 39.6× faster"]



def test_summary_lines_replace_the_ratio_lines():
    out = "\n".join([
        "| sequential loop | 1.16 | 1.00x |", "| grouped | 0.54 | 2.16x |",
        "summary: grouped vs loop, 1 thread(s): 2.16x wall", "  summary: 2 threads: 3.20x wall",
    ])
    assert run_all.ratio_lines(out) == ["grouped vs loop, 1 thread(s): 2.16x wall", "2 threads: 3.20x wall"]


def test_one_failing_script_is_reported(tmp_path):
    bad = tmp_path / "bench_bad.py"
    bad.write_text("print('ratio 3.0x')\nraise SystemExit(3)\n")
    row = run_all.run_one(bad, timeout=60)
    assert row["status"] == "failed (exit 3)" and row["lines"] == ["ratio 3.0x"]
    slow = tmp_path / "bench_slow.py"
    slow.write_text("import time\ntime.sleep(30)\n")
    row2 = run_all.run_one(slow, timeout=1)
    assert row2["status"].startswith("timed out")
    text = run_all.write_table([row, row2], tmp_path / "README.md")
    assert "| `bench_bad.py` | failed (exit 3) |" in text and "ratio 3.0x" in text
    assert (tmp_path / "README.md").read_text() == text


def test_only_replaces_the_rows_it_ran(tmp_path):
    out = tmp_path / "README.md"
    first = [{"script": "bench_a.py", "status": "ok", "wall_s": 1.0, "lines": ["a 2.0x"]},
             {"script": "bench_b.py", "status": "ok", "wall_s": 2.0, "lines": ["b 3.0x"]}]
    run_all.write_table(first, out)
    again = [{"script": "bench_b.py", "status": "failed (exit 1)", "wall_s": 0.5, "lines": []}]
    text = run_all.write_table(again, out, keep_others=True)
    assert "| `bench_a.py` | ok | 1.0 | a 2.0x |" in text  # kept, and said so
    assert "| `bench_b.py` | failed (exit 1) | 0.5 | — |" in text and "b 3.0x" not in text
    assert "Rows of `bench_a.py` are from an earlier run." in text
    assert "bench_a" not in run_all.write_table(again, out)  # a full run writes only what it ran
