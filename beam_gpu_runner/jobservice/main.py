"""``beam-gpu-runner job-server``: run a Beam Job API server.

    beam-gpu-runner job-server --port 8099 [--host 127.0.0.1]
        [--allow_from CIDR[,CIDR] | --insecure] [--ui_port PORT [--ui_host HOST]]
        [--fake_gpus N] [--external_resources_config PATH] [--external_resource K=V ...]
        [--placement local|ray] [--executor module:factory]

Clients submit with ``--runner=PortableRunner --job_endpoint=HOST:PORT``.
Environments (``--environment_type``): LOOPBACK runs unhinted user code in
the client process, EXTERNAL in the client's worker pool at
``--environment_config=HOST:PORT``; PROCESS, DOCKER and SUBPROCESS_SDK
environments run on the server's own SDK harness processes (their command or
image is not run). Stages with accelerator hints always run on the server's
own GPU workers, whatever the environment. Staged files
(``--requirements_file``, ``--extra_package``, ``--setup_file``,
``--save_main_session``) reach those workers: see
``beam_gpu_runner.workers.staging``; they are installed offline, from what the
client staged or what the server already has.
SIGTERM or Ctrl-C stops the server cleanly: running jobs are cancelled (their
executor ends their workers and releases GPU leases) before it exits.

Both the Job API and the web UI (``--ui_port``) bind loopback by default.
Bound beyond loopback, the server refuses to start unless ``--allow_from``
names the client networks (every RPC and HTTP request is checked) or
``--insecure`` accepts anyone (a warning at start). A port that is taken fails
the start at once. ``--fake_gpus N`` gives every job N fake GPUs from the
testing driver (for hosts without GPUs); a job's own external-resource keys
still override them.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Optional, Sequence

from beam_gpu_runner.jobservice.executor import (
    DEFAULT_EXECUTOR, ExecutorLoadError, load_executor)
from beam_gpu_runner.jobservice.job_options import ServerJobDefaults
from beam_gpu_runner.jobservice.server import JobServer, JobServerError
from beam_gpu_runner.resources.config import fake_gpu_keys
from beam_gpu_runner.ui.access import AccessConfigError

_LOG = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beam-gpu-runner job-server",
        description="Beam Job API server: submit with --runner=PortableRunner "
                    "--job_endpoint=HOST:PORT.")
    parser.add_argument("--port", "-p", type=int, default=8099,
                        help="Port to listen on; 0 picks a free one (default 8099).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to bind (default 127.0.0.1; 0.0.0.0 for all).")
    parser.add_argument("--advertised_host", default=None,
                        help="Host name clients use for artifact staging "
                             "(default: --host, or this machine's name for 0.0.0.0).")
    parser.add_argument("--staging_dir", default=None,
                        help="Folder for staged artifacts, one subfolder per job "
                             "(default: a temporary folder removed at exit).")
    parser.add_argument("--keep_staged", action="store_true",
                        help="Keep each job's staged files (and the packages its "
                             "workers installed from them) after the job ends.")
    parser.add_argument("--external_resources_config", default=None,
                        help="YAML file with Flink-style external-resource keys, "
                             "used by every job that does not name its own.")
    parser.add_argument("--external_resource", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="Flink-style key=value for every job (repeatable); "
                             "a job's own keys override these.")
    parser.add_argument("--placement", default=None, choices=("local", "ray"),
                        help="Where every job's workers run (default: local).")
    parser.add_argument("--ray_address", default=None,
                        help="Ray cluster address for --placement=ray.")
    parser.add_argument("--executor", default=DEFAULT_EXECUTOR, metavar="MODULE:FACTORY",
                        help="What runs the jobs (default %(default)s).")
    parser.add_argument("--shutdown_timeout", type=float, default=30.0,
                        help="Seconds to wait for cancelled jobs at shutdown.")
    parser.add_argument("--allow_from", action="append", default=[],
                        metavar="CIDR[,CIDR]",
                        help="Client networks allowed to use the Job API and the web UI, "
                             "e.g. 10.0.0.0/8 (repeatable); others are refused and logged. "
                             "Required when --host or --ui_host is beyond loopback, "
                             "unless --insecure.")
    parser.add_argument("--insecure", action="store_true",
                        help="Accept ANY client when bound beyond loopback (logged as a "
                             "warning). The server runs whatever code clients submit: "
                             "prefer --allow_from.")
    parser.add_argument("--ui_port", type=_port, default=None,
                        help="Serve the web UI (jobs, stages, devices, /metrics) on this "
                             "port; 0 picks a free one. Default: no UI.")
    parser.add_argument("--ui_host", default="127.0.0.1",
                        help="Address the web UI binds (default 127.0.0.1).")
    parser.add_argument("--fake_gpus", type=_count, default=None, metavar="N",
                        help="Give every job N fake GPUs from the testing driver (hosts "
                             "without GPUs); a job's own external-resource keys override.")
    return parser


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            "expected a port number 0-65535 (0: any free port), got %r" % text)
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("expected a whole number >= 1, got %r" % text)
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    for item in args.external_resource:
        if "=" not in item:
            print("beam-gpu-runner job-server: --external_resource expects KEY=VALUE, "
                  "got %r" % item, file=sys.stderr)
            return 2
    try:
        executor = load_executor(args.executor)
    except ExecutorLoadError as exc:
        print("beam-gpu-runner job-server: %s" % exc, file=sys.stderr)
        return 2
    fake = tuple(fake_gpu_keys(args.fake_gpus)) if args.fake_gpus else ()
    defaults = ServerJobDefaults(
        external_resources_config=args.external_resources_config,
        # The fake GPUs first: the server's own keys, then each job's, override them.
        external_resources=fake + tuple(args.external_resource),
        placement=args.placement,
        ray_address=args.ray_address)
    server = JobServer(executor, args.host, args.port, staging_dir=args.staging_dir,
                       defaults=defaults, advertised_host=args.advertised_host,
                       shutdown_timeout_s=args.shutdown_timeout,
                       keep_staged=args.keep_staged, allow_from=args.allow_from,
                       insecure=args.insecure, ui_port=args.ui_port, ui_host=args.ui_host)
    try:
        server.start()
    except AccessConfigError as exc:
        print("beam-gpu-runner job-server: %s" % exc, file=sys.stderr)
        return 2
    except JobServerError as exc:
        print("beam-gpu-runner job-server: %s" % exc, file=sys.stderr)
        return 1
    if args.fake_gpus:
        _LOG.info("Every job gets %d fake GPU(s) from the testing driver (--fake_gpus "
                     "%d): %s", args.fake_gpus, args.fake_gpus, " ".join(fake))
    _LOG.info("Executor: %s. Submit with --runner=PortableRunner "
                 "--job_endpoint=%s --environment_type=LOOPBACK",
                 args.executor, server.endpoint)

    stop = threading.Event()

    def on_signal(signum: int, unused_frame: Optional[FrameType]) -> None:
        _LOG.info("Received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
    return 0


if __name__ == "__main__":
    # force: importing Beam may already have configured the root logger.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True)
    sys.exit(main())
