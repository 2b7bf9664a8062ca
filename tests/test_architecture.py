"""Layout rules of SPEC section 2: imports flow pipelines -> cluster -> vsae, and vsae never imports ray."""

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


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_importing_vsae_loads_no_ray_and_has_no_side_effects():
    code = ("import logging, sys, vsae, vsae.store, vsae.synthetic, vsae.runner, vsae.config; "
            "assert 'ray' not in sys.modules, 'ray imported'; "
            "assert not logging.getLogger().handlers, 'logging configured'")
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
    assert "setup.sh" in main_cmd and "pipelines/" in main_cmd
    assert "setup.sh --test" in test_cmd and "pytest" in test_cmd
    ci = (ROOT / ".ci/run").read_text()
    assert test_cmd in ci, f".ci/run must run the README's test command: {test_cmd}"
    for path in re.findall(r"(pipelines/\S+\.(?:py|toml)|infra/\S+\.sh)", main_cmd + test_cmd):
        assert (ROOT / path).exists(), path
