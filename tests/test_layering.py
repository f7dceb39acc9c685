"""The layering rules of BUILD_NOTES.md, checked on every module's imports."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Folder on disk -> its import name.
PACKAGES = {
    "beam_gpu_runner": "beam_gpu_runner",
    "drivers": "beam_gpu_runner.drivers",
    "transforms": "beam_gpu_runner.transforms",
    "pipelines": "beam_gpu_runner.pipelines",
}

P = "beam_gpu_runner."
#: layer -> the beam_gpu_runner layers it may import (itself always allowed).
ALLOWED: dict[str, set[str]] = {
    "engine": set(),
    "resources": {"options"},
    "drivers": {"resources"},
    "placement": {"resources"},
    "workers": {"placement", "resources"},
    "preprocess": {"engine", "resources", "workers"},
    "execution": {"engine", "preprocess", "workers", "placement", "resources"},
    "runner": {"execution", "preprocess", "workers", "placement", "resources", "engine",
               "options", "interrupts"},
    "options": set(),
    "status": set(),   # plain values describing jobs, read by the UI and the job server
    "cli": set(),   # loads subcommands lazily by name
    "interrupts": set(),   # SIGTERM as KeyboardInterrupt, for entry points
    "testing": {"runner", "options", "resources", "drivers"},
    "jobservice": {"runner", "options", "resources", "placement"},
    "transforms": {"resources", "root"},
    "pipelines": {"transforms", "resources", "runner", "options", "root", "jobservice",
                  "interrupts"},
    "root": {"resources", "runner", "options"},   # beam_gpu_runner/__init__.py
}

#: The engine is a pure state machine: no Beam, no protos, no processes.
ENGINE_FORBIDDEN = ("apache_beam", "grpc", "subprocess", "multiprocessing", "threading",
                    "socket", "os")


def _layer(module: str) -> str:
    rest = module[len(P):] if module.startswith(P) else ""
    return rest.split(".")[0] if rest else "root"


def _modules():
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield path, ".".join([package, *parts]) if parts else package


def _imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_layers_import_only_what_the_rules_allow():
    violations = []
    seen_layers = set()
    for path, module in _modules():
        layer = _layer(module)
        seen_layers.add(layer)
        assert layer in ALLOWED, "module %s is in layer %r, which BUILD_NOTES.md and " \
            "this test do not describe; add it to ALLOWED" % (module, layer)
        for name in _imports(path):
            if name == "beam_gpu_runner":
                target = "root"
            elif name.startswith(P):
                target = _layer(name)
            else:
                continue
            if target != layer and target not in ALLOWED[layer]:
                violations.append("%s (layer %s) imports %s (layer %s)"
                                  % (module, layer, name, target))
    assert not violations, "\n".join(violations)
    assert {"engine", "execution", "workers", "resources", "runner"} <= seen_layers


def test_engine_is_pure():
    bad = []
    for path, module in _modules():
        if _layer(module) != "engine":
            continue
        for name in _imports(path):
            if name.split(".")[0] in ENGINE_FORBIDDEN:
                bad.append("%s imports %s" % (module, name))
    assert not bad, "\n".join(bad)


def test_installed_names_are_not_generic():
    import beam_gpu_runner.drivers
    import beam_gpu_runner.pipelines
    import beam_gpu_runner.transforms
    for mod in (beam_gpu_runner.drivers, beam_gpu_runner.transforms,
                beam_gpu_runner.pipelines):
        assert mod.__name__.startswith("beam_gpu_runner.")
