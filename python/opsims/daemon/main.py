"""``opsimsd``: the acquisition daemon (docs/daemon.md).

The native core owns the instrument links in its own threads; this loop waits on it
without the GIL, publishes what it produced, drives the run protocol, serves control and
tells systemd it is alive. SIGTERM or SIGINT: open circuit first, end the run, stop the
links, exit 0.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import zmq

from opsims._native import (
    Acquisition,
    CommandRefused,
    ConfigError,
    InterlockError,
    JournalError,
)
from opsims.announce import announce, wait_for_announcement
from opsims.daemon.config import DaemonConfig
from opsims.daemon.journal import RunRecord, new_run_id, recover_runs
from opsims.daemon.notify import Notifier
from opsims.daemon.protocol import Runner, RunProtocol, RunState
from opsims.daemon.publisher import (
    Handler,
    Publisher,
    cube_snapshot,
    handle_request,
    snapshot_handler,
)
from opsims.daemon.safety import SafetyRecord, sample_array, topic_fields
from opsims.daemon.security import Gate, check_classified, insecure_bindings
from opsims.wire import EC_SAMPLE_DTYPE, ControlError

log = logging.getLogger("opsimsd")

#: The longest the loop waits on the core: bounds control latency and signal handling.
WAIT_S = 0.05
#: glibc's ``mallopt`` parameter, and the threshold it is pinned to (glibc's default).
M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES = -3, 128 * 1024


class Daemon:
    def __init__(self, config: DaemonConfig, overrides: list[str]) -> None:
        self.config = config
        self.overrides = overrides
        self.notifier = Notifier()
        self.stop_requested = False
        self.started = time.monotonic()
        self.sim: subprocess.Popen[str] | None = None
        self.sim_control: tuple[str, int] | None = None
        self.links: dict[str, dict[str, Any]] = {}
        self.last_counters: dict[str, int] = {}
        self.last_by_species: dict[str, int] = {}
        self.last_events_ns = time.time_ns()
        # For the status rates and lags: the counters at the previous status, and the
        # host time of the newest potentiostat sample published.
        self._status_prev: tuple[float, dict[str, int]] = (time.monotonic(), {})
        self._newest_sample_ns: int | None = None
        self.eis_points: list[dict[str, Any]] = []
        # The (rebins, epoch) of the last live profile: a change of either sends the
        # whole profile again.
        self._profile_binning: tuple[int, int] | None = None
        self._cube_rebins = 0
        # The native interlock's last state read, and what of it was already handled.
        self.safety: dict[str, Any] = {"state": "armed"}
        self.safety_seen: tuple[int, Any, Any] | None = None
        self.runs_dir = config.state_dir / "runs"
        # The run being recorded, and those still closing (joined at shutdown).
        self.record: RunRecord | None = None
        self.closing: list[RunRecord] = []
        self.journal_alarm: str | None = None
        # The client (its name, from CURVE) whose control request is being handled.
        self._client: str | None = None

    # --- life cycle -------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._open()
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _open(self) -> None:
        c = self.config
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        # First: the ZAP handler is bound before any socket could take a connection.
        self.gate = Gate(c.security, ctx, self._on_security)
        for key, problem in insecure_bindings(c.security, c.publish, c.control):
            log.warning("security: daemon.%s: %s; allowed by security.allow_insecure_bind",
                        key, problem)  # fmt: skip
        # Runs a crash left open are closed first: the torn tail cut, what was kept noted.
        self.recovered = recover_runs(self.runs_dir)
        det_addr = (c.detector_link.host, c.detector_link.port)
        pot_addr = (c.potentiostat_link.host, c.potentiostat_link.port)
        if c.simulator == "embedded":
            ports = self._start_simulator()
            det_addr = ("127.0.0.1", ports["detector"])
            pot_addr = ("127.0.0.1", ports["potentiostat"])
            self.sim_control = ("127.0.0.1", ports["control"])
        elif c.simulator == "external" and c.sim is not None:
            self.sim_control = (c.sim.host, c.sim.control_port)
        self.safety_record = SafetyRecord(c.state_dir)
        latched = self.safety_record.latched()
        # A trip from before the restart holds, restored before the links start: before
        # anything can command current, and before a sample can trip it afresh.
        restore = None
        if latched is not None:
            restore = (latched["reason"], latched["detail"], int(latched["trip_host_ns"]),
                       latched.get("sample"))  # fmt: skip
            log.error("safety: trip latched before the restart (%s): %s",
                      latched["reason"], latched["detail"])  # fmt: skip
        self.acq = Acquisition(
            detector={"host": det_addr[0], "port": det_addr[1], **c.detector.engine_args()},
            potentiostat={
                "host": pot_addr[0],
                "port": pot_addr[1],
                "clock_window_s": c.potentiostat_clock_window_s,
            },
            clock_time_scale=c.clock_time_scale,
            reconnect_initial_s=c.reconnect_initial_s,
            reconnect_max_s=c.reconnect_max_s,
            heartbeat_s=c.heartbeat_s,
            liveness_s=c.liveness_s,
            interlock=c.safety.native(),
            latched=restore,
        )
        self.pub = Publisher(
            c.publish,
            source=f"{c.source}@{socket.gethostname()}",
            sndhwm=c.sndhwm,
            context=ctx,
            species=self.acq.species,
            secure=lambda sock: self.gate.protect(sock, "publish"),
        )
        self.control = ctx.socket(zmq.REP)
        self.control.setsockopt(zmq.LINGER, 0)
        self.gate.protect(self.control, "control")
        self.control.bind(c.control)
        if c.security.curve:
            log.info("security: CURVE on control (%d clients)%s",
                     len(c.security.control_clients),
                     " and on publish" if c.security.publish_curve else "")  # fmt: skip
        # One line for scripts and tests, as opsims-sim does: where to subscribe and call.
        endpoints = {
            "publish": self.pub.endpoint,
            "control": self.control.getsockopt_string(zmq.LAST_ENDPOINT),
        }
        announce(**endpoints)
        for run in self.recovered:
            self.pub.publish("journal", {"event": "recovered", **_summary(run)})
        self.runner = Runner(
            self,
            self._on_run,
            self._new_region if self.sim_control else None,
            self._beam if self.sim_control else None,
        )
        self.handlers: dict[str, Handler] = {
            "status": self.status,
            "start_run": self.start_run,
            "stop_run": self.stop_run,
            "abort": self.abort,
            "reset_interlock": self.reset_interlock,
            "snapshot": snapshot_handler(
                self.pub, {"cubes": self._cubes, "profile": self._profile}
            ),
        }
        check_classified(self.handlers)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True

    def _loop(self) -> None:
        c = self.config
        ready = False
        ready_deadline = time.monotonic() + c.ready_timeout_s
        self._check_safety(force=True)  # the state at start, restored trip or armed
        next_status = next_cubes = next_events = next_watchdog = time.monotonic()
        while not self.stop_requested:
            self.acq.kick()  # the potentiostat hears heartbeats only while this loop turns
            self.acq.wait(WAIT_S)
            self._drain()
            now = time.monotonic()
            if not ready and all(s == "up" for s in self.acq.link_states().values()):
                ready = True
                self.notifier.ready("links up, acquiring")
                log.info("links up: ready")
            elif not ready and now > ready_deadline:
                ready_deadline = now + c.ready_timeout_s
                log.warning("links not up after %.0f s: %s", c.ready_timeout_s, self.links)
            if now >= next_cubes:
                self._publish_cubes()
                next_cubes = now + 1.0 / c.cube_rate_hz
            if now >= next_events:
                self._publish_events()
                next_events = now + 1.0 / c.events_rate_hz
            if now >= next_status:
                if self.safety["state"] != "armed":
                    self._publish_safety(self.safety)
                self._check_journal()
                self.pub.publish("status", self.status())
                next_status = now + c.status_interval_s
            self._serve_control()
            interval = self.notifier.watchdog_interval_s
            if interval is not None and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + interval

    def _shutdown(self) -> None:
        self.notifier.stopping("opening the circuit")
        log.info("shutting down: open circuit first")
        try:
            if getattr(self, "runner", None) is not None:
                self.runner.abort("daemon shutdown", reason="shutdown")
            if getattr(self, "acq", None) is not None:
                confirmed = self.acq.stop(open_circuit=True)
                log.info("open circuit %s", "confirmed" if confirmed else "NOT confirmed")
                self._drain()
                self._publish_events()
                self.pub.publish("status", {**self.status(), "stopping": True})
            for record in self.closing:
                record.close_in_background({}).join()
        finally:
            # The gate last: the handshakes of its sockets need it while they are open.
            for closable in ("pub", "control", "gate"):
                if getattr(self, closable, None) is not None:
                    getattr(self, closable).close()
            self._stop_simulator()
            self.notifier.close()

    def _stop_simulator(self) -> None:
        if self.sim is None:
            return
        self.sim.send_signal(signal.SIGTERM)
        try:
            self.sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.sim.kill()
            self.sim.wait()
        if self.sim.stdout is not None:
            self.sim.stdout.close()

    def _start_simulator(self) -> dict[str, int]:
        cmd = [
            sys.executable,
            "-m",
            "opsims.sim.cli",
            "--config",
            str(self.config.path),
            "--any-port",
        ]
        for item in self.overrides:
            cmd += ["--set", item]
        # Its own session: a Ctrl-C or a group signal reaches the daemon only, which opens
        # the circuit through the simulator before stopping it.
        self.sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
        msg = wait_for_announcement(self.sim, "opsims-sim", timeout_s=30)
        log.info("simulator up: %s", msg)
        return {k: int(msg[k]) for k in ("detector", "potentiostat", "control")}

    # --- data out ---------------------------------------------------------------------

    def _drain(self) -> None:
        self._check_safety()  # first: a trip is published before anything else
        cols = self.acq.take_samples()
        n = len(cols["tick"])
        if n:
            self._newest_sample_ns = int(cols["host_ns"][-1])
            samples = np.empty(n, EC_SAMPLE_DTYPE)
            for name in EC_SAMPLE_DTYPE.names or ():
                samples[name] = cols[name]
            run = self.runner
            self.pub.publish(
                "ec",
                {
                    "run_id": run.run_id if run.state == RunState.RUNNING else None,
                    "step": run.index if run.state == RunState.RUNNING else None,
                    "time_scale": self.config.clock_time_scale,
                },
                {"samples": samples},
            )
            hello = self.acq.hello()
            if hello is not None:
                tick_s = hello["tick_fs"] * 1e-15
                run.on_samples(cols["tick"] * tick_s, cols["ewe_v"], cols["current_a"])
        for event in self.acq.take_events():
            kind = event.pop("kind")
            event["event_ns"] = event.pop("host_ns")  # `host_ns` is the header's: publish time
            if kind == "link":
                last_error = self.links.get(event["link"], {}).get("last_error")
                if event["state"] == "down" and event.get("reason") != "stopped":
                    last_error = event.get("reason")
                self.links[event["link"]] = {
                    **event,
                    "since_ns": event["event_ns"],
                    "last_error": last_error,
                }
                self.pub.publish("link", event)
                log.info("%s link %s: %s", event["link"], event["state"], event.get("reason"))
            elif kind == "eis_point":
                self.pub.publish("eis", event)
                self._record("note", {"type": "eis_point", **event})
            elif kind == "safety":
                pass  # read whole from the interlock by _check_safety
            elif kind == "instrument_event":
                self.pub.publish("instrument", event)
                self._record("note", {"type": "instrument_event", **event})
                if event["name"] in ("eis_done", "eis_aborted"):
                    self.runner.on_eis_done(aborted=event["name"] == "eis_aborted")
                elif event["name"] == "limit_reached":
                    self._voltage_stop(event["tick"], f"the instrument: {event['message']}")
            elif kind == "step_stop":
                self._record("note", {"type": "step_stop", **event})
                detail = f"|Ewe| {abs(event['ewe_v']):.3g} V >= {event['limit_v']:g} V (step stop)"
                self._voltage_stop(event["tick"], detail)

    def _voltage_stop(self, tick: int, detail: str) -> None:
        hello = self.acq.hello()
        if hello is not None:
            self.runner.on_voltage_stop(tick * hello["tick_fs"] * 1e-15, detail)

    def _publish_cubes(self) -> None:
        # The detector thread may rebin between any two of these reads. The slices and
        # the profile are each read with the binning they are of; slices marked in an
        # older binning are not sent, and a rebin seen here late is handled next call.
        first = self.acq.take_dirty()
        counters = self.acq.counters()
        rebins = counters.get("rebins", 0)
        n = self.acq.n_slices
        if first is not None and rebins != self._cube_rebins:
            # Every slice changed its meaning, so subscribers take a snapshot
            # (docs/publishing.md): of the whole cube only the newest slice goes out, to
            # tell them. Republishing it all would send the cube's size again to every
            # subscriber, only to be dropped.
            self._cube_rebins = rebins
            self.pub.drop_dirty()
            first = max(n - 1, 0)
        if first is not None:
            for s in range(len(self.acq.species)):
                for z in range(first, n):
                    self.pub.mark_dirty(s, z, rebins)
        if not n:
            return
        self.pub.flush_cubes(self.acq.cube_slices, max_messages=4 * len(self.acq.species))
        if first is not None:
            fields, arrays = self._live_profile(first)
            # Read before the slices and this profile: every record of these lines is in
            # them, so a client can time the cube update (benchmarks/daemon_throughput.py).
            fields["lines_binned"] = counters.get("lines_good", 0) + counters.get("lines_bad", 0)
            self.pub.publish("profile", fields, arrays)

    def _publish_events(self) -> None:
        totals = self.acq.counters()
        by_species = self.acq.binned_by_species() if "events" in totals else {}
        now = time.time_ns()
        deltas = {k: v - self.last_counters.get(k, 0) for k, v in totals.items()}
        dt = max(1e-9, (now - self.last_events_ns) * 1e-9)
        detectors = {}
        for p in self.config.detector.polarities:
            binned = sum(by_species.get(s, 0) for s in p.species)
            before = sum(self.last_by_species.get(s, 0) for s in p.species)
            detectors[p.name] = {"binned": binned, "binned_rate_hz": (binned - before) / dt}
        self.pub.publish(
            "events",
            {
                "t0_ns": self.last_events_ns,
                "t1_ns": now,
                "totals": totals,
                "deltas": deltas,
                "rates": {"events": deltas.get("events", 0) / dt},
                "binned_by_species": by_species,
                "detectors": detectors,
            },
        )
        self.last_counters, self.last_events_ns = totals, now
        self.last_by_species = by_species

    def _cubes(self) -> tuple[dict[str, Any], dict[str, Any]]:
        # One lock: the same slices for all species, and the counters that go with them.
        cubes, fps, n, rebins, counters = self.acq.cubes()
        fields, arrays = cube_snapshot(
            cubes, frames_per_slice=fps, n_slices=n, rebins=rebins, epoch=self.pub.cube_epoch
        )
        run = self.runner
        fields["counters"] = counters
        fields["run_id"] = run.run_id if self.record is not None else None
        return fields, arrays

    def _profile(self, z0: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
        rows, frames_per_slice, n, rebins = self.acq.profile_rows(z0)
        fields = {
            "species": self.acq.species,
            "frames_per_slice": frames_per_slice,
            "n_slices": n,
            "rebins": rebins,
            "epoch": self.pub.cube_epoch,
            "z0": min(z0, n),
        }
        return fields, {"profile": rows}

    def _live_profile(self, first: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The rows from ``first`` (the first slice changed since the last message) on;
        the whole profile only when every row changed (a rebin, a new run's cubes). A
        message's size follows what changed, not how deep the run is, and so does the
        memory of the queue behind a slow subscriber. A subscriber that joins or loses
        its place takes a snapshot (docs/publishing.md)."""
        fields, arrays = self._profile(first)
        binning = (fields["rebins"], fields["epoch"])
        if binning != self._profile_binning:
            if fields["z0"]:
                fields, arrays = self._profile(0)
            self._profile_binning = (fields["rebins"], fields["epoch"])
        return fields, arrays

    # --- control ----------------------------------------------------------------------

    def _serve_control(self) -> None:
        self.gate.serve()  # handshakes waiting for a verdict
        while self.control.poll(0, zmq.POLLIN):
            frames = self.control.recv_multipart(copy=False)
            self._client = self.gate.client_of(frames[0])
            try:
                reply = handle_request([f.bytes for f in frames], self.handlers, self._authorize)
            finally:
                self._client = None
            self.control.send_multipart(reply, copy=False)

    def _by_client(self) -> dict[str, str]:
        """Who sent the command being handled, for its records: the client's name from
        its CURVE key (nothing without keys)."""
        return {"client": self._client} if self._client is not None else {}

    def _authorize(self, cmd: str) -> None:
        self.gate.authorize(self._client, cmd)

    def _on_security(self, fields: dict[str, Any]) -> None:
        """A denied handshake or a refused command: logged, published, recorded."""
        held = fields.get("suppressed", 0)
        more = f" (and {held} more like it held back)" if held else ""
        log.warning("security: %s%s", fields["detail"], more)
        self.pub.publish("security", fields)
        self._record("control", fields)

    def status(self) -> dict[str, Any]:
        counters = self.acq.counters()
        run = self.runner
        now = time.monotonic()
        t0, before = self._status_prev
        self._status_prev = (now, counters)
        dt = max(now - t0, 1e-9)
        rates = {
            name: (counters.get(key, 0) - before.get(key, 0)) / dt
            for name, key in (("events", "events"), ("binned", "binned"),
                              ("samples", "samples"), ("bytes_detector", "detector_bytes"))
        }  # fmt: skip
        newest = self._newest_sample_ns
        return {
            "uptime_s": now - self.started,
            "rates": rates,
            "lags_ns": {"potentiostat": time.time_ns() - newest if newest else None},
            "links": {
                name: {"state": state, **_link_detail(name, self.links.get(name), counters)}
                for name, state in self.acq.link_states().items()
            },
            "drops": {
                k: counters.get(k, 0)
                for k in (
                    "link_frames_lost",
                    "link_frames_corrupt",
                    "rejected_total",
                    "samples_dropped",
                    "events_dropped",
                )
            },
            "counters": counters,
            "clocks": self.acq.clock_states(),
            "memory": {
                "rss_bytes": _rss_bytes(),
                "cube_budget_bytes": self.config.detector.memory_budget_bytes,
            },
            "publisher": self.pub.stats(),
            "security": self.gate.status(),
            "safety_state": self.safety["state"],
            "safety_record_failures": self.safety_record.write_failures,
            "journal": {
                "recording": self.record.status() if self.record is not None else None,
                "alarm": self.journal_alarm,
                "recovered_at_start": [r["run_id"] for r in self.recovered],
                "refused": counters.get("journal_refused", 0),
            },
            "run": {
                "run_id": run.run_id,
                "state": run.state.value,
                "step": run.index,
                "kind": run.step.kind if run.step else None,
            },
        }

    def start_run(
        self, protocol: dict[str, Any], operator: str = "", reason: str = ""
    ) -> dict[str, Any]:
        _check_who(operator, reason)
        if self.runner.state == RunState.RUNNING:
            raise ControlError("busy", f"run {self.runner.run_id} is running")
        try:
            parsed = RunProtocol.from_mapping(protocol)
        except ConfigError as e:
            raise ControlError("bad_arguments", str(e)) from e
        run_id = new_run_id(self.runs_dir)
        meta = {
            "protocol_name": parsed.name,
            "species": self.acq.species,
            "overrides": self.overrides,
            "operator": operator,
            **self._by_client(),
            # What `opsims replay` builds its pipeline from.
            "engine": {
                **self.config.detector.engine_args(),
                "clock_time_scale": self.config.clock_time_scale,
            },
        }
        try:
            record = RunRecord(
                self.runs_dir,
                run_id,
                config=self.config.journal,
                config_path=self.config.path,
                protocol=protocol,
                meta=meta,
            )
        except (OSError, JournalError) as e:
            # No run without its record.
            raise ControlError("journal", f"cannot record run {run_id}: {e}") from e
        # What arrived before the run goes out untagged first.
        self._drain()
        self.record = record
        self._reset_cubes()
        self.acq.start_recording(record.writer, fresh_cubes=True)
        self._record("control", {"command": "start_run", "operator": operator,
                                 "reason": reason, "protocol": parsed.name,
                                 **self._by_client()})  # fmt: skip
        return {"run_id": self.runner.start(parsed, run_id)}

    def stop_run(self, operator: str = "", reason: str = "") -> dict[str, Any]:
        _check_who(operator, reason)
        self._record("control", {"command": "stop_run", "operator": operator, "reason": reason,
                                 **self._by_client()})  # fmt: skip
        self.runner.stop(reason or "stopped by operator")
        return {"run_id": self.runner.run_id}

    def abort(self, reason: str = "aborted by operator", operator: str = "") -> dict[str, Any]:
        _check_who(operator, reason)
        self._record("control", {"command": "abort", "operator": operator, "reason": reason,
                                 **self._by_client()})  # fmt: skip
        self.runner.abort(str(reason))
        return {"run_id": self.runner.run_id}

    # --- the run's record (docs/journal.md) -------------------------------------------

    def _on_run(self, fields: dict[str, Any]) -> None:
        """A protocol step transition: published, recorded; the run's end closes its
        record (in the background: the journal syncs what is left)."""
        self.pub.publish("run", fields)
        self._record("step", fields)
        record = self.record
        if record is None or fields["step"] != -1 or fields["state"] == "started":
            return
        # What the live engine built from the journal: `opsims replay` checks against it.
        digest = self.acq.stop_recording()
        record.append("note", {"type": "live_digest", "digest": digest})
        self.record = None
        self.closing.append(record)
        end = {k: fields.get(k) for k in ("state", "reason", "detail")}
        record.close_in_background({"end": end, "live_digest": digest})

    def _record(self, kind: str, fields: dict[str, Any]) -> None:
        if self.record is not None:
            self.record.append(kind, fields)

    def _reset_cubes(self) -> None:
        """A run starts with empty cubes: what its journal replays into."""
        self.pub.reset_cubes()
        self.last_counters, self.last_by_species = {}, {}
        self._status_prev = (time.monotonic(), {})

    def _check_journal(self) -> None:
        """Once per status: the clock models into the record, and the disk's health. A
        failing or full disk is an alarm; with ``on_backlog = "stop_run"`` it ends the run
        (open circuit first)."""
        record = self.record
        if record is None:
            return
        self._record("clock", self.acq.clock_states())
        st = record.status()
        refused = st["refused_appends"]  # the link threads' and the daemon's
        problem = (
            st["disk_error"]
            or st["writer_error"]
            or (f"{refused} blocks refused (queue full)" if refused else None)
        )
        if problem != self.journal_alarm:
            self.journal_alarm = problem
            self.pub.publish("journal", {"event": "alarm" if problem else "ok",
                                         "run_id": record.run_id, "problem": problem,
                                         "queued_bytes": st["queued_bytes"],
                                         "refused": refused})  # fmt: skip
            if problem:
                log.error("journal %s: %s", record.run_id, problem)
        if problem and self.config.journal.on_backlog == "stop_run":
            self.runner.abort(f"the run journal cannot keep up: {problem}", reason="journal")

    def reset_interlock(self, operator: str, reason: str) -> dict[str, Any]:
        for name, value in (("operator", operator), ("reason", reason)):
            if not isinstance(value, str) or not value.strip():
                raise ControlError("bad_arguments", f"reset_interlock: {name} is required")
        try:
            done = self.acq.reset_interlock(operator, reason)
        except InterlockError as e:
            self.safety_record.audit("reset_refused", operator=operator, reason=reason,
                                     why=str(e), **self._by_client())  # fmt: skip
            raise ControlError("refused", str(e)) from e
        self.safety_record.audit("reset", operator=operator, reason=reason,
                                 cleared=done["cleared"], **self._by_client())  # fmt: skip
        self._record("control", {"command": "reset_interlock", "operator": operator,
                                 "reason": reason, **self._by_client()})  # fmt: skip
        self.safety_record.clear()
        log.warning("safety: interlock reset by %s: %s", operator, reason)
        self._check_safety(operator=operator)
        return {"state": done["state"], "operator": operator, "cleared": done["cleared"]["reason"]}

    # --- safety (docs/safety.md) --------------------------------------------------------

    def _check_safety(self, *, force: bool = False, operator: str | None = None) -> None:
        """Publish, audit, persist and abort the run on an interlock state change. The
        circuit was already opened by the native thread; this only reports it."""
        st = self.acq.interlock_state()
        assert st is not None
        self.safety = st
        key = (st["changes"], st["trip_host_ns"], st["alarm_host_ns"])
        if key == self.safety_seen and not force:
            return
        old = self.safety_seen
        self.safety_seen = key
        self._publish_safety(st, operator)
        if st["state"] == "armed":
            return
        if old is None or old[1] != st["trip_host_ns"]:
            fields = {k: st[k] for k in ("reason", "detail", "trip_host_ns", "sample",
                                         "open_circuit_written", "restored")}  # fmt: skip
            self.safety_record.audit("restored" if st["restored"] else "trip", **fields)
            if st["reason"] == "shutdown":  # an orderly stop: no fault to latch or shout
                log.info("safety: interlock tripped for the shutdown: %s", st["detail"])
            else:
                self.safety_record.latch(st)
                log.error("safety: interlock TRIPPED (%s): %s", st["reason"], st["detail"])
            if getattr(self, "runner", None) is not None:
                self.runner.abort(f"safety interlock: {st['detail']}", reason="safety")
        if st["state"] == "alarm" and (old is None or old[2] != st["alarm_host_ns"]):
            alarm_ns = st["alarm_host_ns"]
            self.safety_record.audit("alarm", reason=st["reason"], alarm_host_ns=alarm_ns)
            log.critical("safety: ALARM: open circuit not confirmed; still re-sending")

    def _publish_safety(self, st: dict[str, Any], operator: str | None = None) -> None:
        fields = topic_fields(st, operator)
        self.pub.publish("safety", fields, {"sample": sample_array(st)})
        self._record("safety", fields)

    # --- the instrument, for the runner ----------------------------------------------

    def set_current(self, amps: float, limit_v: float | None = None) -> None:
        def command() -> None:
            self.acq.set_current(amps, limit_v=limit_v)
            if limit_v is not None:  # the host's backup of the instrument's own limit
                self.acq.arm_step_stop(limit_v)

        self._command(command)

    def open_circuit(self) -> None:
        self.acq.disarm_step_stop()
        self._command(self.acq.open_circuit)

    def start_eis(self, f_start: float, f_stop: float, ppd: int, amplitude: float) -> None:
        self._command(lambda: self.acq.start_eis(f_start, f_stop, ppd, amplitude))

    def _command(self, call: Any) -> None:
        try:
            call()
        except (CommandRefused, ConnectionError, TimeoutError) as e:
            # CommandRefused's args are (message, code): people read the message.
            why = str(e.args[0]) if isinstance(e, CommandRefused) and e.args else str(e)
            log.error("potentiostat command failed: %s", why)
            self.runner.abort(f"the potentiostat did not accept a command: {why}")

    def _new_region(self) -> None:
        reply = self._sim_request({"cmd": "new_region"})
        if not reply.get("ok"):
            raise RuntimeError(f"the simulator refused a new region: {reply}")

    def _beam(self, mode: str) -> None:
        reply = self._sim_request({"cmd": "beam", "mode": mode})
        if not reply.get("ok"):
            raise RuntimeError(f"the simulator refused the beam mode {mode!r}: {reply}")
        log.info("SIMS beam %s at depth %s nm", mode, reply.get("depth_nm"))

    def _sim_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request on the simulator's control port, and its reply."""
        assert self.sim_control is not None
        with socket.create_connection(self.sim_control, timeout=5) as s:
            s.sendall(json.dumps(request).encode() + b"\n")
            reply: dict[str, Any] = json.loads(s.makefile("rb").readline())
        return reply


