"""Mutation score of the tests over sparse/, attacks/, training/selection.py and the cache-key code.

A mutant is the code with one small deliberate bug (an operator flipped, a constant moved, an
argument dropped); a test suite "kills" it when some test fails. The share killed measures how
much of the code's behaviour the tests pin, which line coverage does not (issue 19). The tool is
mutmut 3 (`pip install "mutmut==3.8.1"`, or `pip install -e ".[mutation]"`), run once per
*group* of modules in its own scratch copy of the tree, with only the group's fast unit tests
(`GROUPS`); mutmut then runs, for each mutant, only the tests that execute the mutated
function, in a process forked from a warm one (seconds per mutant).

Every function of a group's files is mutated, except in the cache-key group, where only the key
and spec functions count (`GROUPS[...]["functions"]`). The full run is thousands of mutants
(training/selection.py alone has ~400) and too slow for a shared 2-core machine, so by default
each group runs a seeded random sample of its mutants (`--sample`, same mutants for the same
source and seed); the score then comes with a 95% Wilson interval. `--sample 0` runs them all.

    python benchmarks/mutation_score.py                       # every group, 40 mutants each
    python benchmarks/mutation_score.py --groups metrics,init --sample 0 --budget-min 30
    python benchmarks/mutation_score.py --rev 49a0fee          # the tests of an older commit
    nice -n 10 python benchmarks/mutation_score.py ...         # on a shared machine

Writes benchmarks/results/mutation.md (`--out`): per group the mutants generated, sampled,
killed (a test failed or timed out), survived (every test passed), not covered (no selected
test runs the function: counted as survived), the score killed / (killed + survived + not
covered), and each survivor's diff with a verdict: `EQUIVALENT` holds the one-line reason
for survivors that compute the same result as the original (no test can kill them).
Not part of `make test` (minutes to hours).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT_VERSION = "3.8.1"

# group -> the modules mutated, their fast unit tests (slow ones deselected: a mutant runs the
# tests that execute its function, and one 30 s test would dominate), and, where only part of a
# file is in scope, the functions whose mutants count (fnmatch on mutmut's `x_<name>__mutmut_<i>`)
GROUPS: dict[str, dict] = {
    "init": {
        "files": ["sparse/init.py"],
        "tests": ["tests/unit/test_sparse_init.py"],
    },
    "masks_export": {
        "files": ["sparse/masks.py", "sparse/export.py", "sparse/inference.py"],
        "tests": ["tests/unit/test_sparse_masks.py", "tests/unit/test_sparse_export.py",
                  "tests/unit/test_sparse_inference.py"],
    },
    "update": {
        "files": ["sparse/update.py", "sparse/resize.py", "sparse/scores.py", "sparse/schedules.py", "sparse/__init__.py"],
        "tests": ["tests/unit/test_sparse_update.py", "tests/unit/test_sparse_schedules.py",
                  "tests/unit/test_sparse_training.py", "tests/unit/test_sparse_imports.py"],
    },
    "metrics": {
        "files": ["attacks/metrics.py"],
        "tests": ["tests/unit/test_attacks_metrics.py",
                  "--deselect=tests/unit/test_attacks_metrics.py::test_bootstrap_interval_covers_true_auc_92_to_98_percent"],
    },
    "attacks": {
        "files": ["attacks/base.py", "attacks/inputs.py", "attacks/lira.py", "attacks/metric_attacks.py",
                  "attacks/mmia.py", "attacks/nn.py", "attacks/nn_models.py", "attacks/rmia.py", "attacks/shadow.py",
                  "attacks/signals.py", "attacks/__init__.py"],
        "tests": ["tests/unit/test_attacks_base.py", "tests/unit/test_attacks_crosscheck.py",
                  "tests/unit/test_attacks_nn.py", "tests/unit/test_attacks_reference.py",
                  "tests/unit/test_attacks_signals.py"],
    },
    "selection": {
        "files": ["training/selection.py"],
        "tests": ["tests/unit/test_selection.py"],
    },
    "cache_keys": {
        "files": ["pipeline/cache/keys.py", "pipeline/cache/store.py", "pipeline/context.py", "pipeline/stages/teacher.py",
                  "pipeline/stages/shadows.py", "pipeline/stages/compress.py", "pipeline/stages/attack.py"],
        "tests": ["tests/unit/test_cache.py", "tests/unit/test_cache_keys.py"],
        "functions": [
            "pipeline.cache.*",
            "pipeline.context.x_data_spec__*", "pipeline.context.x_data_key__*", "pipeline.context.x_model_spec__*",
            "pipeline.context.x_plain__*",
            "pipeline.stages.teacher.x_spec__*", "pipeline.stages.teacher.x_key__*",
            "pipeline.stages.shadows.x_shadow_spec__*", "pipeline.stages.shadows.x_dense_keys__*",
            "pipeline.stages.shadows.x_matched_spec__*", "pipeline.stages.shadows.x_matched_keys__*",
            "pipeline.compress_jobs.x_spec__*", "pipeline.stages.compress.x_key__*",
            "training.compress.method.x_compress_recipe__*", "training.compress.method.x_compress_spec__*",
            "pipeline.compress_jobs.x_compress_config__*",
            "pipeline.stages.attack.x_key__*", "pipeline.stages.attack.x_references__*",
            "pipeline.stages.attack.x__reference_keys__*", "pipeline.stages.attack.x__needs__*",
            "pipeline.stages.attack.x_attack_config__*",
        ],
    },
}

# survivors that compute the same result as the original, so no test can kill them: name -> why.
# (mutmut numbers mutants per function: a reason goes stale when its function is edited.)
EQUIVALENT: dict[str, str] = {
    "sparse.init.x_allocate_counts__mutmut_60": "message of a guard that cannot fire (n_target <= total is checked first)",
    "sparse.init.x_random_masks__mutmut_22": "a float 0/1 mask: MaskSet turns 0/1 numbers into the same bool mask",
    "sparse.export.x__to_numpy__mutmut_7": "copy=True: the same values in a fresh array",
    "sparse.export.x_read_export__mutmut_9": "unpack_from's offset defaults to 0",
    "training.selection.x_resolution__mutmut_2": "drop=None keeps the old index as an extra column nothing reads",
    "attacks.nn_models.x_prediction_features__mutmut_3": "softmax probabilities never exceed 1: no upper clamp needed",
}
# survivors that are not equivalent but that this suite cannot kill (shown, still counted as survived)
UNKILLABLE_HERE: dict[str, str] = {
    "attacks.base.xǁAuditResultǁplot_roc__mutmut_103": "the ROC plot's legend font size: cosmetic, no image test",
    "attacks.rmia.xǁRMIAǁscore__mutmut_19": "the case of a log message",
    "sparse.scores.x__random__mutmut_1": "`.to(None)` leaves the scores on the CPU: the same on the CPU-only "
    "suite, wrong with weights on a GPU; needs a second device to kill",
}

KILLED = {"killed", "timeout", "segfault"}


def tree_files(rev: str | None) -> dict[str, bytes]:
    """The repository's files: the working tree's tracked and new files, or those of `rev`."""
    if rev is None:
        names = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.split("\n")
        return {n: (ROOT / n).read_bytes() for n in names if n and (ROOT / n).is_file()}
    data = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    out = {}
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[m.name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return out


def write_tree(files: dict[str, bytes], dest: Path, group: dict, keep: bool = False) -> None:
    """A scratch copy of the tree with mutmut's config for one group in its pyproject.

    `keep`: update the files of an earlier copy in place and keep its mutants/ (mutmut then reuses
    its records and collects stats for new tests only)."""
    if dest.exists() and not keep:
        shutil.rmtree(dest)
    for name, content in files.items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    tests = [t for t in group["tests"] if not t.startswith("-")]
    missing = [t for t in tests if not (dest / t).exists()]
    if missing:
        raise SystemExit(f"tests of this group missing in the tree: {missing}")
    config = {
        "source_paths": ["pipeline", "sparse", "attacks"],  # the whole packages, so imports resolve here
        "only_mutate": group["files"],
        "pytest_add_cli_args_test_selection": group["tests"],
        "pytest_add_cli_args": ["-p", "no:cacheprovider"],
        "also_copy": ["conf"],  # the tests compose the real config
        "process_isolation": "forkserver",  # torch is not fork-safe after it has run
        "use_git_change_detection": False,
    }
    toml = "\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items())
    with open(dest / "pyproject.toml", "a") as f:
        f.write(toml)


def mutmut(dest: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": ""}
    try:
        return subprocess.run(
            [str(exe), *args], cwd=dest, env=env, capture_output=True, text=True, timeout=max(timeout, 1)
        )
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(err.cmd, 124, str(err.stdout or ""), "time budget spent")


def results(dest: Path) -> dict[str, str]:
    """mutant name -> status, from mutmut's per-file records."""
    from mutmut.stats import status_by_exit_code

    out = {}
    for meta in (dest / "mutants").rglob("*.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = status_by_exit_code[code]
    return out


def diff(dest: Path, name: str) -> str:
    shown = mutmut(dest, ["show", name], 120).stdout
    lines = [ln for ln in shown.splitlines() if ln.startswith(("-", "+")) and not ln.startswith(("---", "+++"))]
    return "\n".join(lines[:6])


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def run_group(
    name: str, group: dict, files: dict[str, bytes], work: Path, args, deadline: float, earlier: dict | None = None
) -> dict:
    """Sample the group's mutants and run them; with `earlier` (a previous run's record of this
    group), run only its mutants that were not killed and keep the rest of its verdicts."""
    dest = work / name
    write_tree(files, dest, group, keep=earlier is not None and dest.is_dir())
    started = time.time()
    # generate every mutant and record which tests run which function; then ask for a name that
    # matches nothing, so mutmut stops before testing any mutant
    gen = mutmut(dest, ["run", "--max-children", str(args.max_children), "__list_only__"], deadline - time.time())
    everything = results(dest)
    if not everything:
        raise SystemExit(f"mutmut generated no mutants for {name}:\n{gen.stdout[-3000:]}\n{gen.stderr[-3000:]}")
    names = sorted(everything)
    if group.get("functions"):
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in group["functions"])]
    sample = names if not args.sample or args.sample >= len(names) else sorted(
        random.Random(f"{args.seed}:{name}").sample(names, args.sample))
    before = None
    if earlier is not None:
        sample, before = sorted(earlier["status"]), earlier.get("before") or earlier["status"]
        missing = [n for n in sample if n not in everything]
        if missing:
            raise SystemExit(f"{name}: the earlier run's mutants {missing[:3]}... no longer exist (source edited)")
    todo = [n for n in sample if earlier is None or earlier["status"][n] not in KILLED]
    run = mutmut(dest, ["run", "--max-children", str(args.max_children), *todo], deadline - time.time())
    status = results(dest)
    got = {n: status.get(n, "not checked") if n in todo else earlier["status"][n] for n in sample}
    survivors = sorted(n for n, s in got.items() if s in ("survived", "no tests"))
    return {
        "name": name,
        "files": group["files"],
        "tests": group["tests"],
        "generated": len(names),
        "sampled": len(sample),
        "status": got,
        "survivors": {n: (got[n], diff(dest, n)) for n in survivors},
        "before": before,  # the first run's verdicts, when this one reran its survivors
        "seconds": time.time() - started,
        "timed_out": run.returncode == 124,
        "log_tail": (run.stdout + run.stderr)[-1500:] if run.returncode not in (0, 124) else "",
    }


