"""Headless Chromium (Debian's `chromium`, installed by `make test`), driven over the DevTools protocol: open a page
from disk, run script in it, read its console errors, take a screenshot. No browser is downloaded.

In CI (or with APR_REQUIRE_CHROMIUM=1) a missing Chromium fails the tests that need it; elsewhere they skip.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest


def chromium_path() -> str:
    path = os.environ.get("APR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI") or os.environ.get("APR_REQUIRE_CHROMIUM"):
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package (apt-get install chromium)")
    pytest.skip("no chromium on this machine (make test installs it)")


class Browser:
    """One headless Chromium process with one page. Stop it with `close()` (it kills the process group by PID)."""

    def __init__(self, folder: Path):
        profile = folder / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        self.log = open(folder / "chromium.log", "w")
        self.proc = subprocess.Popen(
            [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.loop = asyncio.new_event_loop()
        self.events: list[dict] = []
        self.next_id = 0
        try:
            self.loop.run_until_complete(self._connect(profile / "DevToolsActivePort"))
        except BaseException:
            self.close()
            raise

    async def _connect(self, port_file: Path) -> None:
        import aiohttp
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {self.proc.poll()}); see {self.log.name}")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        for domain in ("Page", "Runtime", "Log"):
            await self._send(f"{domain}.enable", {})

    async def _send(self, method: str, params: dict) -> dict:
        self.next_id += 1
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads((await asyncio.wait_for(self.ws.receive(), 120)).data)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    async def _wait_event(self, method: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads((await asyncio.wait_for(self.ws.receive(), max(deadline - time.monotonic(), 0.01))).data)
            self.events.append(message)
            if message.get("method") == method:
                return message

    def send(self, method: str, **params) -> dict:
        return self.loop.run_until_complete(self._send(method, params))

    def open(self, url: str, timeout: float = 120) -> None:
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.loop.run_until_complete(self._wait_event("Page.loadEventFired", timeout))

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error calls and error log entries since the page was opened."""
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.append(params["entry"].get("text", ""))
        return out

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        async def shut():
            if getattr(self, "ws", None) is not None:
                await self.ws.close()
            if getattr(self, "session", None) is not None:
                await self.session.close()
        try:
            self.loop.run_until_complete(shut())
        finally:
            self.loop.close()
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.log.close()
