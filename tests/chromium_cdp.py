"""Open a local HTML file in headless Chromium over the DevTools protocol (``--remote-debugging-pipe``: JSON
messages, NUL-terminated, written to the browser on fd 3 and read from it on fd 4). Collects console
messages, uncaught exceptions and log entries (failed loads), runs one expression, saves a screenshot."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--disable-default-apps", "--remote-debugging-pipe"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("chromium not installed (bash scripts/setup.sh installs the Debian package)")


class Browser:
    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="glad-edge-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:  # the protocol pipe lives on fds 3 and 4 in the browser
            r, w = os.dup(to_browser_r), os.dup(from_browser_w)  # neither may be clobbered by the other's dup2
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [chromium(), *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, pass_fds=(3, 4))  # kept open: the child's 3 and 4 after child_fds
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # already gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the protocol pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        for e in self.events:
            if e.get("method") == method and e.get("sessionId") == session:
                return e
        while True:
            e = self._read_message(deadline)
            self.events.append(e)
            if e.get("method") == method and e.get("sessionId") == session:
                return e


def open_page(html: Path, expression: str, screenshot: Path) -> dict[str, Any]:
    """Load ``html``, wait for its load event, evaluate ``expression`` (returned by value), save a full-page
    screenshot. Returns {"value", "console": [(level, text)], "exceptions": [text], "log": [(level, text)]}."""
    b = Browser()
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            b.send(f"{domain}.enable", session=s)
        b.send("Page.navigate", {"url": html.resolve().as_uri()}, session=s)
        b.wait_event("Page.loadEventFired", s)
        value = b.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                            "awaitPromise": True}, session=s)["result"].get("value")
        metrics = b.send("Page.getLayoutMetrics", session=s)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = b.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}, session=s)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        mine = [e for e in b.events if e.get("sessionId") == s]
        console = [(e["params"]["type"], " ".join(str(a.get("value", a.get("description", "")))
                                                   for a in e["params"]["args"]))
                   for e in mine if e.get("method") == "Runtime.consoleAPICalled"]
        exceptions = [e["params"]["exceptionDetails"].get("text", "") for e in mine
                      if e.get("method") == "Runtime.exceptionThrown"]
        log = [(e["params"]["entry"]["level"], e["params"]["entry"]["text"]) for e in mine
               if e.get("method") == "Log.entryAdded"]
        return {"value": value, "console": console, "exceptions": exceptions, "log": log}
    finally:
        b.close()
