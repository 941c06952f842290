"""Interlock latency (issue 5): from an out-of-limit sample leaving a scripted
potentiostat (another process, tests/support/fakepot.py) to its OPEN_CIRCUIT arriving
there, over many trips (each confirmed by an open-circuit sample and reset), with and
without a Python thread competing for the GIL; and from the sample to a `safety`
subscriber of a real opsimsd receiving the trip. Both ends stamp CLOCK_MONOTONIC, so the
figures include loopback both ways: an upper bound of the daemon's own share.

    pytest benchmarks/test_interlock_latency.py -s -p no:cacheprovider
    OPSIMS_BENCH_TRIPS=1000 OPSIMS_BENCH_GIL_TRIPS=1000 OPSIMS_BENCH_SUB_TRIPS=100 ...  # quicker

Targets: p99 <= 1 ms in-process, subscriber p99 <= 10 ms.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
from opsims import Acquisition
from opsims.client import Control, Subscriber
from support.simproc import default_document, merge, run_daemon
from test_interlock import FakePot, armed, fakepot

TRIPS = int(os.environ.get("OPSIMS_BENCH_TRIPS", "10000"))
GIL_TRIPS = int(os.environ.get("OPSIMS_BENCH_GIL_TRIPS", "10000"))
SUB_TRIPS = int(os.environ.get("OPSIMS_BENCH_SUB_TRIPS", "1000"))


def report(name: str, ns: list[int]) -> dict[str, float]:
    a = np.asarray(ns, dtype=np.float64) / 1e6
    out = {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
           "max": float(a.max())}  # fmt: skip
    print(f"{name}: {len(a)} trips, p50 {out['p50']:.3f} ms, p99 {out['p99']:.3f} ms, "
          f"max {out['max']:.3f} ms")  # fmt: skip
    return out


def trips(acq: Acquisition, pot: FakePot, n: int) -> list[int]:
    out = []
    for _ in range(n):
        pot.sample(12.0)
        sent = pot.sent()
        out.append(pot.command("OPEN_CIRCUIT") - sent)
        pot.sample(0.0, 0.0, 0)  # open circuit shown: the reset is allowed
        pot.sent()
        while True:
            st = acq.interlock_state()
            if st is not None and st["open_circuit_confirmed"]:
                break
        acq.reset_interlock("bench", "next trip")
    return out


def _busy(stop: threading.Event) -> None:
    while not stop.is_set():  # pure Python: takes the GIL for every switch interval
        pass


def test_sample_to_open_circuit() -> None:
    with fakepot() as pot, armed(pot) as acq:
        quiet = report("sample -> OPEN_CIRCUIT", trips(acq, pot, TRIPS))
        stop = threading.Event()
        hog = threading.Thread(target=_busy, args=(stop,))
        hog.start()
        try:
            busy = report("sample -> OPEN_CIRCUIT, Python thread busy",
                          trips(acq, pot, GIL_TRIPS))  # fmt: skip
        finally:
            stop.set()
            hog.join()
    print(f"ratio busy/quiet p99: {busy['p99'] / quiet['p99']:.2f}")


def test_sample_to_safety_subscriber(tmp_path: Path) -> None:
    with fakepot() as pot:
        doc = merge(default_document(), {
            "daemon": {"simulator": "none", "status_interval_s": 60.0},
            "links": {"potentiostat": {"port": pot.port}, "detector": {"port": 9}},
        })  # fmt: skip
        del doc["sim"]
        got: list[int] = []
        with (
            run_daemon(tmp_path, doc) as daemon,
            Subscriber(daemon.publish, ["safety"]) as sub,
            Control(daemon.control) as ctl,
        ):
            time.sleep(1.0)
            for _ in range(SUB_TRIPS):
                pot.sample(12.0)
                sent = pot.sent()
                while (m := sub.recv(5)) is None or m.fields["state"] != "tripped":
                    assert m is not None
                got.append(time.monotonic_ns() - sent)
                pot.sample(0.0, 0.0, 0)
                pot.sent()
                while True:
                    try:
                        ctl.reset_interlock(operator="bench", reason="next")
                        break
                    except Exception:
                        time.sleep(0.001)
                while (m := sub.recv(5)) is None or m.fields["state"] != "armed":
                    assert m is not None
            assert daemon.stop() == 0
    report("sample -> safety subscriber", got)
