"""A whole accelerated operando experiment through both links of a real `opsims-sim`:
30 simulated minutes of plating at the critical current density, then stripping to
depletion, while the core bins the raster. The cell and the specimen must show what the
paper shows (Fig. 1b, Fig. 2a(i), Fig. 2b(i))."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from opsims import DetectorConfig, EventCore
from opsims.link.potentiostat import ControlMode, PotentiostatClient
from support.simproc import default_document, merge, run_sim, small_raster

ACCELERATION = 600.0
PLATE_A = -40e-9  # 0.04 µA on the 1 µm² probe: the critical current density
OVERRIDE = merge(
    small_raster(nx=32, ny=32, dwell_ticks=200_000_000, frames_per_slice=100),
    {
        "sim": {
            "acceleration": ACCELERATION,
            "potentiostat": {"sample_period_s": 1.0},
            "specimen": {"fov_um": 60.0, "total_rate_hz": 3000.0},
        }
    },
)


def receive(sock: socket.socket, core: EventCore, stop: threading.Event) -> None:
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not data:
            return
        core.feed_link(data, time.time_ns())


def run_for(client: PotentiostatClient, sim_seconds: float) -> None:
    """Keep the link fed (heartbeats) while `sim_seconds` of cell time pass."""
    end = time.monotonic() + sim_seconds / ACCELERATION
    while time.monotonic() < end:
        client.poll(min(0.2, max(0.0, end - time.monotonic())))
        assert client.heartbeat().ok


def test_plate_then_strip_to_depletion(tmp_path: Path) -> None:
    doc = merge(default_document(), OVERRIDE)
    core = DetectorConfig.from_mapping(doc["detector"]).build()
    stop = threading.Event()
    with (
        run_sim(tmp_path, OVERRIDE) as sim,
        socket.create_connection(("127.0.0.1", sim.ports["detector"])) as det,
        PotentiostatClient("127.0.0.1", sim.ports["potentiostat"]) as pot,
    ):
        rx = threading.Thread(target=receive, args=(det, core, stop))
        rx.start()
        try:
            run_for(pot, 60)  # open circuit first: the unsodiated reference
            reference_slices = core.n_slices
            assert pot.set_current(PLATE_A).ok
            run_for(pot, 30 * 60)
            plating = pot.take_samples()
            assert pot.set_current(-PLATE_A).ok
            run_for(pot, 90)
            stripping = pot.take_samples()
            assert pot.open_circuit().ok
            run_for(pot, 5)
        finally:
            stop.set()
            rx.join()
        truth = sim.truth()
    tick_s = pot.hello.tick_fs * 1e-15

    galv = plating[plating["mode"] == ControlMode.GALVANOSTATIC]
    assert len(galv) > 1500  # one sample per simulated second
    ewe = galv["ewe_v"][120:]  # after the first two minutes of nucleation
    # Fig. 2a(i): plating at the CCD oscillates between 40 and 60 mV (here Ewe < 0: EC-Lab sign).
    assert -0.066 < ewe.min() < -0.055 and -0.045 < ewe.max() < -0.034
    assert not truth["potentiostat"]["cell"]["failed"]

    # Fig. 2b(i): stripping empties the island in ~40 s, then the voltage spikes past 10 V.
    strip = stripping[stripping["mode"] == ControlMode.GALVANOSTATIC]
    over = np.flatnonzero(strip["ewe_v"] > 10.0)
    assert len(over) > 0
    t_spike = (int(strip["tick"][over[0]]) - int(strip["tick"][0])) % (1 << 32) * tick_s
    assert 30.0 < t_spike < 55.0, t_spike

    # Fig. 1b: a Na island under the probe, in the Na⁺ map of the plated slices only.
    na = core.ion_map("Na+", reference_slices + 1, core.n_slices - 1).astype(np.float64)
    before = core.ion_map("Na+", 0, reference_slices).astype(np.float64)
    centre, edge = na[13:19, 13:19].mean(), np.r_[na[:4].ravel(), na[-4:].ravel()].mean()
    assert centre > 2 * edge > 0  # ~3x here: the island is enriched near the surface only
    b_centre, b_edge = (
        before[13:19, 13:19].mean(),
        np.r_[before[:4].ravel(), before[-4:].ravel()].mean(),
    )
    assert b_centre == pytest.approx(b_edge, rel=0.5)  # no island before plating
    c = core.counters()
    assert c["events"] == c["binned"] + c["rejected_total"] + c["pending"]
    assert c["link_frames_lost"] == 0
