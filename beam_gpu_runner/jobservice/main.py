"""``beam-gpu-runner job-server``: run a Beam Job API server.

    beam-gpu-runner job-server --port 8099 [--host 127.0.0.1]
        [--external_resources_config PATH] [--external_resource K=V ...]
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

_LOGGER = logging.getLogger(__name__)


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
    return parser


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
    defaults = ServerJobDefaults(
        external_resources_config=args.external_resources_config,
        external_resources=tuple(args.external_resource),
        placement=args.placement,
        ray_address=args.ray_address)
    server = JobServer(executor, args.host, args.port, staging_dir=args.staging_dir,
                       defaults=defaults, advertised_host=args.advertised_host,
                       shutdown_timeout_s=args.shutdown_timeout,
                       keep_staged=args.keep_staged)
    try:
        server.start()
    except JobServerError as exc:
        print("beam-gpu-runner job-server: %s" % exc, file=sys.stderr)
        return 1
    _LOGGER.info("Executor: %s. Submit with --runner=PortableRunner "
                 "--job_endpoint=%s --environment_type=LOOPBACK",
                 args.executor, server.endpoint)

    stop = threading.Event()

    def on_signal(signum: int, unused_frame: Optional[FrameType]) -> None:
        _LOGGER.info("Received %s; shutting down", signal.Signals(signum).name)
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
