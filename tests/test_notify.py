"""The systemd notify protocol against a real datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from opsims.daemon.notify import Notifier


def test_messages_reach_the_notify_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
        assert n.enabled and n.watchdog_interval_s == 5.0
        assert n.ready("links up")
        assert n.watchdog()
        assert n.stopping("open circuit, flushing")
        got = [systemd.recv(4096).decode() for _ in range(3)]
        n.close()
    assert got == [
        "READY=1\nSTATUS=links up",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=open circuit, flushing",
    ]


def test_abstract_socket_names_start_with_at() -> None:
    name = f"opsims-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.status("acquiring")
        assert systemd.recv(4096) == b"STATUS=acquiring"
        n.close()


def test_outside_systemd_everything_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval_s is None
    assert not n.ready() and not n.watchdog()


def test_a_watchdog_for_another_process_is_not_ours() -> None:
    n = Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval_s is None


def test_a_vanished_systemd_is_counted_not_fatal(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not n.watchdog()
    assert n.errors == 1
    n.close()
