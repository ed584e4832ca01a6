"""A real Prometheus (Debian's ``prometheus``) for tests and the bench: it
scrapes an exporter of the caller's own on loopback and remote-writes to
lenshouse; it is started on a port of its own and stopped by its PID."""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np

from lenshouse.cluster.processes import serving

CONFIG = """global:
  scrape_interval: {interval}
  scrape_timeout: {interval}
  evaluation_interval: 10s
scrape_configs:
  - job_name: sensors
    static_configs:
      - targets: ['{target}']
remote_write:
  - url: {write_url}
{auth}    queue_config:
      batch_send_deadline: 1s
      min_backoff: 100ms
      max_backoff: 1s
"""


def available() -> bool:
    return shutil.which("prometheus") is not None


class Exporter:
    """``/metrics`` in Prometheus' text format: ``sensors`` gauges that take a
    new random value at each scrape, and a counter. Runs in a thread."""

    def __init__(self, sensors: int = 3, seed: int = 1) -> None:
        self.sensors = sensors
        self.rng = np.random.default_rng(seed)
        self.scrapes = 0
        self.lock = threading.Lock()  # guards rng and scrapes (server threads)
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def render(self) -> str:
        with self.lock:
            self.scrapes += 1
            values = self.rng.normal(20, 5, self.sensors)
            n = self.scrapes
        lines = ["# TYPE lh_temperature gauge"]
        lines += [
            f'lh_temperature{{sensor="s{i}",site="A"}} {float(v)!r}' for i, v in enumerate(values)
        ]
        lines += ["# TYPE lh_reads_total counter", f"lh_reads_total {n * 7}"]
        return "\n".join(lines) + "\n"

    def __enter__(self) -> Exporter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def prometheus(
    root: Path,
    port: int,
    target: str,
    write_url: str,
    interval: str = "1s",
    token: str | None = None,
) -> Iterator[str]:
    """A Prometheus scraping ``target`` and remote-writing to ``write_url``
    (with a tenant's bearer ``token``); yields its URL. Debian's 2.42 sends no
    custom ``headers``, so a tenant is named by its token."""
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "prometheus.yml"
    conf.write_text(
        CONFIG.format(
            interval=interval,
            target=target,
            write_url=write_url,
            auth=f"    authorization:\n      credentials: {token}\n" if token else "",
        )
    )
    url = f"http://127.0.0.1:{port}"
    argv = [
        "prometheus",
        f"--config.file={conf}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    with serving(argv, root / "prometheus.log", url + "/-/ready"):
        yield url


def samples(url: str, selector: str, at_s: float, range_s: int) -> dict[tuple, list]:
    """Prometheus' own stored samples of ``selector`` in (at − range, at]:
    {sorted labels: [(ts ms, value), ...]}."""
    r = httpx.get(
        url + "/api/v1/query", params={"query": f"{selector}[{range_s}s]", "time": at_s}, timeout=30
    )
    r.raise_for_status()
    out = {}
    for item in r.json()["data"]["result"]:
        key = tuple(sorted(item["metric"].items()))
        out[key] = [(round(float(t) * 1000), float(v)) for t, v in item["values"]]
    return out
