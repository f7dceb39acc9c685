"""Run one bundle of grouped input as several attempts in parallel.

A bundle whose only input is a GroupByKey's output can be cut by key groups
(Beam's ``GroupingBuffer.partition``) and run as one attempt per part on
different workers; the parts' results are merged into one attempt result, so
the engine still sees one bundle (a failed part fails the bundle, and a retry
reruns every part: attempt buffers are private, nothing is produced twice).

Only stages with no timers and no user state are cut: their output depends
on each group alone. FnApiRunner does the same with ``direct_num_workers``.
"""
from __future__ import annotations

from typing import Mapping, Sequence, TypeVar

from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability.fn_api_runner import execution as beam_exec

from beam_gpu_runner.engine.graph import StageSpec
from beam_gpu_runner.execution.arriving import ArrivingGroups, OutputBuffer
from beam_gpu_runner.execution.attempt import AttemptResult

Inputs = Mapping[str, beam_exec.PartitionableBuffer]


def split_grouped(spec: StageSpec, inputs: Inputs, parts: int
                  ) -> list[dict[str, beam_exec.PartitionableBuffer]]:
    """``inputs`` cut into at most ``parts`` non-empty pieces (one piece when
    the stage cannot be cut)."""
    whole: list[dict[str, beam_exec.PartitionableBuffer]] = [dict(inputs)]
    if (parts <= 1 or spec.stateful or spec.timer_families or len(inputs) != 1):
        return whole
    (transform, buffer), = inputs.items()
    if not isinstance(buffer, beam_exec.GroupingBuffer):
        return whole
    pieces: list[dict[str, beam_exec.PartitionableBuffer]] = []
    for chunks in buffer.partition(parts):
        if any(chunks):
            piece = beam_exec.ListBuffer(None)   # already encoded groups
            for chunk in chunks:
                piece.append(chunk)
            pieces.append({transform: piece})
    return pieces if len(pieces) > 1 else whole


B = TypeVar("B", beam_exec.ListBuffer, OutputBuffer)


def _merged_buffers(maps: Sequence[Mapping[bytes, B]]) -> dict[bytes, B]:
    merged: dict[bytes, B] = {}
    for buffers in maps:
        for buffer_id, buffer in buffers.items():
            out = merged.get(buffer_id)
            if isinstance(buffer, ArrivingGroups):
                if out is None:
                    out = merged[buffer_id] = buffer.empty_like()
                assert isinstance(out, ArrivingGroups)
                out.merge(buffer)
                continue
            if out is None:
                out = merged[buffer_id] = beam_exec.ListBuffer(buffer._coder_impl)
            assert isinstance(out, beam_exec.ListBuffer)
            for chunk in buffer:
                out.append(chunk)
    return merged


def merge_results(results: Sequence[AttemptResult]) -> AttemptResult:
    """One result for the bundle: outputs, timers, residuals and metrics of
    every part (metrics are consolidated later, as across bundles)."""
    if len(results) == 1:
        return results[0]
    response = beam_fn_api_pb2.InstructionResponse(
        instruction_id=results[0].response.instruction_id)
    for result in results:
        part = result.response.process_bundle
        response.process_bundle.monitoring_infos.extend(part.monitoring_infos)
        response.process_bundle.residual_roots.extend(part.residual_roots)
        response.process_bundle.requires_finalization |= part.requires_finalization
    return AttemptResult(
        response=response,
        splits=[s for r in results for s in r.splits],
        outputs=_merged_buffers([r.outputs for r in results]),
        timer_outputs=_merged_buffers([r.timer_outputs for r in results]),
        view=results[0].view)
