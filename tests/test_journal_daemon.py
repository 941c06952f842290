"""The run journal through the daemon (docs/journal.md): real simulator and daemon
processes on loopback. A run is recorded and replays into the live cubes; a corrupted
block is found and skipped; SIGKILL mid-run is recovered at the next start; a full disk
raises the alarm and follows the policy."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import msgpack
import numpy as np
import pytest
from opsims import ConfigError, JournalReader, LinkStreamDecoder
from opsims.client import Control, ControlError, Subscriber
from opsims.daemon.journal import JournalConfig
from opsims.export import read_records
from opsims.replay import Replay, find_run, new_core, replay, run_info
from support.simproc import merge, run_daemon, run_sim, small_raster
from support.stream import collect, links_up, run_over

SIM = merge(
    small_raster(nx=32, ny=16, dwell_ticks=200_000_000, frames_per_slice=4),
    {"sim": {"acceleration": 50.0, "potentiostat": {"sample_period_s": 0.1},
             "specimen": {"total_rate_hz": 20_000.0}}},
)  # fmt: skip
SHORT = {
    "name": "short plate-strip-eis",
    "steps": [
        {"kind": "rest", "duration_s": 5},
        {"kind": "constant_current", "current_a": -4e-8, "duration_s": 60},
        {"kind": "strip", "current_a": 4e-8, "depletion_v": 5.0, "max_duration_s": 300},
        {"kind": "eis", "f_start_hz": 7e6, "f_stop_hz": 100, "points_per_decade": 5},
    ],
}
#: Long enough that a kill always lands inside it.
LONG = {"name": "long plating", "steps": [
    {"kind": "constant_current", "current_a": -4e-8, "duration_s": 100_000}]}  # fmt: skip
WIDE = {"safety": {"ewe_min_v": -15.0, "ewe_max_v": 15.0}}


def external(sim_ports: dict[str, int], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return merge(merge(SIM, WIDE), merge({
        "daemon": {"simulator": "external", "cube_rate_hz": 20.0},
        "links": {"detector": {"port": sim_ports["detector"]},
                  "potentiostat": {"port": sim_ports["potentiostat"]}},
        "sim": {"control_port": sim_ports["control"]},
    }, extra or {}))  # fmt: skip


def wait_closed(run_dir: Path, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        info = run_info(run_dir)
        if info["state"] != "recording":
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"on_backlog": "drop"}, "journal.on_backlog: expected 'stop_run' or 'keep_acquiring'"),
        ({"level": 40}, "journal.level: zstd levels run from -7 to 22, got 40"),
        ({"queue_bytes": 0}, "journal.queue_bytes: must be > 0"),
        ({"flush_interval_s": 0}, "journal.flush_interval_s: must be >= 0.001"),
        ({"colour": "red"}, "journal: unknown key(s) colour"),
    ],
)
def test_bad_journal_settings_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        JournalConfig.from_mapping(table)


def test_a_run_is_recorded_whole_and_replays_into_the_live_cubes(tmp_path: Path) -> None:
    with (
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim.ports)) as daemon,
        Subscriber(daemon.publish) as sub,
        Control(daemon.control) as ctl,
    ):
        time.sleep(0.3)
        links_up(ctl)
        run_id = ctl.start_run(SHORT, operator="tester", reason="journal test")["run_id"]
        messages = collect(sub, run_over, timeout_s=90)
        run_dir = find_run(run_id, tmp_path / "state")
        info = wait_closed(run_dir)
        # Bad who/why is refused like any bad argument, and records nothing.
        with pytest.raises(ControlError) as bad:
            ctl.start_run(SHORT, operator=3)  # type: ignore[arg-type]
        assert bad.value.code == "bad_arguments"
        assert daemon.stop() == 0
    assert info["state"] == "closed" and info["end"]["reason"] == "complete", info
    assert (run_dir / "config.toml").is_file()
    assert json.loads((run_dir / "protocol.json").read_text()) == SHORT

    # The live cubes and counters at the run's end are rebuilt exactly from the journal.
    result = replay(run_dir)
    assert result.live_digest is not None and result.live_digest["counters"]["binned"] > 1000
    assert result.identical, (result.digest, result.live_digest)
    assert result.report["closed"] and not result.report["corrupt"]
    assert not result.report["gaps"] and result.report["torn_tail"] is None

    # Every sample published during the run is in the journal, as published.
    ec = np.concatenate([m.arrays["samples"] for m in messages
                         if m.topic == "ec" and m.fields["run_id"] == run_id])  # fmt: skip
    kinds: dict[str, list[bytes]] = {}
    for kind, _seq, _ns, payload in JournalReader(run_dir / "journal").blocks():
        kinds.setdefault(kind, []).append(payload)
    dtype = [("host_ns", "<i8"), ("arrival_ns", "<i8"), ("tick", "<u8"), ("ewe_v", "<f8"),
             ("current_a", "<f8"), ("mode", "u1"), ("flags", "u1")]  # fmt: skip
    journal_samples = np.frombuffer(b"".join(kinds["potentiostat"]), dtype=dtype)
    # The daemon publishes what was queued before the run untagged, just before recording
    # starts; a sample arriving in between can still carry the run's tag.
    early = ec["tick"] < journal_samples["tick"][0]
    assert early.sum() <= 1, early.sum()
    ec = ec[~early]
    at = np.searchsorted(journal_samples["tick"], ec["tick"])
    np.testing.assert_array_equal(journal_samples["tick"][at], ec["tick"])
    np.testing.assert_array_equal(journal_samples["ewe_v"][at], ec["ewe_v"])
    np.testing.assert_array_equal(journal_samples["host_ns"][at], ec["host_ns"])
    # Step transitions, control actions with who and why, clocks, impedance points.
    steps = [msgpack.unpackb(p) for p in kinds["step"]]
    published = [m.fields for m in messages if m.topic == "run" and m.fields["run_id"] == run_id]
    assert [(s["step"], s["state"]) for s in steps] == [(p["step"], p["state"]) for p in published]
    control = [msgpack.unpackb(p) for p in kinds["control"]]
    assert control[0] == {"command": "start_run", "operator": "tester",
                          "reason": "journal test", "protocol": SHORT["name"]}  # fmt: skip
    assert kinds["clock"] and "detector" in msgpack.unpackb(kinds["clock"][-1])
    notes = [msgpack.unpackb(p) for p in kinds["note"]]
    eis = [n for n in notes if n["type"] == "eis_point"]
    assert len(eis) == sum(1 for m in messages if m.topic == "eis")

    # `opsims replay` says the same, as a process.
    out = subprocess.run([sys.executable, "-m", "opsims.cli", "replay", run_id, "--state-dir",
                          str(tmp_path / "state"), "--json", "--out", str(tmp_path / "c.npz")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["identical"] is True and summary["reads"] == result.reads
    with np.load(tmp_path / "c.npz") as z:
        np.testing.assert_array_equal(z["Na+"], result.core.cube("Na+"))

    _check_exports(tmp_path, run_id, run_dir, result)

    # A block damaged in the middle: found by its checksum, reported, the rest still read.
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    segment = sorted((damaged / "journal").glob("segment-*.ojs"))[0]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    broken = replay(damaged)
    assert len(broken.report["corrupt"]) == 1, broken.report
    assert broken.report["closed"]  # the blocks after it were read
    assert broken.identical is False
    assert 0 < broken.reads < result.reads
    out = subprocess.run([sys.executable, "-m", "opsims.cli", "replay", str(damaged)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1 and "DIFFERENT" in out.stdout and "damage" in out.stdout


def read_mpt_table(path: Path) -> dict[str, np.ndarray]:
    """An EC-Lab text export's table, the way EC-Lab's readers find it: line 2 says how
    many header lines there are, the last of them names the columns."""
    lines = path.read_text(encoding="cp1252").splitlines()
    n = int(lines[1].split(":")[1])
    names = lines[n - 1].split("\t")
    rows = np.array([[float(x) for x in line.split("\t")] for line in lines[n:]])
    return {name: rows[:, i] for i, name in enumerate(names)}


def _check_exports(tmp_path: Path, run_id: str, run_dir: Path, result: Replay) -> None:
    """What `opsims export` writes, read back with h5py (and the EC-Lab reader), is the
    journal's content."""
    nxs, csv = tmp_path / "run.nxs", tmp_path / "run.mpt"
    for to in (nxs, csv):
        out = subprocess.run([sys.executable, "-m", "opsims.cli", "export", run_id, "--to",
                              str(to), "--state-dir", str(tmp_path / "state"), "--json"],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
    records = read_records(run_dir)
    # Every event and marker of the journal's reads, decoded independently of the export.
    decoder = LinkStreamDecoder()
    decoded = [
        decoder.push(frame) for _s, _ns, frame in JournalReader(run_dir / "journal").frames()
    ]
    kind = np.concatenate([d["kind"] for d in decoded])
    ticks = np.concatenate([d["tick"] for d in decoded])
    channels = np.concatenate([d["channel"] for d in decoded])
    with h5py.File(nxs, "r") as f:
        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry" and entry["run_id"][()].decode() == run_id
        ev = entry["events"]
        assert ev.attrs["NX_class"] == "NXevent_data"
        np.testing.assert_array_equal(ev["event_time_offset"][:], ticks[kind == 0])
        np.testing.assert_array_equal(ev["event_id"][:], channels[kind == 0])
        assert len(ev["event_index"]) == len(ev["event_time_zero"]) > 0
        assert np.all(np.diff(ev["event_index"][:]) >= 0)
        np.testing.assert_array_equal(entry["markers/tick"][:], ticks[kind == 1])
        for name, cube in result.cubes().items():
            np.testing.assert_array_equal(entry["cubes"][name][:], cube)
        np.testing.assert_array_equal(entry["cubes/depth_profile"][:], result.core.depth_profile())
        ec = entry["electrochemistry"]
        np.testing.assert_array_equal(ec["ewe_v"][:], records.samples["ewe_v"])
        np.testing.assert_array_equal(ec["tick"][:], records.samples["tick"])
        eis = entry["impedance"]
        assert len(eis["freq_hz"]) == len(records.eis) > 0
        np.testing.assert_array_equal(eis["z_re_ohm"][:], [p["z_re_ohm"] for p in records.eis])
        steps = [json.loads(x) for x in entry["logs/step"][:]]
        assert [s["state"] for s in steps] == [s["state"] for s in records.logs["step"]]
        assert "[detector]" in entry["configuration/data"][()].decode()
    # The cycle graph reads back through the EC-Lab text reader.
    table = read_mpt_table(csv)
    assert list(table) == ["time/s", "Ewe/V", "I/mA", "mode", "step"]
    np.testing.assert_allclose(table["Ewe/V"], records.samples["ewe_v"], rtol=1e-8)
    np.testing.assert_allclose(table["I/mA"], records.samples["current_a"] * 1e3, rtol=1e-8,
                               atol=1e-15)  # fmt: skip
    assert set(table["step"]) >= {0.0, 1.0, 2.0}  # rest, plating, stripping


def test_sigkill_mid_run_is_recovered_at_the_next_start(tmp_path: Path) -> None:
    rng = random.Random(7)
    with run_sim(tmp_path / "sim", SIM) as sim:
        for _ in range(3):
            with (
                run_daemon(tmp_path, external(sim.ports)) as daemon,
                Control(daemon.control) as ctl,
            ):
                # The run killed before was recovered by _check_recovered's daemon.
                assert ctl.status()["journal"]["recovered_at_start"] == []
                links_up(ctl)
                run_id = ctl.start_run(LONG)["run_id"]
                time.sleep(rng.uniform(0.5, 3.0))
                snap = ctl.snapshot("cubes")
                assert snap.fields["run_id"] == run_id
                # Well past a flush interval: the snapshot's reads are durable.
                time.sleep(0.5)
                daemon.proc.send_signal(signal.SIGKILL)
                daemon.proc.wait(timeout=10)
            run_dir = find_run(run_id, tmp_path / "state")
            assert run_info(run_dir)["state"] == "recording"  # left open by the kill
            _check_recovered(tmp_path, run_dir, snap.fields, snap.arrays)


def _check_recovered(
    tmp_path: Path, run_dir: Path, fields: dict[str, Any], cubes: dict[str, Any]
) -> None:
    # The next start recovers it (the daemon's first act): started here without a run.
    with run_daemon(tmp_path, external({"detector": 1, "potentiostat": 2, "control": 3})) as d:
        with Control(d.control) as ctl:
            assert run_dir.name in ctl.status()["journal"]["recovered_at_start"]
        assert d.stop() == 0
    info = run_info(run_dir)
    assert info["state"] == "recovered" and info["recovery"]["blocks"] > 0, info
    report = JournalReader(run_dir / "journal").report()
    assert report["recovered"] and not report["corrupt"] and not report["gaps"]
    assert report["torn_tail"] is None  # cut by the recovery
    # Replayed read by read, the journal passes through the snapshot's state exactly.
    core = new_core(info, run_dir)
    want = fields["counters"]
    assert want["binned"] > 0, want
    for _seq, host_ns, frame in JournalReader(run_dir / "journal").frames():
        core.feed_link(frame, host_ns)
        if core.counters()["records"] >= want["records"]:
            break
    assert core.counters() == want
    for name, cube in cubes.items():
        np.testing.assert_array_equal(core.cube(name), cube)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
@pytest.mark.parametrize("policy", ["stop_run", "keep_acquiring"])
def test_a_full_disk_raises_the_alarm_and_follows_the_policy(tmp_path: Path, policy: str) -> None:
    journal = {"journal": {"on_backlog": policy, "queue_bytes": 400_000}}
    # About 2 MB/s go to the journal: the 1 MiB tmpfs is full within a second or two.
    with (
        tmpfs(tmp_path / "state", "1m"),
        run_sim(tmp_path / "sim", SIM) as sim,
        run_daemon(tmp_path, external(sim.ports, journal)) as daemon,
        Subscriber(daemon.publish, ("journal", "run")) as sub,
        Control(daemon.control) as ctl,
    ):
        time.sleep(0.3)
        links_up(ctl)
        run_id = ctl.start_run(LONG)["run_id"]
        alarm = collect(sub, lambda m: m.topic == "journal" and m.fields["event"] == "alarm", 60)
        problem = alarm[-1].fields["problem"]
        assert alarm[-1].fields["run_id"] == run_id and problem, alarm[-1].fields
        if policy == "stop_run":
            end = collect(sub, run_over, 30)[-1].fields
            assert end["reason"] == "journal" and "journal" in end["detail"], end
        else:
            # Acquisition goes on; past the memory bound blocks are refused and counted.
            deadline = time.monotonic() + 60
            while ctl.status()["journal"]["refused"] == 0:
                assert time.monotonic() < deadline, ctl.status()["journal"]
                time.sleep(0.2)
            assert ctl.status()["run"]["state"] == "running"
            ctl.stop_run(operator="tester", reason="disk full")
        # The daemon is still there and says what happened.
        status = ctl.status()
        assert status["links"]["detector"]["state"] == "up"
        assert status["journal"]["alarm"] is not None or policy == "stop_run"
        assert daemon.stop() == 0
