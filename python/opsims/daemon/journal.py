"""The record of each run (docs/journal.md): ``<state_dir>/runs/<run_id>/`` holds the
configuration and protocol as the run saw them, ``run.json`` (what the run is, how it
ended) and ``journal/``, the native run journal. The link threads write the raw detector
reads and the samples into it themselves; this module adds what the daemon knows: control
actions with who and why, protocol step transitions, safety events, clock models.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import msgpack
import numpy as np

from opsims._native import JournalError, JournalWriter, recover_journal
from opsims.config_table import TableReader
from opsims.daemon.files import make_dir, open_private
from opsims.replay import RUN_FILE

log = logging.getLogger("opsimsd")

OnBacklog = Literal["stop_run", "keep_acquiring"]


@dataclass(frozen=True)
class JournalConfig:
    """``[journal]``: how runs are recorded."""

    flush_interval_s: float = 0.1
    flush_bytes: int = 64 << 20
    segment_bytes: int = 256 << 20
    queue_bytes: int = 512 << 20
    level: int = 1
    #: When the disk fails or falls behind: end the run (open circuit) or keep acquiring
    #: into memory up to ``queue_bytes``; past that, blocks are refused and counted.
    on_backlog: OnBacklog = "stop_run"

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> JournalConfig:
        r = TableReader(table, "journal")
        d = cls()
        policy = r.get("on_backlog", str, d.on_backlog)
        if policy not in ("stop_run", "keep_acquiring"):
            raise r.error("on_backlog", f"expected 'stop_run' or 'keep_acquiring', got {policy!r}")
        flush_s = r.get_float("flush_interval_s", d.flush_interval_s, minimum=0.001, maximum=60)
        config = cls(
            flush_interval_s=flush_s,
            flush_bytes=_positive(r, "flush_bytes", d.flush_bytes),
            segment_bytes=_positive(r, "segment_bytes", d.segment_bytes),
            queue_bytes=_positive(r, "queue_bytes", d.queue_bytes),
            level=_level(r, d.level),
            on_backlog=policy,
        )
        r.reject_unknown()
        return config


def _level(r: TableReader, default: int) -> int:
    value: int = r.get("level", int, default)
    if not -7 <= value <= 22:
        raise r.error("level", f"zstd levels run from -7 to 22, got {value}")
    return value


def _positive(r: TableReader, key: str, default: int) -> int:
    value: int = r.get(key, int, default)
    if value <= 0:
        raise r.error(key, f"must be > 0, got {value}")
    return value


def new_run_id(runs_dir: Path) -> str:
    """A run id no earlier run in ``runs_dir`` has: the start time, numbered if needed."""
    stamp = time.strftime("run-%Y%m%d-%H%M%S", time.gmtime())
    for n in range(1, 10_000):
        candidate = stamp if n == 1 else f"{stamp}-{n}"
        if not (runs_dir / candidate).exists():
            return candidate
    raise RuntimeError(f"no free run id under {runs_dir}")


class RunRecord:
    """One run's directory and open journal."""

    def __init__(
        self,
        runs_dir: Path,
        run_id: str,
        *,
        config: JournalConfig,
        config_path: Path,
        protocol: Mapping[str, Any],
        meta: Mapping[str, Any],
    ) -> None:
        self.run_id = run_id
        self.dir = runs_dir / run_id
        make_dir(self.dir, exist_ok=False)
        with open_private(self.dir / "config.toml", "wb") as f:
            f.write(config_path.read_bytes())
        _write_json(self.dir / "protocol.json", dict(protocol))
        self.info: dict[str, Any] = {
            "format": "opsims-run/1",
            "run_id": run_id,
            "state": "recording",
            "started_ns": time.time_ns(),
            "journal_config": asdict(config),
            **meta,
        }
        _write_json(self.dir / RUN_FILE, self.info)
        self.writer = JournalWriter(
            self.dir / "journal",
            run_id=run_id,
            flush_interval_s=config.flush_interval_s,
            flush_bytes=config.flush_bytes,
            segment_bytes=config.segment_bytes,
            queue_bytes=config.queue_bytes,
            level=config.level,
        )
        self.refused = 0
        self._closing: threading.Thread | None = None

    def append(self, kind: str, fields: Mapping[str, Any]) -> bool:
        """Record a daemon-side block (msgpack); False (and counted) if refused."""
        payload = msgpack.packb(dict(fields), default=_plain)
        try:
            self.writer.append(kind, time.time_ns(), payload)
        except JournalError as e:
            self.refused += 1
            log.error("journal %s: %s block refused: %s", self.run_id, kind, e)
            return False
        return True

    def status(self) -> dict[str, Any]:
        st = self.writer.status()
        return {"run_id": self.run_id, "daemon_refused": self.refused, **st}

    def close_in_background(self, final: Mapping[str, Any]) -> threading.Thread:
        """Close the journal and complete ``run.json`` off the daemon's loop (a failing
        disk can hold ``close`` for its timeout)."""
        if self._closing is None:
            self._closing = threading.Thread(
                target=self._close, args=(dict(final),), name=f"close-{self.run_id}"
            )
            self._closing.start()
        return self._closing

    def _close(self, final: dict[str, Any]) -> None:
        try:
            status = self.writer.close()
            state = "closed"
        except JournalError as e:
            status, state = self.writer.status(), "close_failed"
            log.error("journal %s: close failed: %s", self.run_id, e)
        self.info.update(final, state=state, ended_ns=time.time_ns(), journal=status,
                         daemon_refused=self.refused)  # fmt: skip
        try:
            _write_json(self.dir / RUN_FILE, self.info)
        except OSError as e:
            log.error("journal %s: cannot write %s: %s", self.run_id, RUN_FILE, e)
        log.info("journal %s %s: %d blocks, %d frames durable", self.run_id, state,
                 status.get("blocks_durable", 0), status.get("frames_durable", 0))  # fmt: skip


def recover_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Every run a crash left ``recording``: its journal's torn tail cut, marked as
    recovered with what was kept. Returns one summary per run recovered."""
    recovered: list[dict[str, Any]] = []
    if not runs_dir.is_dir():
        return recovered
    for run_file in sorted(runs_dir.glob(f"*/{RUN_FILE}")):
        try:
            info = json.loads(run_file.read_text())
        except (OSError, ValueError) as e:
            log.error("run record %s unreadable: %s", run_file, e)
            continue
        if info.get("state") != "recording":
            continue
        journal = run_file.parent / "journal"
        try:
            kept = recover_journal(journal)
        except (JournalError, OSError) as e:
            info.update(state="unrecoverable", recovery_error=str(e))
            log.error("run %s: journal not recoverable: %s", run_file.parent.name, e)
        else:
            info.update(state="recovered", recovery=kept, ended_ns=kept.get("last_host_ns"))
            log.warning("run %s recovered after a crash: %d blocks kept, %d bytes cut",
                        run_file.parent.name, kept["blocks"], kept["bytes_cut"])  # fmt: skip
        _write_json(run_file, info)
        recovered.append({"run_id": run_file.parent.name, **info})
    return recovered


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Written whole or not at all: a crash leaves the previous version."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open_private(tmp) as f:
        json.dump(doc, f, indent=1, default=_plain)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot record {type(value).__name__}")
