"""What both MNIST pipelines share: the ``--runner`` flag and turning it into
options, the default accelerator hint, and one fake GPU on hosts without any."""
from __future__ import annotations

import importlib
import logging
from typing import Protocol, Sequence

from absl import flags
from apache_beam.options.pipeline_options import PipelineOptions

_LOG = logging.getLogger(__name__)

DEFAULT_RUNNER = "beam_gpu_runner.GpuRunner"
#: One GPU, any NVIDIA model (the type names the vendor and no model).
DEFAULT_ACCELERATOR = "type:nvidia;count:1"

#: GpuRunner's flag for one fake GPU from the testing driver.
FAKE_GPU_ARGS = ("--fake_gpus=1",)


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


class HintedRun(Protocol):
    """A pipeline's config: its runner and its GPU stage's accelerator hint."""

    @property
    def runner(self) -> str: ...

    @property
    def accelerator(self) -> str: ...


def with_fake_gpu_if_none(config: HintedRun, pipeline_args: Sequence[str]) -> list[str]:
    """On GpuRunner with a GPU hint, a host without GPUs gets one fake device.

    The demos then run everywhere: the hinted stage gets a testing device and
    computes on the CPU. Explicit device flags (``--fake_gpus``,
    ``--external_resource[s_config]``) are left alone, and so is
    ``--ray_address`` (a Ray cluster's nodes say what GPUs they have); a local
    Ray that ``--placement=ray`` starts declares the fake device.
    """
    args = list(pipeline_args)
    if (config.runner != DEFAULT_RUNNER or not config.accelerator
            or any(a.startswith(("--fake_gpus", "--external_resource", "--ray_address"))
                   for a in args)):
        return args
    from beam_gpu_runner.resources.assignment import DeviceAllocator
    from beam_gpu_runner.resources.config import ExternalResourceConfig
    with DeviceAllocator(ExternalResourceConfig.default()) as allocator:
        found = allocator.devices().get("gpu", ())
    if found:
        return args
    _LOG.info("no GPU found on this host; giving the stage hinted %r a fake device "
              "from the testing driver (--fake_gpus=1; it computes on the CPU). Pass "
              "--nofake_gpu_when_none to fail instead, or --accelerator= to drop the "
              "hint", config.accelerator)
    return args + list(FAKE_GPU_ARGS)