def score(status: dict[str, str], drop_equivalent: bool = False) -> tuple[int, int, int, int]:
    """(killed, survived, not covered, not checked); optionally without the known equivalent mutants."""
    values = [s for n, s in status.items() if not (drop_equivalent and n in EQUIVALENT)]
    killed = sum(s in KILLED for s in values)
    survived = sum(s == "survived" for s in values)
    uncovered = sum(s == "no tests" for s in values)
    return killed, survived, uncovered, len(values) - killed - survived - uncovered


def report(groups: list[dict], args, load: str, command: str) -> str:
    lines = [
        "# Mutation score (issue 19)",
        "",
        f"`{command}`",
        "",
        f"mutmut {MUTMUT_VERSION}; tree: {args.rev or 'working tree'}; sample {args.sample or 'all'} per group "
        f"(seed {args.seed}); load average at start {load}.",
        "Score = killed / (killed + survived + not covered); 95% Wilson interval over the sampled mutants.",
        "",
        "| group | files | mutants | sampled | killed | survived | not covered | not checked | score | 95% CI "
        "| without equivalent | first run | time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    tk = tn = bk = bn = en = 0
    for g in groups:
        k, s, u, nc = score(g["status"])
        n = k + s + u
        tk, tn = tk + k, tn + n
        ek, es, eu, _ = score(g["status"], drop_equivalent=True)
        en += ek + es + eu
        first = score(g["before"]) if g.get("before") else (k, s, u, nc)
        bk, bn = bk + first[0], bn + sum(first[:3])
        lo, hi = wilson(k, n)
        sc = f"{k / n:.1%}" if n else "n/a"
        fs = f"{first[0] / sum(first[:3]):.1%}" if sum(first[:3]) else "n/a"
        lines.append(
            f"| {g['name']} | {', '.join(f'`{f}`' for f in g['files'])} | {g['generated']} | {g['sampled']} | {k} | {s} "
            f"| {u} | {nc} | {sc} | {lo:.0%}–{hi:.0%} | {ek / max(ek + es + eu, 1):.1%} | {fs} "
            f"| {g['seconds'] / 60:.1f} min{' (budget spent)' if g['timed_out'] else ''} |"
        )
    lo, hi = wilson(tk, tn)
    if tn:
        lines.append(
            f"| **all** | | | | {tk} | | | | **{tk / tn:.1%}** | {lo:.0%}–{hi:.0%} | {tk / max(en, 1):.1%} "
            f"| {bk / max(bn, 1):.1%} | |"
        )
    lines += [
        "",
        "\"first run\": the score before the survivors of that run were rerun against tests written since "
        "(`--rerun-survivors`; killed mutants stay killed as tests are only added).",
        "",
    ]
    lines += ["## Tests per group (and the run each group's numbers come from)", ""]
    lines += [
        f"- {g['name']}: {' '.join(g['tests'])} — `{g.get('command', command)}` on {g.get('tree', '?')}, "
        f"load average {g.get('load', load)}"
        for g in groups
    ]
    lines += ["", "## Survivors", ""]
    for g in groups:
        for n, (st, d) in g["survivors"].items():
            why = EQUIVALENT.get(n) or UNKILLABLE_HERE.get(n) or (
                "no test kills it yet" if st == "survived" else "no selected test runs it")
            why = f"equivalent: {why}" if n in EQUIVALENT else why
            lines += [f"- `{n}` ({st}): {why}", "  ```diff", *("  " + ln for ln in d.splitlines()), "  ```"]
        if g["log_tail"]:
            lines += [f"\n{g['name']}: mutmut ended abnormally:\n```\n{g['log_tail']}\n```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated, of {list(GROUPS)}")
    parser.add_argument("--sample", type=int, default=40, help="mutants per group (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-min", type=float, default=60.0, help="time box for the whole run")
    parser.add_argument("--max-children", type=int, default=1, help="parallel mutant workers")
    parser.add_argument("--rev", default=None, help="a git revision to test instead of the working tree")
    parser.add_argument("--work", default="/tmp/safecompress-mutation", help="scratch folder")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/mutation.md"))
    parser.add_argument("--json", default=None, help="also write the raw statuses here")
    parser.add_argument(
        "--update", default=None, help="a --json file of an earlier run: its other groups stay in the report"
    )
    parser.add_argument(
        "--rerun-survivors", action="store_true",
        help="with --update: rerun only the earlier run's surviving mutants of --groups, with today's tests",
    )
    args = parser.parse_args()
    try:
        import mutmut as _  # noqa: F401
    except ImportError:
        raise SystemExit(f'mutmut is not installed: pip install "mutmut=={MUTMUT_VERSION}"') from None
    wanted = [g for g in args.groups.split(",") if g]
    unknown = [g for g in wanted if g not in GROUPS]
    if unknown:
        raise SystemExit(f"unknown group(s) {unknown}; valid: {list(GROUPS)}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    command = "python benchmarks/mutation_score.py " + " ".join(sys.argv[1:])
    files = tree_files(args.rev)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget_min * 60
    earlier = json.loads(Path(args.update).read_text()) if args.update else []
    kept = [g for g in earlier if g["name"] not in wanted]
    done: list[dict] = []
    for name in wanted:
        if time.time() >= deadline:
            print(f"time budget spent before group {name}", file=sys.stderr)
            break
        previous = next((g for g in earlier if g["name"] == name), None) if args.rerun_survivors else None
        g = run_group(name, GROUPS[name], files, work, args, deadline, previous)
        g.update(command=command, load=load, tree=args.rev or "working tree")
        done.append(g)
        k, s, u, nc = score(g["status"])
        print(f"{name}: killed {k}, survived {s}, not covered {u}, not checked {nc} ({g['seconds']:.0f} s)", flush=True)
        ordered = sorted(kept + done, key=lambda g: list(GROUPS).index(g["name"]))
        Path(args.out).write_text(report(ordered, args, load, command))
        if args.json:
            Path(args.json).write_text(json.dumps(ordered, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
