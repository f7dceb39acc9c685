"""The job server's allow-list, checked on every RPC (``ui.access`` has the
policy): a gRPC server interceptor that refuses a call from an address outside
``--allow_from`` with PERMISSION_DENIED and a log line naming the address.

The peer address is only known inside the call (``context.peer()``), so the
interceptor wraps each method handler; an open policy installs nothing.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import grpc

from beam_gpu_runner.ui.access import AccessPolicy, grpc_peer_address, log_refused

_LOG = logging.getLogger(__name__)


class AllowListInterceptor(grpc.ServerInterceptor):
    """Refuses calls from clients outside ``policy``."""

    def __init__(self, policy: AccessPolicy, server: str = "job server") -> None:
        self.policy = policy
        self.server = server

    def _check(self, method: str, context: grpc.ServicerContext) -> None:
        address = grpc_peer_address(context.peer())
        if self.policy.allows(address):
            return
        log_refused(self.server, address, "call %s" % method, self.policy)
        context.abort(grpc.StatusCode.PERMISSION_DENIED,
                      "%s: your address %s is not in the server's --allow_from"
                      % (method, address or context.peer()))

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or self.policy.open:
            return handler
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        return _guarded(handler, lambda context: self._check(method, context))


def _guarded(handler: Any, check: Callable[[grpc.ServicerContext], None]) -> Any:
    """``handler`` with ``check(context)`` run before its behaviour."""
    kwargs = dict(request_deserializer=handler.request_deserializer,
                  response_serializer=handler.response_serializer)
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return inner_uu(request, context)
        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            yield from inner_us(request, context)
        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        def stream_unary(requests: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return inner_su(requests, context)
        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    inner_ss: Optional[Any] = handler.stream_stream

    def stream_stream(requests: Any, context: grpc.ServicerContext) -> Any:
        check(context)
        assert inner_ss is not None
        yield from inner_ss(requests, context)
    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)


__all__ = ["AllowListInterceptor"]
