"""The web UI in a real browser: headless Chromium (Debian's /usr/bin/chromium,
which .ci/run installs) driven by Playwright.

It opens the UI of a running streaming job and checks that its stages appear
and their element counts rise, that the devices page lists the testing
driver's fake GPUs with their holders, and that a transform labelled
``<img src=x onerror=alert(1)>`` is shown as text (no element, no dialog).
Screenshots go to the test's tmp dir; ``UI_SCREENSHOT_DIR=docs`` also writes
the README's copies there.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.periodicsequence import PeriodicImpulse

from beam_gpu_runner.jobservice.job_options import ServerJobDefaults
from beam_gpu_runner.resources.config import fake_gpu_keys
from beam_gpu_runner.jobservice.server import JobServer
from beam_gpu_runner.resources.leases import LEASE_DIR_ENV, Candidate, LeaseTable

from jobservice.helpers import job_stub
from jobservice.test_service import prepare, run

from .fakes import GPU_HINT, XSS_LABEL, TickingExecutor

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
LIMIT_S = 120.0       # a bound against hangs, never a timing assertion
LIMIT_MS = LIMIT_S * 1000


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("%s is missing: apt-get install -y chromium (.ci/run does)" % CHROMIUM)
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    profile = tmp_path_factory.mktemp("chromium-profile")   # a fresh user-data dir
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(LIMIT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    page = browser_context.new_page()
    page.dialogs = []   # type: ignore[attr-defined]

    def on_dialog(dialog: Any) -> None:
        page.dialogs.append(dialog.message)   # type: ignore[attr-defined]
        dialog.dismiss()
    page.on("dialog", on_dialog)
    yield page
    page.close()


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("never happened: %s" % what)
        time.sleep(0.2)


def number(text: str) -> int:
    return int(text.replace(",", ""))


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    target = os.environ.get("UI_SCREENSHOT_DIR")
    if target:
        shutil.copyfile(path, Path(target) / name)
    return path


def xss_pipeline() -> Any:
    p = beam.Pipeline()
    _ = (p | "Impulses" >> PeriodicImpulse(fire_interval=0.1)
         | XSS_LABEL >> beam.Map(lambda x: x).with_resource_hints(accelerator=GPU_HINT)
         | "Sink" >> beam.Map(lambda x: None))
    return p.to_runner_api()


def check_job_page(page: Any, label_match: Callable[[str], bool]) -> str:
    """The stage table and graph are there, the XSS label is text, counts rise.
    Returns the name of the stage whose label matched."""
    page.wait_for_selector("tr.stage")
    labels = page.locator("tr.stage td.stage-label").all_text_contents()
    matching = [i for i, row in enumerate(page.locator("tr.stage td.stage-label").all())
                if label_match(row.locator(".label").text_content() or "")
                or any(label_match(t) for t in row.locator(".transforms")
                       .all_text_contents())]
    assert matching, labels
    row = page.locator("tr.stage").nth(matching[0])
    stage = row.get_attribute("data-stage")
    assert page.locator("#graph g.stage-node").count() == len(labels)
    node = page.locator('#graph g.stage-node[data-stage="%s"]' % stage)
    title = node.locator("title").text_content() or ""     # label, then its transforms
    assert any(label_match(line) for line in title.splitlines()), title
    cell = 'tr.stage[data-stage="%s"] td.elements-in' % stage
    first = number(page.locator(cell).text_content() or "0")
    eventually(lambda: number(page.locator(cell).text_content() or "0") > first,
               "the elements-in count of stage %s rising above %d" % (stage, first))
    # shown as text: no element was made of it, and no script ran
    assert page.locator("img").count() == 0
    assert page.dialogs == []   # type: ignore[attr-defined]
    return str(stage)


def test_a_streaming_job_through_the_job_servers_ui(page: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Job server results are fakes whose status() advances on every poll."""
    monkeypatch.setenv(LEASE_DIR_ENV, str(tmp_path))
    executor = TickingExecutor()
    defaults = ServerJobDefaults(external_resources=tuple(fake_gpu_keys(2)))
    with JobServer(executor, "127.0.0.1", 0, defaults=defaults, ui_port=0) as srv:
        assert srv.ui_url is not None
        stub = job_stub(srv.endpoint)
        job_id = prepare(stub, "mnist-streaming", pipeline=xss_pipeline(),
                         streaming=True).preparation_id
        prepare(stub, XSS_LABEL, pipeline=xss_pipeline())    # a prepared job, named badly
        run(stub, job_id)
        result = executor.result("mnist-streaming")
        table = LeaseTable(str(tmp_path))
        for index, worker in ((0, "worker-2"), (1, "worker-3")):
            assert table.acquire([Candidate("GPU-testing-0000-0000-0000-%012d" % index,
                                            "gpu", str(index), "NVIDIA H100 80GB HBM3")],
                                 1, holder="s2/%s" % worker, job=result.job_id).ok
        try:
            page.goto(srv.ui_url)
            page.wait_for_selector("tr.job")
            names = page.locator("#jobs tr.job td:nth-child(2)").all_text_contents()
            assert XSS_LABEL in names and "mnist-streaming streaming" in names
            page.locator('tr.job[data-job="%s"] a.job-link' % job_id).click()
            page.wait_for_url("**/jobs/%s" % job_id)
            stage = check_job_page(page, lambda text: text == XSS_LABEL)
            assert stage == "s2"
            assert page.locator("#metrics tr.metric").count() == 4
            assert page.locator('#graph g.stage-node[data-stage="s2"] text') \
                .all_text_contents()[2] == "hint: %s" % GPU_HINT
            screenshot(page, tmp_path, "ui-job.png")

            page.locator("#nav-devices").click()
            page.wait_for_url("**/devices")
            page.wait_for_selector("tr.device")
            eventually(lambda: page.locator("tr.device td.holder-job a").count() == 2,
                       "both fake GPUs shown with their holding job")
            rows = page.locator("tr.device")
            assert rows.count() == 2
            for i, worker in enumerate(("worker-2", "worker-3")):
                row = rows.nth(i)
                assert "fake (testing driver)" in (row.text_content() or "")
                assert row.locator("td.holder-job").text_content() == job_id
                assert row.locator("td.holder-stage").text_content() == "s2"
                assert row.locator("td.holder-worker").text_content() == worker
            screenshot(page, tmp_path, "ui-devices.png")
            assert page.dialogs == []   # type: ignore[attr-defined]
        finally:
            table.close()
            result.finish()


