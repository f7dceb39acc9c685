"""What a person running the MNIST pipelines sees on the console.

Their own lines (window lines, the summary) are printed; logging is for
diagnostics and shows WARNING and above unless ``--log_level`` asks for more.
Beam's chatter that says nothing about the run is kept off the console even
then: the INFO line Beam logs for every string type hint (``Converting string
literal type hint to Any``: every annotation of a module with
``from __future__ import annotations``) and, when a program's main module
asks for it before importing Beam, the warnings Beam's own imports log about
optional packages they could not load (GCS, BigQuery).
"""
from __future__ import annotations

import logging
from typing import Optional

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LOG_LEVEL = "warning"

#: Loggers whose records below WARNING show only at --log_level=debug.
CHATTY_LOGGERS = ("apache_beam.typehints.native_type_compatibility",)

#: Holds the root logger's place while Beam is imported (see quiet_imports).
_IMPORT_GUARD = logging.NullHandler()


def quiet_imports() -> None:
    """Keep what Beam's imports log off the console until :func:`configure`.

    Call it in a program's main module before anything imports Beam. With
    no handler on the root logger, Beam's import-time warnings would go to
    stderr through Python's last-resort handler, or make ``logging.warning``
    install a stderr handler of its own (``logging.basicConfig``). A root
    that already has handlers is left alone.
    """
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(_IMPORT_GUARD)


def level_of(name: str) -> int:
    """``"info"`` -> ``logging.INFO``; a clear error for unknown names."""
    if name.lower() not in LOG_LEVELS:
        raise ValueError("--log_level=%r is not one of %s" % (name, ", ".join(LOG_LEVELS)))
    return int(getattr(logging, name.upper()))


def configure(level_name: str = DEFAULT_LOG_LEVEL, root_level: Optional[int] = None) -> None:
    """Console logging at ``level_name`` (``root_level``, when given, wins for
    the root logger: e.g. absl's ``-v`` that the user passed)."""
    level = level_of(level_name)
    root = logging.getLogger()
    root.removeHandler(_IMPORT_GUARD)
    root.setLevel(level if root_level is None else root_level)
    effective = root.level
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if effective <= logging.DEBUG else logging.WARNING)
