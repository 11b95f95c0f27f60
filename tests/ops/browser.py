"""Drive headless Chromium (Debian's `chromium`, through npm puppeteer-core) from asyncio tests.

One `Browser` is one `node tests/interop/node/browser_host.js` subprocess holding one page::

    async with Browser(tmp_path) as browser:
        await browser.goto(server.http_url + "/")
        await browser.wait_text("#connections-now", r"^[1-9]")

Setup: `tests/run` installs chromium (apt) and the Node packages (`npm ci --prefix
tests/interop/node`). CHROMIUM overrides the browser's path; `node` is found like the
scratch-vm harness finds it (STRATUS_NODE, else PATH).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tests.interop.vm import NODE_DIR, node_binary

HOST_SCRIPT = NODE_DIR / "browser_host.js"
SETUP_HINT = ("run tests/run, which installs chromium (apt-get install -y chromium) and "
              "`npm ci --prefix tests/interop/node`")


class BrowserError(RuntimeError):
    """A failed command, or a browser that would not start; says what Chromium printed."""


def chromium_binary() -> str:
    """Path of Chromium: CHROMIUM, else `chromium` on PATH; BrowserError with the fix if absent."""
    configured = os.environ.get("CHROMIUM")
    found = configured or shutil.which("chromium")
    if not found:
        raise BrowserError(f"chromium is not installed; {SETUP_HINT}")
    if not (NODE_DIR / "node_modules" / "puppeteer-core" / "package.json").is_file():
        raise BrowserError(f"puppeteer-core is not installed; {SETUP_HINT}")
    return found


class Browser:
    """One headless Chromium page, as an async context manager (see the module docstring)."""

    def __init__(self, workdir: Path, timeout: float = 30.0) -> None:
        self.profile = workdir / "chromium-profile"  # a fresh profile for every browser
        self.timeout = timeout
        self.proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._stderr = workdir / "browser-host.log"

    async def __aenter__(self) -> Browser:
        chromium = chromium_binary()
        self.profile.mkdir(parents=True, exist_ok=True)
        with open(self._stderr, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                node_binary(), str(HOST_SCRIPT), "--chromium", chromium,
                "--profile", str(self.profile),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                limit=1 << 24)
        try:
            ready = await self._read()
        except BaseException:
            await self.close()
            raise
        if ready.get("event") != "ready":
            raise BrowserError(f"unexpected first line {ready!r}: {self._log()}")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the browser and end the host process (killed if it hangs)."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.command("exit"), 10)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def _log(self) -> str:
        try:
            return self._stderr.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    async def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), self.timeout)
        except TimeoutError:
            raise BrowserError(f"no answer within {self.timeout} s: {self._log()}") from None
        if not line:
            await self.proc.wait()
            raise BrowserError(f"the browser host exited ({self.proc.returncode}): {self._log()}")
        return json.loads(line)

    async def command(self, cmd: str, **fields: Any) -> Any:
        """Send one command and return its result (BrowserError if it failed)."""
        assert self.proc is not None and self.proc.stdin is not None
        ident = next(self._ids)
        self.proc.stdin.write(json.dumps({"id": ident, "cmd": cmd, **fields}).encode() + b"\n")
        await self.proc.stdin.drain()
        reply = await self._read()
        if reply.get("id") != ident:
            raise BrowserError(f"reply {reply!r} does not answer command {ident}")
        if not reply["ok"]:
            raise BrowserError(f"{cmd} {fields!r}: {reply['error']}")
        return reply["result"]

    async def goto(self, url: str) -> dict[str, Any]:
        """Open `url`; its {"status", "headers"}."""
        return await self.command("goto", url=url)

    async def text(self, selector: str) -> str | None:
        return await self.command("text", selector=selector)

    async def wait_text(self, selector: str, pattern: str, timeout: float = 10.0) -> str:
        """Wait until the text of `selector` matches the regular expression `pattern`."""
        try:
            return await self.command("wait_text", selector=selector, pattern=pattern,
                                      timeout_ms=int(timeout * 1000))
        except BrowserError as error:
            now = await self.text(selector)
            raise BrowserError(f"{selector} never matched {pattern!r} (it reads {now!r}): "
                               f"{error}") from None

    async def wait(self, selector: str, timeout: float = 10.0) -> None:
        await self.command("wait", selector=selector, timeout_ms=int(timeout * 1000))

    async def click(self, selector: str) -> None:
        await self.command("click", selector=selector)

    async def type(self, selector: str, text: str, replace: bool = False) -> None:
        await self.command("type", selector=selector, text=text, replace=replace)

    async def box(self, selector: str) -> dict[str, float] | None:
        return await self.command("box", selector=selector)

    async def screenshot(self, path: Path) -> Path:
        await self.command("screenshot", path=str(path))
        return path

    async def image_stats(self, path: Path) -> dict[str, float]:
        """{width, height, colors, dominant} of a PNG: distinct colours and the share of the
        commonest one (decoded by Chromium, in a blank page of its own)."""
        return await self.command("image_stats", path=str(path))

    async def problems(self) -> list[str]:
        """Console errors, uncaught page errors and failed requests so far."""
        return await self.command("problems")
