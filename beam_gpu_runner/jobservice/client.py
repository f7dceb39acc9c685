"""``beam-gpu-runner drain`` and ``beam-gpu-runner jobs``: a job server's
jobs from the command line.

    beam-gpu-runner jobs [--job_endpoint HOST:PORT]

lists the server's jobs (id, name, state) through the Job API's ``GetJobs``.

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
#: How long ``jobs`` waits for an answer (a server that answers nothing fails).
JOBS_TIMEOUT_S = 10.0


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


def _report(exc: grpc.RpcError, endpoint: str, command: str = "drain") -> int:
    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.UNAVAILABLE:
        print("beam-gpu-runner %s: no job server answers at %s (start one with "
              "beam-gpu-runner job-server, or pass --job_endpoint)" % (command, endpoint),
              file=sys.stderr)
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if command == "drain":
            print("beam-gpu-runner drain: gave up waiting (--timeout); the job may still "
                  "be draining", file=sys.stderr)
        else:
            print("beam-gpu-runner %s: %s did not answer within %.0f s (is it a job "
                  "server?)" % (command, endpoint, JOBS_TIMEOUT_S), file=sys.stderr)
    else:
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print("beam-gpu-runner %s: %s" % (command, details), file=sys.stderr)
    return 1


def build_jobs_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beam-gpu-runner jobs",
        description="List a job server's jobs: id, name and state (the Job API's GetJobs).")
    parser.add_argument("--job_endpoint", default=DEFAULT_ENDPOINT,
                        help="the job server (default %(default)s)")
    return parser


def format_jobs(jobs: Sequence[beam_job_api_pb2.JobInfo]) -> str:
    """Jobs as an aligned table, oldest first."""
    rows = [("JOB ID", "NAME", "STATE")] + [
        (j.job_id, j.job_name, state_name(j.state)) for j in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join("%-*s  %-*s  %s" % (widths[0], r[0], widths[1], r[1], r[2])
                     for r in rows)


def jobs_main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_jobs_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    channel = grpc.insecure_channel(args.job_endpoint)
    try:
        stub = beam_job_api_pb2_grpc.JobServiceStub(channel)
        try:
            response = stub.GetJobs(beam_job_api_pb2.GetJobsRequest(),
                                    timeout=JOBS_TIMEOUT_S)
        except grpc.RpcError as exc:
            return _report(exc, args.job_endpoint, "jobs")
    finally:
        channel.close()
    if not response.job_info:
        print("no jobs on %s" % args.job_endpoint)
        return 0
    print(format_jobs(list(response.job_info)))
    return 0
