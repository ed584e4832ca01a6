"""Hot and cold storage for the embedded store: two volumes, older partitions
moved to the cold one.

A data directory made with ``serve --cold-dir DIR --hot 7d`` keeps
``lenshouse-tiering.json`` in its ClickHouse directory; every later open
(serve, ``maintain --data``) finds it and gives the engine a storage policy
``lenshouse`` of two volumes: ``default`` (the data directory's own disk,
where new parts are written) and ``cold`` (``DIR``). Maintenance moves each
partition of raw data and of every tier that ends more than ``hot`` ago to
the cold volume (``ALTER TABLE … MOVE PARTITION … TO VOLUME 'cold'``); reads
do not change, whichever disk a part is on. Age alone places a part: the
policy's ``move_factor`` is 0, so the engine never moves parts on its own
when the hot disk runs short of space (its default moves them below 10 %
free, which would make placement depend on the disk's neighbours).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

TIERING_FILE = "lenshouse-tiering.json"
CONFIG_FILE = "lenshouse-storage.xml"
POLICY = "lenshouse"
COLD = "cold"


@dataclass(frozen=True)
class Tiering:
    cold_dir: Path
    hot_ms: int  # partitions ending more than this long ago move to the cold volume

    @classmethod
    def load(cls, clickhouse_dir: Path) -> Tiering | None:
        path = Path(clickhouse_dir) / TIERING_FILE
        if not path.exists():
            return None
        doc = json.loads(path.read_text())
        return cls(Path(doc["cold_dir"]), int(doc["hot_ms"]))

    def save(self, clickhouse_dir: Path) -> None:
        Path(clickhouse_dir).mkdir(parents=True, exist_ok=True)
        doc = {"cold_dir": str(self.cold_dir.resolve()), "hot_ms": self.hot_ms}
        (Path(clickhouse_dir) / TIERING_FILE).write_text(json.dumps(doc))

    def config(self, clickhouse_dir: Path) -> Path:
        """The engine's configuration file for the policy (written each open)."""
        self.cold_dir.mkdir(parents=True, exist_ok=True)
        cold = escape(str(self.cold_dir.resolve()).rstrip("/") + "/")
        xml = f"""<clickhouse>
  <storage_configuration>
    <disks><{COLD}><path>{cold}</path></{COLD}></disks>
    <policies>
      <{POLICY}>
        <volumes>
          <default><disk>default</disk></default>
          <{COLD}><disk>{COLD}</disk></{COLD}>
        </volumes>
        <move_factor>0</move_factor>
      </{POLICY}>
    </policies>
  </storage_configuration>
</clickhouse>
"""
        path = Path(clickhouse_dir) / CONFIG_FILE
        path.write_text(xml)
        return path
