"""Dependencies point one way. The library (training/, sparse/, attacks/: pure torch, numpy and
scikit-learn) never imports the orchestration (pipeline/) or its frameworks (Hydra, OmegaConf,
Optuna, MLflow); inside the library, sparse/ and attacks/ stand alone and training/ builds on
both (masks; the safety test's attackers); inside pipeline/, stages are peers and config objects stop at the stages' edge."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"hydra", "omegaconf", "optuna", "mlflow", "pipeline"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


LIBRARY = ("training", "sparse", "attacks")
# which library package may import which (a package always imports itself)
LIBRARY_DEPENDS = {"training": {"sparse", "attacks"}, "sparse": set(), "attacks": set()}


@pytest.mark.parametrize("package", LIBRARY)
def test_library_packages_import_no_framework(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    offenders = {str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN) for f in files}
    offenders = {f: bad for f, bad in offenders.items() if bad}
    assert not offenders, f"forbidden imports: {offenders}"


@pytest.mark.parametrize("package", LIBRARY)
def test_library_packages_import_only_the_library_below_them(package):
    allowed = LIBRARY_DEPENDS[package] | {package}
    files = sorted((ROOT / package).rglob("*.py"))
    offenders = {str(f.relative_to(ROOT)): sorted((imported_roots(f) & set(LIBRARY)) - allowed) for f in files}
    offenders = {f: bad for f, bad in offenders.items() if bad}
    assert not offenders, f"{package}/ may import only {sorted(allowed)}: {offenders}"


def test_the_library_is_where_the_training_code_lives():
    """The pure-torch modules moved out of pipeline/ (issue 28) stay out: no pipeline module of
    the same name reappears beside the orchestration."""
    # every folder of the library is a regular package (an __init__.py): find_packages ships only those
    for package in LIBRARY:
        folders = [ROOT / package, *(d for d in (ROOT / package).rglob("*") if d.is_dir() and d.name != "__pycache__")]
        assert not [d for d in folders if not (d / "__init__.py").exists()], f"{package}/: folders without __init__.py"
    library = {p.relative_to(ROOT / "training").as_posix() for p in (ROOT / "training").rglob("*.py")}
    assert {"loops.py", "models.py", "model_adapter.py", "recipes.py", "data.py", "formats.py",
            "compress/loop.py", "batched/grouped.py"} <= library
    for gone in ("training.py", "models.py", "model_adapter.py", "data.py", "seeds.py", "compress", "batched"):
        assert not (ROOT / "pipeline" / gone).exists(), f"pipeline/{gone} is library code: it lives in training/"


# pipeline/: the entry's layer (entry point, wiring, config, validation, run context) flat, and
# one sub-package per room: stages, study, cache, tracking, analysis, datasets, export
PIPELINE_ROOMS = {"stages", "study", "cache", "tracking", "analysis", "datasets", "export"}
ENTRY_LAYER = {
    "__main__", "flow", "config", "validation", "search_validation", "context", "compress_jobs",
    "user_checks", "membership", "threads", "results",
}


def test_pipeline_is_the_entry_layer_and_its_rooms():
    pipeline = ROOT / "pipeline"
    rooms = {p.name for p in pipeline.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    flat = {p.stem for p in pipeline.glob("*.py")} - {"__init__"}
    assert rooms == PIPELINE_ROOMS, f"pipeline/ sub-packages {sorted(rooms)}; declared {sorted(PIPELINE_ROOMS)}"
    assert flat == ENTRY_LAYER, f"flat pipeline/ modules {sorted(flat)}: a new one belongs in a room or in ENTRY_LAYER"


def test_the_analysis_reads_runs_and_never_drives_them():
    """analysis/ turns tracked runs into tables and plots: it imports no stage, study or cache."""
    for path in sorted((ROOT / "pipeline" / "analysis").glob("*.py")):
        bad = {m for m in imported_modules(path) if m.startswith(("pipeline.stages", "pipeline.study", "pipeline.cache"))}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_checker_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nfrom omegaconf import DictConfig\nimport mlflow.tracking\n")
    assert imported_roots(bad) & FORBIDDEN == {"omegaconf", "mlflow"}


# ---------------------------------------------------------------- pipeline/: stages are peers

PIPELINE = ROOT / "pipeline"
STAGE_FILES = sorted(p for p in (PIPELINE / "stages").glob("*.py") if p.name != "__init__.py")
# the layer above the stages: the entry point and the wiring that hands results from stage to stage
ABOVE_STAGES = {PIPELINE / "__main__.py", PIPELINE / "flow.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, with `from a import b` also counted as `a.b` (b may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module)
            mods |= {f"{node.module}.{alias.name}" for alias in node.names}
    return mods


def _stage_imports(path: Path) -> set[str]:
    return {m for m in imported_modules(path) if m == "pipeline.stages" or m.startswith("pipeline.stages.")}


def test_there_are_stages_to_check():
    assert {p.stem for p in STAGE_FILES} >= {"teacher", "shadows", "compress", "attack", "search", "report", "compare"}


@pytest.mark.parametrize("path", STAGE_FILES, ids=[p.stem for p in STAGE_FILES])
def test_no_stage_imports_another_stage(path):
    assert not _stage_imports(path), f"{path.name} imports a stage: {sorted(_stage_imports(path))}"


def test_only_the_layer_above_the_stages_imports_them():
    below = [p for p in PIPELINE.rglob("*.py") if "stages" not in p.parts and p not in ABOVE_STAGES]
    assert below
    offenders = {str(p.relative_to(ROOT)): sorted(_stage_imports(p)) for p in below if _stage_imports(p)}
    assert not offenders, f"infrastructure modules import stages: {offenders}"


def test_the_stage_checker_catches_both_import_forms(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from pipeline.stages import teacher\nimport pipeline.stages.compress as c\nfrom pipeline import runs\n")
    assert _stage_imports(bad) == {"pipeline.stages", "pipeline.stages.teacher", "pipeline.stages.compress"}


# ---------------------------------------------------------------- pipeline/: config objects stop at the edge

CONFIG_FRAMEWORKS = {"hydra", "omegaconf"}
# The config edge: the entry point and its wiring, the schemas and the validation pass, the run
# context, the stages' entry functions, the compress package's config-facing module, tracking
# (the MLflow setup from the config), the logged config.yaml, the search workers' config text and
# the thread and worker counts the entry point resolves.
CONFIG_EDGE = {
    "__main__.py", "flow.py", "config.py", "validation.py", "context.py", "tracking/plumbing.py", "tracking/masking.py",
    "compress_jobs.py", "study/workers.py", "threads.py", "search_validation.py",
}
# `_target_` strings resolved to the registered loaders (hydra.utils, no config object)
RESOLVES_TARGETS = {"datasets/registry.py"}


def _below_the_edge() -> list[Path]:
    files = []
    for p in sorted(PIPELINE.rglob("*.py")):
        rel = p.relative_to(PIPELINE).as_posix()
        if rel.startswith("stages/") or rel in CONFIG_EDGE or rel in RESOLVES_TARGETS:
            continue
        files.append(p)
    return files


def test_config_objects_stop_at_the_stage_boundary():
    below = _below_the_edge()
    rels = {p.relative_to(PIPELINE).as_posix() for p in below}
    assert {"cache/store.py", "datasets/images.py", "tracking/stores.py", "tracking/runs.py", "analysis/frontier.py"} <= rels
    offenders = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & CONFIG_FRAMEWORKS) for p in below}
    offenders = {f: bad for f, bad in offenders.items() if bad}
    assert not offenders, f"modules below the stages' entry functions import the config frameworks: {offenders}"


def test_the_dataset_registry_uses_hydra_only_to_resolve_targets():
    path = PIPELINE / "datasets" / "registry.py"
    assert "omegaconf" not in imported_roots(path)
    assert imported_modules(path) & {"hydra.utils", "hydra.utils.get_method"}


def _reads_root_seed(path: Path) -> bool:
    """`int(cfg.seed)` or `cfg.seed` anywhere in the module (the run context carries the seed)."""
    return any(
        isinstance(node, ast.Attribute) and node.attr == "seed" and isinstance(node.value, ast.Name)
        and node.value.id == "cfg"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
    )


# where the root seed is still read from the config: the run context that carries it, the
# declared fields of the data's and the audit's cache keys, and the tracked runs' seed tag
READS_CFG_SEED = {"context.py", "stages/attack.py", "tracking/plumbing.py"}


def test_only_the_context_and_cache_key_specs_read_the_root_seed_from_the_config():
    readers = {p.relative_to(PIPELINE).as_posix() for p in PIPELINE.rglob("*.py") if _reads_root_seed(p)}
    assert readers <= READS_CFG_SEED, f"read cfg.seed instead of the run context's seed: {sorted(readers - READS_CFG_SEED)}"


def test_the_seed_checker_catches_a_read(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(cfg):\n    return int(cfg.seed) + 1\n")
    assert _reads_root_seed(bad)
    ok = tmp_path / "ok.py"
    ok.write_text("def f(ctx):\n    return ctx.seed\n")
    assert not _reads_root_seed(ok)


# ---------------------------------------------------------------- pipeline/: imports point one way

def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path, root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports, anywhere in the file (inside functions and
    `if TYPE_CHECKING:` too: a deferred import is still a dependency). A package's `__init__`
    re-exporting its own submodules is its face, not a dependency, and is left out."""
    paths = {_module_name(p, root): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        own = path.name == "__init__.py"
        graph[name] = {
            m for m in imported_modules(path)
            if m in paths and m != name and not (own and m.startswith(name + "."))
        }
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_in_the_pipeline():
    graph = import_graph(PIPELINE)
    assert "pipeline.study.storage" in graph["pipeline.study.mlflow_runs"]  # the graph is read
    assert import_cycles(graph) == [], "modules that import each other (directly or round a circle)"


def test_the_cycle_checker_catches_a_deferred_and_a_type_checking_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.a import f\n")  # a re-export: not a dependency
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n")
    (pkg / "c.py").write_text("import pkg\n")
    assert import_cycles(import_graph(pkg, tmp_path)) == [["pkg.a", "pkg.b"]]
