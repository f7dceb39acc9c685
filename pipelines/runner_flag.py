"""The ``--runner`` flag both MNIST pipelines share, and turning it into options."""
from __future__ import annotations

import importlib
import logging
from typing import Sequence

from absl import flags
from apache_beam.options.pipeline_options import PipelineOptions

_LOG = logging.getLogger(__name__)

DEFAULT_RUNNER = "beam_gpu_runner.GpuRunner"


class RunnerUnavailableError(RuntimeError):
    """The requested runner cannot be imported."""

    def __init__(self, runner: str, reason: str) -> None:
        self.runner = runner
        self.reason = reason
        super().__init__(
            "pipeline options: runner %r cannot be loaded (%s); pass "
            "--runner=DirectRunner to run on Beam's local runner" % (runner, reason))

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (RunnerUnavailableError, (self.runner, self.reason))


def check_runner(runner: str) -> None:
    """Fail early, naming the flag, when a dotted runner path does not import."""
    if "." not in runner:
        return  # a Beam runner name (DirectRunner, PortableRunner, ...)
    module, _, name = runner.rpartition(".")
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise RunnerUnavailableError(runner, "%s: %s" % (type(exc).__name__, exc)) from exc


def pipeline_options(runner: str, pipeline_args: Sequence[str],
                     streaming: bool = False) -> PipelineOptions:
    """Beam options from ``--runner`` plus every argument absl did not know."""
    check_runner(runner)
    args = ["--runner=%s" % runner] + list(pipeline_args)
    if streaming and "--streaming" not in args:
        args.append("--streaming")
    _LOG.debug("pipeline_options: %s", args)
    return PipelineOptions(args)


def parse_known(flag_values: "flags.FlagValues", argv: list[str], usage: str) -> list[str]:
    """Parse this pipeline's absl flags; return argv[0] and every other argument.

    Each pipeline keeps its flags in its own ``FlagValues`` (so both modules
    can be imported in one process). ``--help`` prints this pipeline's flags
    (Beam's own options are listed by ``--help`` of PipelineOptions'
    argparse, which we do not forward).
    """
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(usage)
        print(flag_values.get_help())
        print("\nAll other arguments are passed to Beam's PipelineOptions.")
        raise SystemExit(0)
    rest = flag_values(argv, known_only=True)
    # absl's own flags (--verbosity, --logtostderr, ...); app.run wants the
    # global FLAGS parsed after its flags_parser ran.
    return flags.FLAGS(rest, known_only=True)
