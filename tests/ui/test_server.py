"""The web UI's HTTP server (ui/server.py) over a fake status source: routes,
headers, read-only, no file system paths, access control, binding."""
from __future__ import annotations

import http.client
import json
import logging
import socket
from typing import Iterator, Optional

import pytest

from beam_gpu_runner.ui.access import AccessConfigError, AccessPolicy, parse_networks
from beam_gpu_runner.ui.server import UiServer, UiServerError, serve

from .fakes import TestingStatusSource, streaming_job


def request(port: int, path: str, method: str = "GET", host: str = "127.0.0.1",
            source: Optional[str] = None, headers: Optional[dict] = None
            ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=30,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def source() -> TestingStatusSource:
    return TestingStatusSource([streaming_job("job-1", 2), streaming_job("job/2", 1)])


@pytest.fixture
def ui(source: TestingStatusSource) -> Iterator[UiServer]:
    server = serve(source, "127.0.0.1", 0)
    yield server
    server.stop()


def test_pages_are_the_packaged_page(ui: UiServer) -> None:
    assert ui.port is not None
    for path in ("/", "/devices", "/jobs/job-1", "/jobs/anything"):
        status, headers, body = request(ui.port, path)
        assert status == 200, path
        assert headers["content-type"].startswith("text/html")
        assert b'<script src="/static/app.js"></script>' in body
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
    status, headers, body = request(ui.port, "/static/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert b"innerHTML" not in body.replace(b"nothing here assigns innerHTML", b"")
    status, headers, _ = request(ui.port, "/static/app.css")
    assert status == 200 and headers["content-type"].startswith("text/css")


def test_api_jobs_and_one_job(ui: UiServer) -> None:
    assert ui.port is not None
    status, headers, body = request(ui.port, "/api/jobs")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert headers["cache-control"] == "no-store"
    doc = json.loads(body)
    assert [j["job_id"] for j in doc["jobs"]] == ["job-1", "job/2"]
    status, _, body = request(ui.port, "/api/jobs/job-1")
    assert status == 200
    assert json.loads(body)["job"]["stages"][1]["elements_in"] == 200
    # ids are URL-decoded: a job id with a slash
    status, _, body = request(ui.port, "/api/jobs/job%2F2")
    assert status == 200 and json.loads(body)["job"]["job_id"] == "job/2"
    status, _, body = request(ui.port, "/api/jobs/nope")
    assert status == 404 and "nope" in json.loads(body)["error"]


def test_devices_and_metrics(ui: UiServer, source: TestingStatusSource) -> None:
    from beam_gpu_runner.status import DeviceStatus
    source.devices = [DeviceStatus("gpu", "0", "GPU-testing-0", "H100", fake=True)]
    assert ui.port is not None
    status, _, body = request(ui.port, "/api/devices")
    assert status == 200 and json.loads(body)["devices"][0]["uuid"] == "GPU-testing-0"
    status, headers, body = request(ui.port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b'beam_gpu_runner_jobs{state="RUNNING"} 2.0' in body


def test_head_and_read_only_verbs(ui: UiServer) -> None:
    assert ui.port is not None
    status, headers, body = request(ui.port, "/api/jobs", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, body = request(ui.port, "/api/jobs/job-1", method)
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert b"read-only" in body


@pytest.mark.parametrize("path", [
    "/static/../server.py", "/static/%2e%2e/server.py", "/static/app.js/../../__init__.py",
    "/assets/app.js", "/static/page.html", "/static/", "//etc/passwd", "/../../etc/passwd",
    "/api/jobs/../../etc/passwd", "/static/app.js%00.py"])
def test_no_path_reaches_the_file_system(ui: UiServer, path: str) -> None:
    assert ui.port is not None
    status, _, body = request(ui.port, path)
    assert status == 404, (path, body[:200])
    assert b"import" not in body and b"root:" not in body


def test_a_failing_source_answers_500_and_keeps_serving(ui: UiServer,
                                                        source: TestingStatusSource,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    assert ui.port is not None

    def broken() -> list:
        raise RuntimeError("secret detail")
    source.job_statuses = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        status, _, body = request(ui.port, "/api/jobs")
    assert status == 500 and b"secret detail" not in body
    assert any("failed" in r.getMessage() for r in caplog.records)
    assert request(ui.port, "/")[0] == 200


def test_loopback_ui_refuses_foreign_host_headers(ui: UiServer) -> None:
    assert ui.port is not None
    for host in ("127.0.0.1:%d" % ui.port, "localhost", "[::1]:80", "127.0.0.5"):
        assert request(ui.port, "/api/jobs", headers={"Host": host})[0] == 200, host
    status, _, body = request(ui.port, "/api/jobs", headers={"Host": "evil.example:80"})
    assert status == 403 and b"loopback" in body


def test_allow_list_refuses_other_addresses_with_403_and_a_log_line(
        source: TestingStatusSource, caplog: pytest.LogCaptureFixture) -> None:
    server = serve(source, "127.0.0.1", 0, allow_from=["127.0.0.2/32"])
    try:
        assert server.port is not None
        status, _, body = request(server.port, "/api/jobs", source="127.0.0.2")
        assert status == 200 and json.loads(body)["jobs"]
        with caplog.at_level(logging.WARNING):
            status, _, body = request(server.port, "/api/jobs", source="127.0.0.3")
            status_page, _, _ = request(server.port, "/", source="127.0.0.3")
        assert status == 403 and status_page == 403
        assert b"127.0.0.3" in body and b"--allow_from" in body
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert any("127.0.0.3" in m and "127.0.0.2/32" in m for m in refused), refused
    finally:
        server.stop()


def test_binding_beyond_loopback_needs_a_list_or_insecure(
        source: TestingStatusSource) -> None:
    with pytest.raises(AccessConfigError) as info:
        serve(source, "0.0.0.0", 0)
    assert "--allow_from" in str(info.value) and "--insecure" in str(info.value)
    server = serve(source, "0.0.0.0", 0, allow_from=["127.0.0.1/32"])
    try:
        assert server.port is not None
        assert not server.loopback_only
        # any Host header is fine beyond loopback; the address list decides
        assert request(server.port, "/api/jobs",
                       headers={"Host": "myhost.example"})[0] == 200
        assert request(server.port, "/api/jobs", source="127.0.0.4")[0] == 403
    finally:
        server.stop()


def test_a_taken_port_fails_at_once_naming_the_flag(source: TestingStatusSource) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(UiServerError) as info:
            UiServer(source, "127.0.0.1", port).start()
    assert "--ui_port" in str(info.value) and str(port) in str(info.value)


def test_url_and_stop_callback(source: TestingStatusSource) -> None:
    stopped = []
    server = serve(source, "127.0.0.1", 0, on_stop=lambda: stopped.append(True))
    assert server.url == "http://127.0.0.1:%d/" % server.port
    server.stop()
    server.stop()   # twice is fine
    assert stopped == [True]


def test_ipv6_loopback(source: TestingStatusSource) -> None:
    if not socket.has_ipv6:
        pytest.skip("this host has no IPv6")
    server = UiServer(source, "::1", 0, AccessPolicy(parse_networks(["::1/128"])))
    try:
        server.start()
    except UiServerError as exc:
        pytest.skip("cannot bind ::1 here: %s" % exc)
    try:
        assert server.url == "http://[::1]:%d/" % server.port
        assert server.port is not None
        assert request(server.port, "/api/jobs", host="::1")[0] == 200
    finally:
        server.stop()
