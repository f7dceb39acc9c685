"""The web UI's HTTP server: pages, JSON endpoints and ``/metrics``.

    server = serve(source, host="127.0.0.1", port=8080)   # logs its URL
    ...
    server.stop()

Routes (GET and HEAD only; the UI is read-only):

    /                 the jobs page          /api/jobs          its JSON
    /jobs/<id>        a job's page           /api/jobs/<id>     its JSON
    /devices          the devices page       /api/devices       its JSON
    /metrics          Prometheus text format
    /static/app.js, /static/app.css          the pages' script and style

Assets are the package's own files, read into memory once; no request path
reaches the file system. Every request is checked against the access policy
(``ui.access``: 403 and a log line for refused clients), and a server bound to
loopback also refuses requests whose Host header is not a loopback name (a
web page elsewhere cannot read it through DNS rebinding). Pages insert every
name from a pipeline as text (``textContent``), and the Content-Security-Policy
allows only the server's own script.
"""
from __future__ import annotations

import http.server
import importlib.resources
import json
import logging
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable, Optional, Sequence

from beam_gpu_runner.status import StatusSource
from beam_gpu_runner.ui import api
from beam_gpu_runner.ui.access import (
    AccessPolicy, access_policy, is_loopback_host, log_refused, parse_address)
from beam_gpu_runner.ui.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from beam_gpu_runner.ui.prometheus import exposition

_LOG = logging.getLogger(__name__)

