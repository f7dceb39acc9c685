"""README.md's commands and snippets, run as written on this host (no GPU needed).

Every fenced block of the README is checked: ``python`` blocks run as
programs (a block that defines ``test_*`` functions runs under pytest),
``yaml`` blocks must be a valid external resource config, and each command of
a ``bash`` block runs in bash from the repository root, with the README's
``.venv/bin/`` being this interpreter's folder (the venv the suite runs in)
and port 8099 a free port. A command ending in ``&`` runs in the background
until its block is done (the job server). Commands in NOT_RUN are not run,
each for the reason given: they made the environment this test runs in, or
they are this test suite.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from beam_gpu_runner.resources.config import ExternalResourceConfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = os.path.dirname(sys.executable)
README_PORT = "8099"
#: Bounds against hangs only.
LIMIT_S = 600.0

NOT_RUN = {
    "python3 -m venv .venv": "the suite runs in that venv already",
    ".venv/bin/pip install -q -e .": "the suite runs in that install",
    ".venv/bin/pip install -q -e '.[test,ray]'": "the suite runs in that install",
    ".venv/bin/pytest -q": "that is the suite this test is part of",
}


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int   # of the opening fence, 1-based

    @property
    def id(self) -> str:
        return "%s-line%d" % (self.lang, self.line)


def readme_blocks() -> list[Block]:
    text = README.read_text()
    return [Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
            for m in re.finditer(r"^```(\w+)\n(.*?)^```", text, re.S | re.M)]


def blocks_of(lang: str) -> list[Block]:
    return [b for b in readme_blocks() if b.lang == lang]


def commands(block: Block) -> list[str]:
    """The block's commands: one per line, comments dropped, ``&&`` chains split."""
    found = []
    for line in block.body.splitlines():
        line = re.split(r"\s+#\s", " " + line, maxsplit=1)[0].strip()
        if line and not line.startswith("#"):
            found.extend(part.strip() for part in line.split(" && "))
    return found


def private_env(tmp_path: Path) -> dict[str, str]:
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    return dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
                TMPDIR=str(temp), BEAM_GPU_RUNNER_LEASE_DIR=str(temp))


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def wait_for_port(port: str, server: "subprocess.Popen[bytes]", log: Path) -> None:
    deadline = time.monotonic() + LIMIT_S
    while True:
        assert server.poll() is None, "the background command exited:\n" + log.read_text()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", int(port))) == 0:
                return
        assert time.monotonic() < deadline, "nothing listens on %s" % port
        time.sleep(0.2)


def test_the_readme_has_the_blocks_this_test_checks():
    langs = [b.lang for b in readme_blocks()]
    assert set(langs) <= {"python", "bash", "yaml"}, langs   # a new kind needs a check
    assert langs.count("python") >= 3 and langs.count("bash") >= 2
    skipped = [c for b in blocks_of("bash") for c in commands(b) if c in NOT_RUN]
    assert sorted(set(skipped)) == sorted(NOT_RUN), "NOT_RUN lists commands the README lost"


@pytest.mark.parametrize("block", blocks_of("python"), ids=lambda b: b.id)
def test_python_snippet_runs(block, tmp_path):
    script = tmp_path / ("test_snippet.py" if "def test_" in block.body else "snippet.py")
    script.write_text(block.body)
    argv = ([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
            if script.name.startswith("test_") else [sys.executable, str(script)])
    done = subprocess.run(argv, cwd=tmp_path, env=private_env(tmp_path),
                          capture_output=True, text=True, timeout=LIMIT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    if script.name.startswith("test_"):
        assert re.search(r"\b[1-9]\d* passed", done.stdout), done.stdout


@pytest.mark.parametrize("block", blocks_of("yaml"), ids=lambda b: b.id)
def test_yaml_config_is_valid(block):
    config = ExternalResourceConfig.from_mapping(yaml.safe_load(block.body),
                                                 source="README.md:%d" % block.line)
    assert config.names


def _needs(block: Block) -> list[str]:
    """What a block needs that another branch brings (xfail until then)."""
    from beam_gpu_runner.jobservice.main import build_parser
    needs = []
    if "job-server" in block.body and "--fake_gpus" in block.body and not any(
            "--fake_gpus" in a.option_strings for a in build_parser()._actions):
        needs.append("beam-gpu-runner job-server --fake_gpus (the job server's branch)")
    return needs


def _shell_cases():
    for block in blocks_of("bash"):
        needs = _needs(block)
        marks = [pytest.mark.xfail(reason="; ".join(needs), strict=True)] if needs else []
        yield pytest.param(block, marks=marks, id=block.id)


@pytest.mark.parametrize("block", list(_shell_cases()))
def test_shell_commands_run(block, tmp_path):
    env = private_env(tmp_path)
    port = free_port()
    background: list[subprocess.Popen[bytes]] = []
    try:
        for i, command in enumerate(commands(block)):
            if command in NOT_RUN:
                continue
            command = command.replace(".venv/bin/", VENV_BIN + "/").replace(README_PORT, port)
            log = tmp_path / ("command-%d.log" % i)
            if command.endswith("&"):
                server = subprocess.Popen(["bash", "-c", command[:-1]], cwd=ROOT, env=env,
                                          stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                          start_new_session=True)
                background.append(server)
                wait_for_port(port, server, log)
                continue
            done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env,
                                  stdout=open(log, "wb"), stderr=subprocess.PIPE,
                                  text=True, timeout=LIMIT_S)
            assert done.returncode == 0, "%s\n%s" % (command, done.stderr[-5000:])
            assert "Traceback" not in done.stderr, "%s\n%s" % (command, done.stderr)
    finally:
        for server in background:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            server.wait(LIMIT_S)
