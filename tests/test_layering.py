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
    "lifecycle": set(),
    "status": set(),   # plain values describing jobs, read by the UI and the job server
    "resources": {"options"},
    "bridge": {"engine"},
    "drivers": {"resources"},
    "placement": {"resources", "bridge"},
    "workers": {"placement", "resources", "bridge"},
    "preprocess": {"engine", "resources", "workers", "bridge"},
    "execution": {"engine", "lifecycle", "status", "preprocess", "workers", "placement",
                  "resources", "bridge"},
    "runner": {"execution", "preprocess", "workers", "placement", "resources", "engine",
               "options", "bridge", "status", "ui", "interrupts"},
    "options": set(),
    "cli": set(),   # loads subcommands lazily by name
    "interrupts": set(),   # SIGTERM as KeyboardInterrupt, for entry points
    "testing": {"runner", "options", "resources", "drivers"},
    "jobservice": {"runner", "options", "resources", "placement", "lifecycle", "status",
                   "bridge", "ui"},
    # the web UI, JSON/Prometheus endpoints, progress line: reads status values only
    "ui": {"status", "resources", "options"},
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
    assert {"engine", "execution", "workers", "resources", "runner", "bridge"} <= seen_layers


#: Beam's runner internals: only the bridge imports them (bridge/beam.py lists
#: every one, with its canary in tests/bridge/test_canaries.py).
BEAM_INTERNALS = ("apache_beam.runners.portability.fn_api_runner",
                  "apache_beam.runners.worker", "apache_beam.runners.direct")


def test_only_the_bridge_imports_beams_runner_internals():
    bad = []
    for path, module in _modules():
        if _layer(module) == "bridge":
            continue
        for name in _imports(path):
            if name.startswith(BEAM_INTERNALS):
                bad.append("%s imports %s (use beam_gpu_runner.bridge)" % (module, name))
    assert not bad, "\n".join(bad)


def test_pure_layers_import_nothing_of_beam_or_the_os():
    bad = []
    for path, module in _modules():
        if _layer(module) not in ("engine", "lifecycle", "status"):
            continue
        for name in _imports(path):
            if name.split(".")[0] in ENGINE_FORBIDDEN:
                bad.append("%s imports %s" % (module, name))
    assert not bad, "\n".join(bad)


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
