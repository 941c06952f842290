"""Waiting on a running daemon from a test: its links, and its published stream."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from opsims.client import Control, Subscriber
from opsims.wire import Message


def links_up(ctl: Control, timeout_s: float = 20.0) -> dict[str, Any]:
    """The daemon's status once every link is up."""
    end = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = ctl.status()
        if all(s["state"] == "up" for s in status["links"].values()):
            return status
        assert time.monotonic() < end, status["links"]
        time.sleep(0.1)


def collect(sub: Subscriber, until: Callable[[Message], bool], timeout_s: float) -> list[Message]:
    """Every message up to and including the first for which `until` is true."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = sub.recv(0.2)
        if msg is not None:
            got.append(msg)
            if until(msg):
                return got
    raise AssertionError(f"timed out; last topics {Counter(m.topic for m in got[-50:])}")


def run_over(m: Message) -> bool:
    """The `run` message that ends a run."""
    return m.topic == "run" and m.fields["step"] == -1 and m.fields["state"] != "started"
