"""resources/ and drivers/ sit below the runner core: they never import it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("beam_gpu_runner.engine", "beam_gpu_runner.execution",
             "beam_gpu_runner.workers", "beam_gpu_runner.placement",
             "beam_gpu_runner.jobservice", "beam_gpu_runner.runner",
             "beam_gpu_runner.preprocess")
FILES = sorted((ROOT / "beam_gpu_runner" / "resources").glob("*.py")) + sorted(
    (ROOT / "drivers").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update("%s.%s" % (node.module, alias.name) for alias in node.names)
    return names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_core_imports(path: Path) -> None:
    bad = sorted(m for m in imported_modules(path)
                 if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert not bad, "%s imports %s (resources/ must not depend on the runner core)" % (
        path.relative_to(ROOT), bad)


def test_drivers_are_imported_by_namespaced_name() -> None:
    for path in FILES:
        bad = sorted(m for m in imported_modules(path)
                     if m == "drivers" or m.startswith("drivers."))
        assert not bad, "%s imports %s; use beam_gpu_runner.drivers" % (path.name, bad)
