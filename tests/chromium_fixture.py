"""Headless Debian Chromium driven through the Chrome DevTools Protocol, for the report tests.

`open_page` loads a local file and returns what a reader's browser would have done: console
errors, network requests other than the file itself (and data:/blob: URLs), alert dialogs,
how many plotly charts got drawn, the text of one element, and a screenshot. Chromium binds
its DevTools endpoint to 127.0.0.1 on a port it picks (port 0) and is stopped by its PID.
A missing /usr/bin/chromium fails the test that needs it; it is never skipped.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websocket  # websocket-client

CHROMIUM = "/usr/bin/chromium"
START_TIMEOUT = 30.0
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
    "--disable-dev-shm-usage", "--disable-default-apps", "--disable-extensions",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
    "--window-size=1280,900",
)
# Plotly draws each chart as a div.js-plotly-plot holding svg.main-svg elements.
CHARTS_DRAWN = ("Array.from(document.querySelectorAll('.js-plotly-plot'))"
                ".filter((div) => div.querySelector('.main-svg')).length")


@dataclass
class PageReport:
    """What happened while a page loaded and drew its charts."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # URLs other than the page and data:/blob:
    dialogs: list[str] = field(default_factory=list)
    charts_drawn: int = 0
    charts_counter: int | None = None  # window.canarykitChartsDrawn
    text: str | None = None
    screenshot: Path | None = None


class Chromium:
    """One headless Chromium process and a CDP connection to its first page."""

    def __init__(self, workdir: Path) -> None:
        if not os.path.exists(CHROMIUM):
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                        "(apt-get install -y --no-install-recommends chromium)")
        self.profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=workdir))
        self.log_path = workdir / "chromium-stderr.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            start_new_session=True,
        )
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.ws = self._connect()

    # ------------------------------------------------------------ process

    def _port(self) -> int:
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"chromium exited with {self.process.returncode}: {self._stderr()}")
            lines = active.read_text().splitlines() if active.exists() else []
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
            time.sleep(0.1)
        pytest.fail(f"chromium did not open its DevTools port in {START_TIMEOUT:g} s: "
                    f"{self._stderr()}")

    def _stderr(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def _connect(self) -> websocket.WebSocket:
        port = self._port()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"chromium opened no page: {self._stderr()}")
            time.sleep(0.1)
        return websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=5,
                                           suppress_origin=True)

    def stop(self) -> None:
        """Close the connection, then stop Chromium (and its helpers) by its PID."""
        try:
            self.ws.close()
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=10)
            self._log.close()

    # ------------------------------------------------------------ protocol

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer, keeping the events that arrive meanwhile."""
        self._next_id += 1
        ask = self._next_id
        self.ws.send(json.dumps({"id": ask, "method": method, "params": params}))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = self._receive(timeout=deadline - time.monotonic())
            if message is None:
                continue
            if message.get("id") == ask:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message.get("result", {})
        raise TimeoutError(f"no answer to {method}")

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        self.ws.settimeout(max(0.05, timeout))
        try:
            message = json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None
        if "method" in message:
            self.events.append(message)
            if message["method"] == "Page.javascriptDialogOpening":  # never leave it blocking
                self.ws.send(json.dumps({"id": 0, "method": "Page.handleJavaScriptDialog",
                                         "params": {"accept": True}}))
        return message

    def pump(self, seconds: float) -> None:
        """Collect events for a while."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive(timeout=deadline - time.monotonic())

    def evaluate(self, expression: str) -> Any:
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"evaluating {expression!r}: {answer['exceptionDetails']}")
        return answer.get("result", {}).get("value")

    # ------------------------------------------------------------ the page

    def open_page(self, path: Path, *, charts_expected: int, text_selector: str,
                  screenshot: Path, timeout: float = 20.0) -> PageReport:
        """Load `path`, wait (bounded) until the charts are drawn, and report what happened."""
        url = Path(path).resolve().as_uri()
        self.events.clear()
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable")
        self.call("Page.navigate", url=url)
        report = PageReport(url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.25)
            drawn = self.evaluate(CHARTS_DRAWN) or 0
            if drawn >= charts_expected:
                break
        self.pump(0.5)  # let late errors or requests arrive
        report.charts_drawn = self.evaluate(CHARTS_DRAWN) or 0
        report.charts_counter = self.evaluate("window.canarykitChartsDrawn")
        report.text = self.evaluate(
            f"(document.querySelector({json.dumps(text_selector)}) || {{}}).innerText || null")
        report.screenshot = self.capture(screenshot)
        self._sort_events(report)
        return report

    def capture(self, target: Path) -> Path:
        """A PNG of the whole page (not only the first screen)."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"],
                               "height": size["height"], "scale": 1})
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(shot["data"]))
        return target

    def _sort_events(self, report: PageReport) -> None:
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                report.console_errors.append(" ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                report.console_errors.append(
                    details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                report.console_errors.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                request_url = params.get("request", {}).get("url", "")
                if request_url != report.url and not request_url.startswith(("data:", "blob:")):
                    report.requests.append(request_url)
            elif method == "Page.javascriptDialogOpening":
                report.dialogs.append(f"{params.get('type')}: {params.get('message')}")


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    """A headless Chromium for one test; fails (never skips) when Chromium is not installed."""
    browser = Chromium(tmp_path)
    try:
        yield browser
    finally:
        browser.stop()