def _check_who(operator: object, reason: object) -> None:
    for name, value in (("operator", operator), ("reason", reason)):
        if not isinstance(value, str):
            raise ControlError("bad_arguments", f"{name} must be a string")


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    recovery = run.get("recovery") or {}
    return {"run_id": run["run_id"], "state": run.get("state"),
            "blocks": recovery.get("blocks"), "frames": recovery.get("frames"),
            "bytes_cut": recovery.get("bytes_cut"), "error": run.get("recovery_error")}  # fmt: skip


def pin_mmap_threshold() -> bool:
    """Keep every block of 128 KiB or more in a mapping of its own, returned to the
    system when freed. By default glibc raises that threshold to the size of the largest
    such block freed (up to 32 MiB): once a rebin has freed the cubes' 9 MiB chunks, the
    cube slices copied out for publishing and snapshots (256 KiB each) come from the
    heap, which keeps their high-water resident for good (83 -> 102 MB at the first rebin
    of an hour-long soak, docs/daemon.md). False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def _rss_bytes() -> int | None:
    """Resident memory of this process (Linux), for the status topic."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _link_detail(
    name: str, event: dict[str, Any] | None, counters: dict[str, int]
) -> dict[str, Any]:
    """`status.links[name]` beside its state (publishing.md): since when, how often the
    link failed (lost, or a connection attempt that failed) and the last failure's reason
    (None before any)."""
    errors = counters.get(f"{name}_disconnects", 0) + counters.get(f"{name}_connect_failures", 0)
    if event is None:
        return {"errors": errors, "last_error": None}
    return {
        "since_ns": event["since_ns"],
        "errors": errors,
        "last_error": event.get("last_error"),
        "last_reason": event.get("reason", ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opsimsd", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="TOML configuration")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (TOML syntax), e.g. sim.acceleration=60",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="opsimsd: %(levelname)s %(message)s")
    if not pin_mmap_threshold():
        log.warning("could not pin malloc's mmap threshold: RSS may keep the peak of a burst")
    try:
        config = DaemonConfig.load(args.config, args.set)
    except ConfigError as e:
        print(f"opsimsd: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        return Daemon(config, args.set).run()
    except (zmq.ZMQError, OSError, RuntimeError) as e:
        print(f"opsimsd: cannot start: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
