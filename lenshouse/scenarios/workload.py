"""A workload for cluster scenarios: a fleet's data sent in a thread, one batch
per second, through the unreliable middle layer to several gateways,
recording what each acknowledgement took and what was acknowledged."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from lenshouse.client import Client
from lenshouse.generators.sender import MiddleLayer
from lenshouse.generators.signals import Fleet
from lenshouse.points import PointBatch
from lenshouse.scenarios.ledger import Ledger


@dataclass
class Ack:
    sent: float  # monotonic time the batch was first posted
    acked: float  # … and acknowledged (after any retries and failovers)
    points: int


@dataclass
class Workload:
    """Ownership: the sending thread appends to ``acks`` and the ledger; read
    them after ``join`` (or racily, for progress)."""

    gateways: list[str]
    fleet: Fleet
    seconds: int
    tenant: str = "default"
    token: str | None = None  # bearer token of its writes and checks (None: LENSHOUSE_TOKEN)
    middle: MiddleLayer = field(default_factory=MiddleLayer)
    realtime: bool = True
    give_up_after: float = 180.0
    ledger: Ledger = field(init=False)
    acks: list[Ack] = field(default_factory=list)
    error: BaseException | None = None
    _thread: threading.Thread | None = None
    started: float = 0.0  # monotonic time the stream began
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.tenant, self.token)

    @property
    def streaming(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """End the stream early (what was pushed is still sent)."""
        self._stop.set()

    def start(self) -> Workload:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the workload did not finish within {timeout:.0f} s")
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            with self.ledger.client(self.gateways, self.give_up_after) as client:
                for k in range(self.seconds):
                    if self._stop.is_set():
                        break
                    if self.realtime:
                        time.sleep(max(0.0, t0 + k + 1 - time.monotonic()))
                    self.middle.push(self.fleet.second(k, self.tenant), time.monotonic())
                    for batch in self.middle.due(time.monotonic()):
                        self._send(client, batch)
                for batch in self.middle.drain():
                    self._send(client, batch)
        except BaseException as e:  # surfaced by join()
            self.error = e

    def _send(self, client: Client, batch: PointBatch) -> None:
        t = time.monotonic()
        self.ledger.send(client, batch)
        self.acks.append(Ack(t, time.monotonic(), len(batch)))

    def ack_latencies(self) -> list[float]:
        return [a.acked - a.sent for a in self.acks]
