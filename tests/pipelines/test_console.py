"""The MNIST pipelines' console logging (pipelines/console.py)."""
from __future__ import annotations

import logging

import pytest

from beam_gpu_runner.pipelines import console


@pytest.fixture
def root(monkeypatch):
    logger = logging.getLogger()
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logger.level)
    chatty = logging.getLogger(console.CHATTY_LOGGERS[0])
    monkeypatch.setattr(chatty, "level", chatty.level)
    return logger


def _bare(root):
    """pytest's log capture adds its handlers to the root once the test runs."""
    del root.handlers[:]


def test_quiet_imports_holds_the_roots_place_until_configure(root, capsys):
    _bare(root)
    console.quiet_imports()
    logging.getLogger("apache_beam.io.filesystems").warning("Failed to import GCSFileSystem")
    logging.warning("apitools not found")   # would otherwise call basicConfig
    assert capsys.readouterr().err == ""
    assert len(root.handlers) == 1
    console.configure("warning")
    assert root.handlers == []


def test_quiet_imports_leaves_a_configured_root_alone(root):
    _bare(root)
    handler = logging.StreamHandler()
    root.addHandler(handler)
    console.quiet_imports()
    assert root.handlers == [handler]


@pytest.mark.parametrize("name, root_level, chatty_level", [
    ("warning", logging.WARNING, logging.WARNING),
    ("info", logging.INFO, logging.WARNING),      # type hint chatter even at INFO
    ("debug", logging.DEBUG, logging.NOTSET),
])
def test_configure_levels(root, name, root_level, chatty_level):
    console.configure(name)
    assert root.level == root_level
    assert logging.getLogger(console.CHATTY_LOGGERS[0]).level == chatty_level


def test_an_explicit_root_level_wins_and_bad_names_are_named(root):
    console.configure("warning", root_level=logging.DEBUG)
    assert root.level == logging.DEBUG
    with pytest.raises(ValueError, match="--log_level='loud' is not one of debug, info"):
        console.configure("loud")
