"""A real browser for tests: Debian's headless Chromium, driven over the DevTools protocol.

``open_page(path)`` starts ``chromium --headless`` with a fresh profile and no network
services of its own, loads the file, and returns a ``PageCheck``: what the page logged as
errors (uncaught exceptions, console errors, failed loads), every URL it requested, what a
script found in the loaded document (``evaluate``), and a PNG screenshot. Chromium is
stopped before it returns: nothing is left running.

The protocol is JSON over a websocket (``websocket-client``, already a dependency of the
kubernetes client); no browser automation framework is needed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
)


class BrowserError(RuntimeError):
    pass


def chromium_path() -> str:
    found = shutil.which("chromium")
    if not found:
        raise BrowserError(
            "chromium not found on PATH: hack/setup installs Debian's chromium package "
            "(hack/cluster.d/apt-deps.sh)"
        )
    return found


@dataclass
class PageCheck:
    title: str = ""
    errors: list[str] = field(default_factory=list)
    """Uncaught exceptions, console errors, log errors and failed loads, in order."""
    requests: list[str] = field(default_factory=list)
    """Every URL the page asked for (the page itself included)."""
    found: Any = None
    """What the `evaluate` expression returned."""
    screenshot: bytes = b""


class _DevTools:
    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        wanted = self.next_id
        self.ws.send(json.dumps({"id": wanted, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == wanted:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_for(self, event: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if any(e.get("method") == event for e in self.events):
            return
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                message = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            self.events.append(message)
            if message.get("method") == event:
                return
        raise BrowserError(f"no {event} within {timeout}s")

    def close(self) -> None:
        self.ws.close()


def _port(profile: Path, process: subprocess.Popen[bytes], timeout: float) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrowserError(f"chromium exited with {process.returncode}")
        if marker.exists():
            lines = marker.read_text().splitlines()
            if lines and lines[0].isdigit():
                return int(lines[0])
        time.sleep(0.1)
    raise BrowserError(f"chromium did not open its DevTools port within {timeout}s")


def open_page(
    path: str | os.PathLike[str],
    evaluate: str = "null",
    *,
    width: int = 1280,
    height: int = 1600,
    timeout: float = 60,
) -> PageCheck:
    """Load `path` in a fresh headless Chromium; return what it saw (see `PageCheck`)."""
    url = Path(path).resolve().as_uri()
    check = PageCheck()
    with tempfile.TemporaryDirectory(prefix="peakwise-chromium-") as profile:
        process = subprocess.Popen(
            [
                chromium_path(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port = _port(Path(profile), process, timeout)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.load(r)
            page = next(t for t in targets if t.get("type") == "page")
            tools = _DevTools(page["webSocketDebuggerUrl"])
            try:
                for domain in ("Page", "Runtime", "Log", "Network"):
                    tools.call(f"{domain}.enable")
                tools.call("Page.navigate", url=url)
                tools.wait_for("Page.loadEventFired", timeout)
                result = tools.call(
                    "Runtime.evaluate", expression=f"JSON.stringify({evaluate})", returnByValue=True
                )
                check.found = json.loads(result.get("result", {}).get("value") or "null")
                title = tools.call(
                    "Runtime.evaluate", expression="document.title", returnByValue=True
                )
                check.title = str(title.get("result", {}).get("value", ""))
                shot = tools.call(
                    "Page.captureScreenshot", format="png", captureBeyondViewport=False
                )
                check.screenshot = base64.b64decode(shot["data"])
                for event in tools.events:
                    _note(event, check)
                tools.call("Browser.close")
            finally:
                tools.close()
        finally:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            # Its helpers (zygote, crash handler) share its process group: none may outlive it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return check


def _note(event: dict[str, Any], check: PageCheck) -> None:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        described = details.get("exception", {}).get("description", "")
        check.errors.append(f"exception: {details.get('text')} {described}")
    elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        check.errors.append(f"console.{params['type']}: {params.get('args')}")
    elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        check.errors.append(f"log: {params['entry'].get('text')}")
    elif method == "Network.loadingFailed":
        check.errors.append(f"failed to load: {params.get('errorText')}")
    elif method == "Network.requestWillBeSent":
        check.requests.append(str(params.get("request", {}).get("url", "")))
