"""A lenshouse server as a child process that a scenario can kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_loaded(url: str, timeout: float = 120.0) -> float:
    """Seconds until every batch the server at ``url`` acknowledged is visible
    to lenses."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = httpx.get(url + "/healthz", timeout=5.0).json()
        if h["loaded_lsn"] >= h["accepted_lsn"]:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise TimeoutError(f"{url}: ingest did not catch up in {timeout:.0f} s")


class ServerProcess:
    def __init__(
        self,
        data: Path,
        flush_interval: float = 0.2,
        dedup_pages: int = 65_536,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data = Path(data)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable, "-m", "lenshouse.cli", "serve",
            "--data", str(self.data), "--port", str(self.port),
            "--flush-interval", str(flush_interval), "--dedup-pages", str(dedup_pages),
            *extra_args,
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = None
        self.log = self.data.parent / f"{self.data.name}-server.log"

    def spawn(self) -> None:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until /healthz answers; raises if the process dies or times out."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout:.0f} s; see {self.log}")

    def start(self) -> float:
        self.spawn()
        return self.wait_ready()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def health(self) -> dict:
        return httpx.get(self.url + "/healthz", timeout=5.0).json()

    def wait_loaded(self, timeout: float = 120.0) -> None:
        """Until every acknowledged batch is visible to lenses."""
        wait_loaded(self.url, timeout)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
