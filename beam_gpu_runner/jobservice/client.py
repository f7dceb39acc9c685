"""``beam-gpu-runner drain``: drain a job of a running job server by id.

    beam-gpu-runner drain JOB_ID [--job_endpoint HOST:PORT] [--no_wait]
        [--timeout SECONDS]

Sends the Job API's ``Drain``: the job's sources stop reading, it finishes
what they read (every window fires) and ends DRAINED. By default the command
follows the job's state until it ends and exits 0 when it ended DRAINED, 1
otherwise; ``--no_wait`` returns once the server accepted the drain. Job ids
are what the server logs and ``GetJobs`` lists (the job name, a dash and a
random suffix).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import grpc
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

from beam_gpu_runner.jobservice.job import is_terminal, state_name

DEFAULT_ENDPOINT = "localhost:8099"   # the job server's default port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beam-gpu-runner drain",
        description="Drain a job of a job server: its sources stop, it finishes "
                    "what they read and ends DRAINED.")
    parser.add_argument("job_id", help="the job's id (GetJobs lists them)")
    parser.add_argument("--job_endpoint", default=DEFAULT_ENDPOINT,
                        help="the job server (default %(default)s)")
    parser.add_argument("--no_wait", action="store_true",
                        help="return once the drain is accepted; do not wait for the end")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="give up waiting for the end after this long (exit 1)")
    return parser


def drain_main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    channel = grpc.insecure_channel(args.job_endpoint)
    try:
        stub = beam_job_api_pb2_grpc.JobServiceStub(channel)
        try:
            response = stub.Drain(beam_job_api_pb2.DrainJobRequest(job_id=args.job_id),
                                  timeout=60)
        except grpc.RpcError as exc:
            return _report(exc, args.job_endpoint)
        print("job %s: %s" % (args.job_id, state_name(response.state)))
        if args.no_wait:
            return 0
        final = response.state
        try:
            for event in stub.GetStateStream(
                    beam_job_api_pb2.GetJobStateRequest(job_id=args.job_id),
                    timeout=args.timeout):
                final = event.state
        except grpc.RpcError as exc:
            return _report(exc, args.job_endpoint)
        if not is_terminal(final):
            print("beam-gpu-runner drain: job %s has not ended yet (state %s)"
                  % (args.job_id, state_name(final)), file=sys.stderr)
            return 1
        print("job %s: %s" % (args.job_id, state_name(final)))
        return 0 if final == beam_job_api_pb2.JobState.DRAINED else 1
    finally:
        channel.close()


def _report(exc: grpc.RpcError, endpoint: str) -> int:
    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.UNAVAILABLE:
        print("beam-gpu-runner drain: no job server answers at %s (start one with "
              "beam-gpu-runner job-server, or pass --job_endpoint)" % endpoint,
              file=sys.stderr)
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        print("beam-gpu-runner drain: gave up waiting (--timeout); the job may still "
              "be draining", file=sys.stderr)
    else:
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print("beam-gpu-runner drain: %s" % details, file=sys.stderr)
    return 1
