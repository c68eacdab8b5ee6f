"""A headless Chromium driven over the Chrome DevTools Protocol (raw CDP over a WebSocket: no
browser download, no driver package): Debian's `chromium`, a private profile, and no network
but 127.0.0.1 (every host name resolves to nothing). Every request the page makes is recorded,
so a test can prove the page loaded nothing from elsewhere."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

from conftest import wait_for

TESTS_DIR = Path(__file__).resolve().parent


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    return None


def artifacts_dir(name: str) -> Path:
    """Where a test's screenshots go (`CLINVK_TEST_ARTIFACTS`, default tests/artifacts; git-ignored)."""
    root = Path(os.environ.get("CLINVK_TEST_ARTIFACTS", TESTS_DIR / "artifacts"))
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    return d


class Browser:
    """One headless Chromium with one page."""

    def __init__(self, width: int = 1400, height: int = 1700):
        exe = chromium_path()
        assert exe, "chromium is not installed"
        self.profile = Path(tempfile.mkdtemp(prefix="clinvk-chromium-"))
        self.log = open(self.profile / "chromium.log", "w")
        argv = [exe, "--headless=new", "--disable-gpu", "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
                # The network is off: no host name resolves; only the daemon's 127.0.0.1 is reachable.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--window-size={width},{height}", "about:blank"]
        if os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"

        def port():
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited {self.proc.returncode}: "
                                     f"{(self.profile / 'chromium.log').read_text()[-2000:]}")
            text = port_file.read_text() if port_file.exists() else ""
            return text.split("\n")[0].strip() if "\n" in text else None

        self.port = int(wait_for(port, 30, what="chromium's DevTools port"))

        def page_target():
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as r:
                targets = json.loads(r.read())
            return next((t for t in targets if t["type"] == "page"), None)

        target = wait_for(page_target, 30, what="chromium's page")
        self.ws = connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.next_id = 0
        self.events: list[dict] = []
        self.requests: list[str] = []
        self.console: list[str] = []
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Network.enable")

    # --- protocol ------------------------------------------------------------------------------
    def _note(self, msg: dict) -> None:
        method = msg.get("method")
        if method == "Network.requestWillBeSent":
            self.requests.append(msg["params"]["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            self.console.append("exception: " + json.dumps(msg["params"]["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled":
            args = msg["params"].get("args", [])
            self.console.append(msg["params"]["type"] + ": " + " ".join(str(a.get("value", a.get("description", ""))) for a in args))
        self.events.append(msg)

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(self.ws.recv(timeout=timeout))
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._note(msg)

    # --- page ----------------------------------------------------------------------------------
    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        wait_for(lambda: self.js("document.readyState") == "complete", 30, what=f"{url} to load")

    def js(self, expression: str, await_promise: bool = False):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": await_promise})
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 60, what: str | None = None):
        """Waits until the page expression is truthy; returns its value."""
        return wait_for(lambda: self.js(expression), timeout, interval=0.05, what=what or expression)

    def type_into(self, element_id: str, text: str) -> None:
        """Focuses an input and types text into it (as keyboard input, not a value assignment)."""
        self.js(f"document.getElementById({json.dumps(element_id)}).focus()")
        self.send("Input.insertText", {"text": text})

    def click(self, selector: str) -> None:
        """Clicks the element at its place on the page (a real mouse event)."""
        box = self.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        assert box, f"no element {selector}"
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1],
                                                   "button": "left", "clickCount": 1})

    def screenshot(self, path: Path, scale: float = 1.0) -> Path:
        params: dict = {"format": "png"}
        if scale != 1.0:
            size = self.js("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": scale}
        data = self.send("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
