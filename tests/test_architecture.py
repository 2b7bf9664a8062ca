"""Layout rules of SPEC section 2: imports flow pipelines -> cluster -> vsae, vsae never imports
ray, cluster holds only what needs Ray, and every path under a store root comes from one table."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "vsae": {"ray", "cluster", "pipelines"},
    "cluster": {"pipelines"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
            out.add(node.module)
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


# What only vsae may do: storage paths, store I/O, reports, job logic.
CLUSTER_MAY_NOT_USE = ("vsae.store", "vsae.report", "vsae.jobs", "vsae.data", "vsae.sae", "vsae.analysis",
                       "vsae.train", "vsae.extract", "vsae.client", "fsspec", "zarr", "json")
PATH_FRAGMENT = re.compile(r"(^|/)(saes|analysis|runs|_reports|_tasks|_synthetic|hooks|dictionaries|graph|tuning|"
                           r"visualisations|dashboards)/|(latest|manifest|analysis)\.json|dataset\.parquet|_lease")


def string_constants(path: Path) -> list[tuple[int, str]]:
    """String literals of a module (f-string parts included), docstrings left out."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):  # attribute docstrings of config classes
        if isinstance(node, ast.ClassDef):
            for a, b in zip(node.body, node.body[1:]):
                if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                    docstrings.add(id(b.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_cluster_holds_only_the_ray_executor():
    """No storage paths, store I/O, reports or job logic in cluster/: it runs units of work."""
    offenders = {}
    for path in (ROOT / "cluster").rglob("*.py"):
        used = {m for m in imported_modules(path) if m.startswith(CLUSTER_MAY_NOT_USE)}
        paths = [f"{line}: {text!r}" for line, text in string_constants(path) if PATH_FRAGMENT.search(text)]
        writes = [n.func.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Attribute) and n.func.attr in ("save", "write_bytes", "write_json",
                                                                            "put_object", "summary")]
        if used or paths or writes:
            offenders[str(path.relative_to(ROOT))] = {"imports": sorted(used), "paths": paths, "writes": writes}
    assert not offenders
    lines = sum(len(p.read_text().splitlines()) for p in (ROOT / "cluster").rglob("*.py"))
    assert lines < 400, f"cluster/ has {lines} lines: job logic belongs in vsae/jobs"


def test_every_path_under_a_store_root_comes_from_the_layout():
    """Path segments of the store layout are spelled in vsae/store/paths.py and nowhere else."""
    offenders = {}
    for path in [*(ROOT / "vsae").rglob("*.py"), *(ROOT / "cluster").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py")]:
        if path == ROOT / "vsae/store/paths.py":
            continue
        hits = [f"{line}: {text!r}" for line, text in string_constants(path) if PATH_FRAGMENT.search(text)
                and not text.startswith("runs/demo") and not text.startswith("runs/synthetic")]
        if hits:
            offenders[str(path.relative_to(ROOT))] = hits
    assert not offenders


def test_importing_vsae_loads_no_ray_and_has_no_side_effects():
    code = ("import logging, sys, vsae, vsae.store, vsae.synthetic, vsae.runner, vsae.config, vsae.jobs; "
            "assert 'ray' not in sys.modules, 'ray imported'; "
            "assert not logging.getLogger().handlers, 'logging configured'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_configs_cards_and_job_checks_import_no_torch():
    """What a job checks before it starts (configs, model cards, hook names, the store spec) is
    read without torch, so a mistake is reported in a fraction of a second."""
    code = ("import sys; from vsae.jobs import JOBS; [k.config_class for k in JOBS.values()]; "
            "from vsae.models import card, resolve_hooks; resolve_hooks(card('inception_v1.lucid').hooks, "
            "['mixed4a'], 'inception_v1.lucid'); import vsae.store, vsae.sampling, vsae.info; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_public_api_is_exported():
    import vsae

    for name in vsae.__all__:
        assert getattr(vsae, name) is not None


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
    return [line.strip() for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_command():
    commands = readme_commands()
    assert len(commands) == 2, commands
    main_cmd, test_cmd = commands
    assert "setup.sh" in main_cmd and "vsae demo" in main_cmd
    assert "setup.sh --test" in test_cmd and "pytest" in test_cmd
    ci = (ROOT / ".ci/run").read_text()
    assert test_cmd in ci, f".ci/run must run the README's test command: {test_cmd}"
    for path in re.findall(r"(pipelines/\S+\.(?:py|toml)|infra/\S+\.sh)", main_cmd + test_cmd):
        assert (ROOT / path).exists(), path


def test_the_documented_store_layout_is_the_layout_table():
    from vsae.store.paths import render_layout_table

    assert render_layout_table() in (ROOT / "docs/store-layout.md").read_text()
    for doc in ("architecture", "store-layout", "adding-a-model", "adding-a-job"):
        assert (ROOT / f"docs/{doc}.md").exists(), doc