def test_a_real_gpu_runner_streaming_job(page: Any, tmp_path: Path) -> None:
    from beam_gpu_runner import GpuRunner
    from beam_gpu_runner.ui.sources import serve_run
    flags = ["--external_resource=external-resource.gpu.driver-factory.class=testing",
             "--external_resource=external-resource.gpu.param.num-devices=2",
             "--lease_dir=%s" % tmp_path, "--num_workers=2"]
    p = beam.Pipeline(runner=GpuRunner(), options=PipelineOptions(["--streaming", *flags]))
    _ = (p | "Impulses" >> PeriodicImpulse(fire_interval=0.05)
         | XSS_LABEL >> beam.Map(lambda x: x).with_resource_hints(accelerator=GPU_HINT)
         | "Sink" >> beam.Map(lambda x: None))
    result = p.run()
    server = serve_run(result.status, PipelineOptions(["--ui_port=0", *flags]))
    assert server is not None
    try:
        job_id = result.status().job_id
        page.goto(server.url + "jobs/" + job_id)
        # the stage's label or the transforms fused into it name the hinted ParDo
        check_job_page(page, lambda text: XSS_LABEL in text)
        screenshot(page, tmp_path, "ui-job-real.png")
        page.goto(server.url + "devices")
        eventually(lambda: page.locator("tr.device td.holder-worker").count() == 2
                   and all(page.locator("tr.device td.holder-worker").all_text_contents()),
                   "both fake GPUs held by the job's GPU workers")
        assert page.locator("tr.device .badge.fake").count() == 2
        assert page.dialogs == []   # type: ignore[attr-defined]
    finally:
        server.stop()
        result.cancel()
