"""Synthetic sensor signals that look like a real 16-bit ADC: a smooth signal
plus noise, quantised to the converter's steps. Everything is vectorised:
one call builds a whole second of every sensor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lenshouse.points import PointBatch


@dataclass(frozen=True)
class Fleet:
    sensors: int = 1000
    rate_hz: int = 1000
    start_ms: int = 1_700_000_000_000
    seed: int = 0
    first_id: int = 1
    full_scale: float = 10.0  # volts; the ADC spans ±full_scale
    bits: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.rate_hz <= 1000:
            raise ValueError("rate_hz must be 1..1000 (timestamps are in milliseconds)")
        if self.sensors < 1:
            raise ValueError("sensors must be at least 1")

    @property
    def lsb(self) -> float:
        return 2 * self.full_scale / 2**self.bits

    @property
    def ids(self) -> np.ndarray:
        return np.arange(self.first_id, self.first_id + self.sensors, dtype=np.uint32)

    def params(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        n = self.sensors
        return {
            "amp": rng.uniform(0.5, 6.0, n),
            "freq": rng.uniform(0.05, 5.0, n),
            "phase": rng.uniform(0, 2 * np.pi, n),
            "offset": rng.uniform(-2.0, 2.0, n),
            "noise": rng.uniform(0.5, 4.0, n),  # in LSB
        }

    def offsets_ms(self) -> np.ndarray:
        """Millisecond offsets of the samples within one second."""
        return (np.arange(self.rate_hz, dtype=np.int64) * 1000) // self.rate_hz

    def second(self, k: int, tenant: str = "default") -> PointBatch:
        """All sensors' samples for second ``k`` after ``start_ms``, sensor-major."""
        p = self.params()
        ts1 = self.start_ms + k * 1000 + self.offsets_ms()
        t = (ts1 - self.start_ms) / 1000.0
        signal = p["amp"][:, None] * np.sin(
            2 * np.pi * p["freq"][:, None] * t + p["phase"][:, None]
        )
        signal += p["offset"][:, None]
        rng = np.random.default_rng((self.seed, k))
        noise = rng.standard_normal(signal.shape) * (p["noise"][:, None] * self.lsb)
        half = 2 ** (self.bits - 1)
        code = np.clip(np.rint((signal + noise) / self.lsb), -half, half - 1)
        return PointBatch(
            tenant,
            np.repeat(self.ids, self.rate_hz),
            np.tile(ts1, self.sensors),
            (code * self.lsb).ravel(),
        )


def full_precision(sensor: np.ndarray, ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Values that use every bit of a double: 10 + sin + 0.05·N(0,1), the
    shape the peers' storage and ingest were compared on."""
    return 10 + np.sin(ts / 1000.0 + sensor) + 0.05 * rng.standard_normal(len(ts))
