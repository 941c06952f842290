"""The simulator as a real process for integration tests: `opsims-sim` started on free
loopback ports with a test's configuration, its control port, and its ground truth."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from opsims.announce import wait_for_announcement

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "config" / "opsimsd.toml"


def default_document() -> dict[str, Any]:
    with open(DEFAULT_CONFIG, "rb") as f:
        return tomllib.load(f)


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` laid over `base`, table by table."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def small_raster(nx: int = 32, ny: int = 16, **raster: Any) -> dict[str, Any]:
    """A detector override with a small raster so tests run in seconds."""
    return {"detector": {"raster": {"nx": nx, "ny": ny, "frames_per_slice": 1, **raster}}}


def to_toml(doc: Mapping[str, Any]) -> str:
    """Just enough TOML for test configurations (tables, arrays of tables, scalars)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    def table(prefix: str, t: Mapping[str, Any]) -> None:
        for k, v in t.items():
            if not isinstance(v, Mapping) and not _is_table_array(v):
                lines.append(f"{k} = {scalar(v)}")
        for k, v in t.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, Mapping):
                lines.append(f"\n[{name}]")
                table(name, v)
            elif _is_table_array(v):
                for item in v:
                    lines.append(f"\n[[{name}]]")
                    table(name, item)

    table("", doc)
    return "\n".join(lines) + "\n"


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)


class SimProcess:
    def __init__(self, proc: subprocess.Popen[str], ports: dict[str, int], truth_dir: Path):
        self.proc = proc
        self.ports = ports
        self.truth_dir = truth_dir
        self._control: socket.socket | None = None
        self._stream: Any = None

    def control(self, cmd: str, **args: Any) -> dict[str, Any]:
        if self._control is None:
            self._control = socket.create_connection(("127.0.0.1", self.ports["control"]), 5)
            self._stream = self._control.makefile("rwb")
        self._stream.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        self._stream.flush()
        reply: dict[str, Any] = json.loads(self._stream.readline())
        return reply

    def control_raw(self, line: bytes) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self.ports["control"]), 5) as s:
            s.sendall(line)
            reply: dict[str, Any] = json.loads(s.makefile("rb").readline())
            return reply

    def fault(self, link: str, name: str, value: Any) -> None:
        reply = self.control("fault", link=link, name=name, value=value)
        assert reply["ok"], reply

    def truth(self) -> dict[str, Any]:
        """The ground truth now, or as written at exit once the process has stopped."""
        if self.proc.poll() is None:
            reply = self.control("truth", path=str(self.truth_dir))
            assert reply["ok"], reply
        doc: dict[str, Any] = json.loads((self.truth_dir / "truth.json").read_text())
        return doc

    def truth_samples(self) -> dict[str, npt.NDArray[Any]]:
        with np.load(self.truth_dir / "samples.npz") as z:
            return {k: z[k] for k in z.files}

    def truth_cubes(self) -> dict[str, npt.NDArray[np.uint32]]:
        with np.load(self.truth_dir / "cubes.npz") as z:
            return {k: z[k] for k in z.files}

    def close_control(self) -> None:
        if self._control is not None:
            self._stream.close()
            self._control.close()
            self._control = None

    def stop(self) -> int:
        self.close_control()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


@contextmanager
def run_sim(tmp: Path, override: Mapping[str, Any] | None = None) -> Iterator[SimProcess]:
    doc = merge(default_document(), override or {})
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "sim.toml"
    config.write_text(to_toml(doc))
    truth = tmp / "truth"
    cmd = [sys.executable, "-m", "opsims.sim.cli", "--config", str(config), "--any-port",
           "--truth", str(truth)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    sim: SimProcess | None = None
    try:
        sim = SimProcess(proc, _read_ports(proc), truth)
        yield sim
    finally:
        if sim is not None:
            sim.close_control()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _read_ports(proc: subprocess.Popen[str]) -> dict[str, int]:
    msg = wait_for_announcement(proc, "opsims-sim", timeout_s=30)
    return {k: int(msg[k]) for k in ("detector", "potentiostat", "control")}


class DaemonProcess:
    def __init__(
        self, proc: subprocess.Popen[str], endpoints: dict[str, str], log_path: Path
    ) -> None:
        self.proc = proc
        self.publish = endpoints["publish"]
        self.control = endpoints["control"]
        self.log_path = log_path

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def run_daemon(
    tmp: Path, override: Mapping[str, Any], host: str = "127.0.0.1"
) -> Iterator[DaemonProcess]:
    """`opsimsd` as a process on a test configuration, its sockets on free ports of
    `host` (the address both are bound to)."""
    doc = merge(default_document(), override)
    doc = merge(doc, {"daemon": {"publish": f"tcp://{host}:*", "control": f"tcp://{host}:*",
                                 "state_dir": str(tmp / "state")}})  # fmt: skip
    config = tmp / "opsimsd.toml"
    config.write_text(to_toml(doc))
    cmd = [sys.executable, "-m", "opsims.daemon.main", "--config", str(config)]
    log_path = tmp / "opsimsd.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        yield DaemonProcess(proc, _read_announcement(proc, log_path), log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _read_announcement(proc: subprocess.Popen[str], log_path: Path) -> dict[str, str]:
    try:
        msg = wait_for_announcement(proc, "opsimsd")
    except RuntimeError as e:
        raise RuntimeError(f"{e}: {log_path.read_text()}") from e
    return {k: str(msg[k]) for k in ("publish", "control")}