#: URL path -> (asset file under ui/assets, content type)
_ASSETS = {
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
_PAGE = ("page.html", "text/html; charset=utf-8")
_SECURITY_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


class UiServerError(RuntimeError):
    """The web UI could not start (one message arg; pickles)."""


def _read_asset(name: str) -> bytes:
    return (importlib.resources.files("beam_gpu_runner.ui") / "assets" / name).read_bytes()


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::", "[::]"):
        return socket.gethostname()
    if ":" in host and not host.startswith("["):
        return "[%s]" % host
    return host


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # SO_REUSEADDR only lets a restart bind over TIME_WAIT; a port another
    # socket listens on still fails at once (Linux). No SO_REUSEPORT.
    allow_reuse_address = True
    ui: "UiServer"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"
    server_version = "beam-gpu-runner-ui"
    sys_version = ""
    timeout = 120.0     # an idle keep-alive connection is closed after this long

    # -- plumbing --------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("web UI %s: " + format, self.client_address[0], *args)

    def _send(self, status: int, body: bytes, content_type: str,
              extra: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in _SECURITY_HEADERS:
            self.send_header(key, value)
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, doc: Any) -> None:
        body = json.dumps(api.json_safe(doc), separators=(",", ":"),
                          allow_nan=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    def _permitted(self) -> bool:
        ui = self.server.ui
        address = self.client_address[0]
        if not ui.policy.allows(address):
            log_refused("web UI", address, "%s %s" % (self.command, self.path[:200]),
                        ui.policy)
            self._error(403, "your address %s is not in this server's --allow_from"
                        % address)
            return False
        if ui.loopback_only and not _loopback_host_header(self.headers.get("Host")):
            _LOG.warning("web UI refused %s %s from %s: Host header %r is not a loopback "
                         "name (the UI is bound to loopback)", self.command,
                         self.path[:200], address, self.headers.get("Host"))
            self._error(403, "this UI is bound to loopback: open it as http://127.0.0.1 "
                        "or http://localhost")
            return False
        return True

    # -- verbs -----------------------------------------------------------------
    def do_GET(self) -> None:
        if not self._permitted():
            return
        try:
            self._route(urllib.parse.urlsplit(self.path).path)
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as exc:
            _LOG.warning("web UI: %s %s failed", self.command, self.path[:200],
                         exc_info=True)
            self._error(500, "the status source failed: %s" % type(exc).__name__)

    do_HEAD = do_GET

    def _read_only(self) -> None:
        if not self._permitted():
            return
        self._send(405, b"the web UI is read-only: cancel and drain jobs with the Job "
                        b"API or beam-gpu-runner drain\n", "text/plain; charset=utf-8",
                   extra=(("Allow", "GET, HEAD"),))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _read_only

    # -- routes ----------------------------------------------------------------
    def _route(self, raw_path: str) -> None:
        ui = self.server.ui
        path = urllib.parse.unquote(raw_path)
        if path in ("/", "/devices") or (path.startswith("/jobs/") and len(path) > 6):
            self._send(200, ui.asset(_PAGE[0]), _PAGE[1])
        elif path in _ASSETS:
            name, content_type = _ASSETS[path]
            self._send(200, ui.asset(name), content_type)
        elif path == "/api/jobs":
            self._send_json(200, api.jobs_document(ui.source.job_statuses(), time.time()))
        elif path.startswith("/api/jobs/") and len(path) > len("/api/jobs/"):
            job_id = path[len("/api/jobs/"):]
            job = api.find_job(ui.source.job_statuses(), job_id)
            if job is None:
                self._error(404, "no job with id %r here (/api/jobs lists them)" % job_id)
            else:
                self._send_json(200, api.job_document(job, time.time()))
        elif path == "/api/devices":
            self._send_json(200, api.devices_document(ui.source.device_statuses(),
                                                      time.time()))
        elif path == "/metrics":
            body = exposition(ui.source.job_statuses(), ui.source.device_statuses(),
                              time.time())
            self._send(200, body, METRICS_CONTENT_TYPE)
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._error(404, "no page %r (pages: /, /jobs/<id>, /devices, /metrics)"
                        % raw_path[:200])


def _loopback_host_header(value: Optional[str]) -> bool:
    if not value:
        return False
    host = value.strip()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.lower() == "localhost":
        return True
    ip = parse_address(host)
    return ip is not None and ip.is_loopback


class UiServer:
    """The web UI over ``source``; ``start`` binds, ``stop`` ends it."""

    def __init__(self, source: StatusSource, host: str = "127.0.0.1", port: int = 0,
                 policy: AccessPolicy = AccessPolicy(),
                 on_stop: Optional[Callable[[], None]] = None) -> None:
        self.source = source
        self._on_stop = on_stop
        self.host = host
        self.requested_port = port
        self.policy = policy
        self.loopback_only = is_loopback_host(host)
        self.port: Optional[int] = None
        self._assets: dict[str, bytes] = {}
        self._httpd: Optional[_HttpServer] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def asset(self, name: str) -> bytes:
        return self._assets[name]

    @property
    def url(self) -> str:
        if self.port is None:
            raise UiServerError("web UI: url asked before start()")
        return "http://%s:%d/" % (_url_host(self.host), self.port)

    def start(self) -> int:
        """Bind and serve on a daemon thread; return the port."""
        with self._lock:
            if self._httpd is not None:
                assert self.port is not None
                return self.port
            if not self._assets:
                names = [_PAGE[0]] + [name for name, _ in _ASSETS.values()]
                self._assets = {name: _read_asset(name) for name in names}
            host = self.host.strip("[]") if self.host not in ("", "*") else "0.0.0.0"
            server_class = type("_Server", (_HttpServer,), {
                "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
            try:
                httpd = server_class((host, self.requested_port), _Handler)
            except OSError as exc:
                raise UiServerError(
                    "web UI: binding %s port %d failed: %s%s" % (
                        host, self.requested_port, exc.strerror or exc,
                        "; the port is taken (another server?): pick another "
                        "--ui_port, or 0 for any free one"
                        if getattr(exc, "errno", None) == 98 else "")) from None
            httpd.ui = self
            self._httpd = httpd
            self.port = int(httpd.server_address[1])
            self._thread = threading.Thread(
                target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                name="web-ui-%d" % self.port, daemon=True)
            self._thread.start()
        return self.port

    def stop(self) -> None:
        with self._lock:
            httpd, self._httpd = self._httpd, None
            thread, self._thread = self._thread, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=10)
        if self._on_stop is not None:
            self._on_stop()
        _LOG.info("web UI on port %s stopped", self.port)

    def __enter__(self) -> "UiServer":
        self.start()
        return self

    def __exit__(self, *unused: object) -> None:
        self.stop()


def serve(source: StatusSource, host: str = "127.0.0.1", port: int = 0,
          allow_from: Sequence[str] = (), insecure: bool = False,
          on_stop: Optional[Callable[[], None]] = None) -> UiServer:
    """Start the web UI over ``source`` and log its URL; ``on_stop`` is called
    after ``stop()`` (e.g. to close the source).

    Raises ``AccessConfigError`` when ``host`` is beyond loopback without
    ``allow_from`` or ``insecure``, and ``UiServerError`` when it cannot bind.
    """
    policy = access_policy("web UI", host, allow_from, insecure)
    server = UiServer(source, host, port, policy, on_stop)
    server.start()
    _LOG.info("Web UI at %s (jobs, devices; Prometheus metrics at %smetrics)%s",
              server.url, server.url,
              "" if policy.open else "; clients allowed from %s" % policy.describe())
    return server


__all__ = ["UiServer", "UiServerError", "serve"]
