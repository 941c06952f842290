"""The daemon's PUB side and the client library over real ZeroMQ sockets on loopback
(docs/publishing.md): sequence numbers, a stalled subscriber, the slice coalescer, the
Clone pattern (snapshot + updates), reconnects and control errors."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from opsims import wire
from opsims.client import Control, ControlError, CubeMirror, Subscriber
from opsims.daemon.publisher import (
    Publisher,
    cube_snapshot,
    handle_request,
    snapshot_handler,
)
from opsims.wire import EC_SAMPLE_DTYPE, Reply, WireError

ANY_PORT = "tcp://127.0.0.1:*"
Ctx = zmq.Context[Any]


@pytest.fixture
def ctx() -> Iterator[Ctx]:
    context: Ctx = zmq.Context()
    yield context
    context.destroy(linger=0)


def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def join(pub: Publisher, sub: Subscriber) -> None:
    """Wait until ``sub``'s subscription reached ``pub`` (ZeroMQ's slow joiner): probe
    on the ``hello`` topic, which every subscriber here also takes."""
    deadline = time.monotonic() + 10
    while True:
        pub.publish("hello")
        msg = sub.recv(0.02)
        if msg is not None and msg.topic == "hello":
            break
        assert time.monotonic() < deadline, "subscription never arrived"
    while sub.recv(0.05) is not None:  # hellos still in flight
        pass


def bind(sock: zmq.Socket[Any], endpoint: str) -> None:
    # A port just released by a closed socket can take a moment to become free.
    deadline = time.monotonic() + 5
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def rep_server(ctx: Ctx, handlers: dict[str, Any], endpoint: str = ANY_PORT) -> Iterator[str]:
    """The daemon's control loop in small: a REP socket answering with handle_request."""
    sock = ctx.socket(zmq.REP)
    bind(sock, endpoint)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if sock.poll(20):
                frames = sock.recv_multipart(copy=False)
                sock.send_multipart(handle_request([f.buffer for f in frames], handlers))
        sock.close(linger=0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        stop.set()
        thread.join(5)


def samples(n: int) -> np.ndarray[Any, Any]:
    s = np.zeros(n, EC_SAMPLE_DTYPE)
    s["ewe_v"] = 0.05
    return s


# --- sequence numbers and load ---


def test_sequence_numbers_per_topic_without_gaps(ctx: Ctx) -> None:
    with (
        Publisher(ANY_PORT, source="opsimsd@test", context=ctx) as pub,
        Subscriber(pub.endpoint, context=ctx) as sub,
    ):
        join(pub, sub)
        topics = ["ec", "events", "status"]
        sent: dict[str, list[int]] = {t: [] for t in topics}
        for i in range(3000):
            topic = topics[i % 3]
            sent[topic].append(pub.publish(topic, {"i": i}, {"samples": samples(5)}))
        got: dict[str, list[int]] = {t: [] for t in topics}
        while (msg := sub.recv(1.0)) is not None:
            got[msg.topic].append(msg.seq)
            assert msg.source == "opsimsd@test"
            assert msg.arrays["samples"].dtype == EC_SAMPLE_DTYPE
        for t in topics:
            assert sent[t] == list(range(1000)) == got[t]
        assert (sub.gaps, sub.missed, sub.restarts) == (0, 0, 0)
        stats = pub.stats()
        assert stats["messages"]["ec"] == 1000 and stats["refused"] == {}
        assert pub.snapshot_seq("events") == 999 and pub.snapshot_seq("cube") == -1


def test_a_bad_message_takes_no_sequence_number(ctx: Ctx) -> None:
    with Publisher(ANY_PORT, source="s", context=ctx) as pub:
        assert pub.publish("ec") == 0
        with pytest.raises(WireError, match="reserved"):
            pub.publish("ec", {"seq": 5})
        assert pub.publish("ec") == 1


def test_a_stalled_subscriber_neither_slows_publishing_nor_the_others(ctx: Ctx) -> None:
    n = 100_000
    gaps: list[tuple[str, int, int]] = []
    with (
        Publisher(ANY_PORT, source="s", sndhwm=20, context=ctx) as pub,
        Subscriber(
            pub.endpoint, ["ec", "hello"], rcvhwm=20, context=ctx, on_gap=lambda *g: gaps.append(g)
        ) as stalled,
    ):
        join(pub, stalled)
        payload = samples(10)
        t0 = time.perf_counter()
        for i in range(n):
            pub.publish("ec", {"i": i}, {"samples": payload})
        elapsed = time.perf_counter() - t0
        # A publisher that waited for this subscriber would never finish.
        assert elapsed < 30, f"{n} messages took {elapsed:.1f} s"
        print(f"\n{n} messages past a stalled subscriber in {elapsed:.2f} s")

        # A fresh subscriber, reading, misses nothing while the stalled one stays full:
        # each has its own queue. (Bursts of 10: libzmq learns of reads in steps of half
        # the HWM, so up to 9 + 10 messages can count against the 20-message HWM.)
        with Subscriber(pub.endpoint, ["ec", "hello"], context=ctx) as fast:
            join(pub, fast)
            first = pub.snapshot_seq("ec") + 1
            seqs: list[int] = []
            for _ in range(600):
                for _ in range(10):
                    pub.publish("ec", {}, {"samples": payload})
                while len(seqs) < pub.snapshot_seq("ec") + 1 - first:
                    msg = fast.recv(5.0)
                    assert msg is not None
                    seqs.append(msg.seq)
            assert seqs == list(range(first, first + 6000))
            assert fast.gaps == 0

        # The stalled one got the head of the stream, then one gap: every message is
        # either received or counted as missed.
        received: list[int] = []
        while (msg := stalled.recv(0.5)) is not None:
            if msg.topic == "ec":
                received.append(msg.seq)
        last_seq = pub.publish("ec")
        while (msg := stalled.recv(5.0)) is not None and msg.topic != "ec":
            pass
        assert msg is not None and msg.seq == last_seq
        received.append(msg.seq)
        assert received == sorted(received) and len(received) < n / 2
        missed = sum(got - expected for topic, expected, got in gaps if topic == "ec")
        assert missed > 0 and len(received) + missed == last_seq + 1
        assert pub.stats()["messages"]["ec"] == n + 6000 + 1
        assert pub.stats()["refused"] == {}  # PUB drops per subscriber, never refuses


def test_gaps_restarts_and_the_on_gap_callback(ctx: Ctx) -> None:
    # A raw PUB socket sends hand-numbered messages (the daemon never skips on purpose).
    raw = ctx.socket(zmq.PUB)
    raw.bind(ANY_PORT)
    seen: list[tuple[str, int, int]] = []
    with Subscriber(
        raw.getsockopt_string(zmq.LAST_ENDPOINT),
        ["ec", "hello"],
        context=ctx,
        on_gap=lambda *gap: seen.append(gap),
    ) as sub:
        while sub.recv(0.02) is None:
            raw.send_multipart(wire.encode("hello", 0, {}, source="a"))
        order = [("a", 0), ("a", 1), ("a", 2), ("a", 5), ("a", 6), ("a", 0), ("b", 9), ("b", 10)]
        for source, seq in order:
            raw.send_multipart(wire.encode("ec", seq, {}, source=source))
        raw.send_multipart([b"ec", b"\xc1"])
        got = [(m.source, m.seq) for m in (sub.recv(5.0) for _ in order) if m is not None]
        assert got == order
        assert (sub.gaps, sub.missed, sub.restarts) == (1, 2, 2)
        assert seen == [("ec", 3, 5)]
        with pytest.raises(WireError, match="not valid msgpack"):
            sub.recv(5.0)
        sub.timeout_s = 0.1
        assert list(sub) == []  # iteration ends at the first silent timeout
    raw.close(linger=0)


class CuttableProxy:
    """A TCP forwarder in front of the publisher; ``cut()`` drops the connections and
    turns new ones away until ``resume()`` — a network outage, daemon still running."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self.conns.clear()

    def resume(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_messages_lost_while_disconnected_are_not_gaps(ctx: Ctx) -> None:
    with Publisher(ANY_PORT, source="s", context=ctx) as pub:
        proxy = CuttableProxy(int(pub.endpoint.rsplit(":", 1)[1]))
        try:
            with Subscriber(f"tcp://127.0.0.1:{proxy.port}", ["ec", "hello"], context=ctx) as sub:
                join(pub, sub)
                for _ in range(5):
                    pub.publish("ec")
                assert [m.seq for m in (sub.recv(5.0) for _ in range(5)) if m] == [0, 1, 2, 3, 4]
                proxy.cut()
                until(lambda: sub.recv(0.05) is None and sub.reconnects >= 1)
                time.sleep(0.3)  # let the publisher notice too: what follows goes nowhere
                for _ in range(10):
                    pub.publish("ec")
                proxy.resume()
                msg = None
                while msg is None or msg.topic != "ec":
                    pub.publish("ec")
                    msg = sub.recv(0.05)
                assert msg.seq > 5
                assert (sub.gaps, sub.missed) == (0, 0)
        finally:
            proxy.close()


# --- cubes: coalescing and the Clone pattern ---


def test_coalescing_sends_only_the_latest_content_and_counts_the_rest(ctx: Ctx) -> None:
    species = ["Na+", "O-"]
    cubes: dict[str, np.ndarray[Any, Any]] = {s: np.zeros((4, 3, 5), np.uint32) for s in species}

    binning = {"frames_per_slice": 1, "n_slices": 4, "rebins": 0}

    def read(
        keys: list[tuple[int, int]],
    ) -> tuple[list[np.ndarray[Any, Any] | None], int, int, int]:
        n = binning["n_slices"]
        slices = [np.array(cubes[species[i]][z]) if z < n else None for i, z in keys]
        return slices, binning["frames_per_slice"], n, binning["rebins"]

    with (
        Publisher(ANY_PORT, source="s", context=ctx, species=species) as pub,
        Subscriber(pub.endpoint, ["cube", "hello"], context=ctx) as sub,
    ):
        join(pub, sub)
        for k in range(5):
            cubes["Na+"][1] += k + 1
            pub.mark_dirty(0, 1)
        cubes["O-"][0] = 7
        pub.mark_dirty(1, 0)
        assert pub.stats()["coalesced"] == 4 and pub.stats()["dirty_slices"] == 2
        assert pub.flush_cubes(read, 10) == 2
        first, second = sub.recv(5.0), sub.recv(5.0)
        assert first is not None and second is not None
        assert (first.fields["species"], first.fields["z"], first.seq) == ("Na+", 1, 0)
        assert np.all(first.arrays["slice"] == 15)  # 1+2+3+4+5: the latest content only
        assert first.fields == {"species": "Na+", "species_index": 0, "z": 1, "epoch": 0, **binning}
        assert (second.fields["species"], second.fields["z"]) == ("O-", 0)
        assert np.all(second.arrays["slice"] == 7)

        # A budget per flush: the oldest dirty slices go first, the rest wait.
        for z in (3, 0, 2):
            pub.mark_dirty(0, z)
        assert pub.flush_cubes(read, 2) == 2
        assert pub.stats()["dirty_slices"] == 1
        assert pub.flush_cubes(read, 2) == 1
        assert [m.fields["z"] for m in (sub.recv(5.0) for _ in range(3)) if m] == [3, 0, 2]
        # A rebin to 2 slices after slices 1 and 3 were marked: slice 3 no longer exists,
        # and slice 1 now means other frames; both dropped, counted. A slice marked in
        # the new binning goes out tagged with it.
        pub.mark_dirty(1, 3)
        pub.mark_dirty(0, 1)
        binning.update(frames_per_slice=2, n_slices=2, rebins=1)
        assert pub.flush_cubes(read, 5) == 0
        assert pub.stats()["coalesced"] == 6
        pub.mark_dirty(0, 1, rebins=1)
        assert pub.flush_cubes(read, 5) == 1
        rebinned = sub.recv(5.0)
        assert rebinned is not None and rebinned.fields["z"] == 1
        assert {k: rebinned.fields[k] for k in binning} == binning
        assert sub.gaps == 0 and pub.snapshot_seq() == 5
        with pytest.raises(ValueError, match="uint32"):
            pub.cube_update("Na+", 0, np.zeros((3, 5)), **binning)


class FakeDaemonCubes:
    """The cube state a daemon keeps, changed from its own thread: random counts into
    random slices, the depth growing, one rebin halfway (as a memory budget forces)."""

    def __init__(self, species: list[str], ny: int, nx: int) -> None:
        self.species = species
        self.lock = threading.Lock()
        self.n_slices = 4
        self.frames_per_slice = 1
        self.rebins = 0
        self.cubes: dict[str, np.ndarray[Any, Any]] = {
            s: np.zeros((64, ny, nx), np.uint32) for s in species
        }

    def read_slices(
        self, keys: list[tuple[int, int]]
    ) -> tuple[list[np.ndarray[Any, Any] | None], int, int, int]:
        with self.lock:
            slices = [
                np.array(self.cubes[self.species[i]][z]) if z < self.n_slices else None
                for i, z in keys
            ]
            return slices, self.frames_per_slice, self.n_slices, self.rebins

    def read_all(self) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
        with self.lock:
            return cube_snapshot(
                {s: c[: self.n_slices].copy() for s, c in self.cubes.items()},
                frames_per_slice=self.frames_per_slice,
                n_slices=self.n_slices,
                rebins=self.rebins,
            )

    def run(self, pub: Publisher, steps: int, rng: np.random.Generator) -> None:
        for step in range(steps):
            with self.lock:
                if step == steps // 2:
                    self._rebin(pub)
                elif rng.random() < 0.02 and self.n_slices < 64:
                    self.n_slices += 1
                i = int(rng.integers(len(self.species)))
                z = int(rng.integers(self.n_slices))
                plane = self.cubes[self.species[i]][z]
                plane += rng.poisson(0.3, plane.shape).astype(np.uint32)
            pub.mark_dirty(i, z, self.rebins)
            if step % 10 == 0:
                pub.flush_cubes(self.read_slices, 4)
            time.sleep(0.0005)
        while pub.stats()["dirty_slices"]:
            pub.flush_cubes(self.read_slices, 100)

    def _rebin(self, pub: Publisher) -> None:
        half = (self.n_slices + 1) // 2
        for s, c in self.cubes.items():
            merged = np.zeros_like(c)
            for z in range(self.n_slices):
                merged[z // 2] += c[z]
            self.cubes[s] = merged
        self.n_slices, self.frames_per_slice, self.rebins = half, 2, 1
        for i in range(len(self.species)):
            for z in range(half):
                pub.mark_dirty(i, z, self.rebins)


def test_a_client_joining_mid_run_ends_with_the_daemons_cubes(ctx: Ctx) -> None:
    species = ["Na+", "Si+", "O-"]
    state = FakeDaemonCubes(species, ny=6, nx=5)
    with Publisher(ANY_PORT, source="s", context=ctx, species=species) as pub:
        readers = {"cubes": state.read_all}
        handlers = {"snapshot": snapshot_handler(pub, readers)}
        with rep_server(ctx, handlers) as control_endpoint:
            worker = threading.Thread(
                target=state.run, args=(pub, 3000, np.random.default_rng(7)), daemon=True
            )
            worker.start()
            until(lambda: pub.snapshot_seq() > 100)
            with CubeMirror(pub.endpoint, control_endpoint, context=ctx) as mirror:
                assert mirror.seq >= 100
                while worker.is_alive():
                    mirror.poll(0.05)
                worker.join()
                final = pub.snapshot_seq()
                deadline = time.monotonic() + 10
                while mirror.seq != final:
                    mirror.poll(0.05)
                    assert time.monotonic() < deadline, (mirror.seq, final)
                _, truth = state.read_all()
                assert mirror.species == species and mirror.rebins == 1
                assert mirror.n_slices == state.n_slices
                for s in species:
                    assert np.array_equal(mirror.cubes[s], truth[s]), s
                assert mirror.applied > 0
                print(
                    f"\nmirror: {mirror.syncs} snapshots, {mirror.applied} applied, "
                    f"{mirror.dropped} dropped as already in a snapshot, {final + 1} sent"
                )


def test_the_mirror_follows_a_daemon_restart(ctx: Ctx) -> None:
    binning = {"frames_per_slice": 1, "n_slices": 2, "rebins": 0}

    def handlers(pub: Publisher, cube: np.ndarray[Any, Any]) -> dict[str, Any]:
        readers = {"cubes": lambda: cube_snapshot({"Na+": cube.copy()}, **binning)}
        return {"snapshot": snapshot_handler(pub, readers)}

    first = np.ones((2, 3, 4), np.uint32)
    pub = Publisher(ANY_PORT, source="s", context=ctx, species=["Na+"])
    with rep_server(ctx, handlers(pub, first)) as control_endpoint:
        mirror = CubeMirror(pub.endpoint, control_endpoint, context=ctx)
        first[0] = 5
        pub.cube_update("Na+", 0, first[0].copy(), **binning)
        until(lambda: mirror.poll(0.05) >= 0 and mirror.seq == 0)
        assert np.array_equal(mirror.cubes["Na+"], first)
    pub.close()  # the daemon stops; a new one starts on the same ports, numbering from 0

    second = np.full((2, 3, 4), 9, np.uint32)
    pub = _publisher_at(ctx, pub.endpoint)
    with rep_server(ctx, handlers(pub, second), control_endpoint):
        second[1] = 7
        pub.cube_update("Na+", 1, second[1].copy(), **binning)
        until(lambda: mirror.poll(0.05) >= 0 and np.array_equal(mirror.cubes["Na+"], second))
        assert mirror.syncs >= 2 and mirror.subscriber.reconnects >= 1
    mirror.close()
    pub.close()


def _publisher_at(ctx: Ctx, endpoint: str) -> Publisher:
    deadline = time.monotonic() + 5
    while True:
        try:
            return Publisher(endpoint, source="s", context=ctx, species=["Na+"])
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_big_slices_and_empty_arrays_over_the_socket(ctx: Ctx) -> None:
    with (
        Publisher(ANY_PORT, source="s", context=ctx, species=["Na+"]) as pub,
        Subscriber(pub.endpoint, ["cube", "profile", "hello"], context=ctx) as sub,
    ):
        join(pub, sub)
        big = np.random.default_rng(3).integers(0, 2**32, (2048, 2048), dtype=np.uint32)
        pub.cube_update("Na+", 0, big, frames_per_slice=1, n_slices=1, rebins=0)
        pub.publish("profile", {"species": ["Na+"]}, {"profile": np.zeros((0, 1), np.uint64)})
        cube, profile = sub.recv(10.0), sub.recv(10.0)
        assert cube is not None and profile is not None
        assert np.array_equal(cube.arrays["slice"], big)
        assert profile.arrays["profile"].shape == (0, 1)


# --- control ---


def test_control_calls_and_structured_errors(ctx: Ctx) -> None:
    def refuse(operator: str, reason: str) -> dict[str, Any]:
        raise ControlError("refused", f"Ewe still out of limits ({operator}: {reason})")

    def crash() -> None:
        raise RuntimeError("bug")

    handlers: dict[str, Any] = {
        "status": lambda: {"state": "idle", "uptime_s": 1.5},
        "abort": lambda reason: {"aborted": reason},
        "reset_interlock": refuse,
        "crash": crash,
        "echo": lambda **kw: Reply(True, {k: v for k, v in kw.items() if k != "a"}, {"a": kw["a"]}),
    }
    with (
        rep_server(ctx, handlers) as endpoint,
        Control(endpoint, timeout_s=5.0, context=ctx) as control,
    ):
        assert control.status() == {"state": "idle", "uptime_s": 1.5}
        assert control.abort("test") == {"aborted": "test"}
        reply = control.call("echo", a=np.arange(4), b=[1, 2])
        assert reply.fields == {"b": [1, 2]} and np.array_equal(reply.arrays["a"], np.arange(4))
        cases: list[tuple[Callable[[], object], str, str]] = [
            (lambda: control.call("warp"), "unknown_command", "'warp'; known: abort"),
            (lambda: control.call("abort"), "bad_arguments", "reason"),
            (lambda: control.call("abort", reason="x", force=1), "bad_arguments", "force"),
            (lambda: control.reset_interlock("ana", "checked"), "refused", "ana: checked"),
            (lambda: control.call("crash"), "internal", "RuntimeError: bug"),
            (lambda: control.snapshot(), "unknown_command", "'snapshot'"),
        ]
        for call, code, text in cases:
            with pytest.raises(ControlError, match=text) as err:
                call()
            assert err.value.code == code
        assert control.status()["state"] == "idle"  # still serving after all that

        raw = ctx.socket(zmq.REQ)
        raw.connect(endpoint)
        for bad in ([b"\xc1"], [msgpack.packb({"v": 1, "cmd": 5, "arrays": []})]):
            raw.send_multipart(bad)
            failed = wire.decode_reply(raw.recv_multipart())
            assert not failed.ok and failed.error is not None
            assert failed.error[0] == "bad_request"
        raw.close(linger=0)


def test_snapshot_is_tagged_with_the_last_sequence_number(ctx: Ctx) -> None:
    cube = np.arange(2 * 3 * 4, dtype=np.uint32).reshape(2, 3, 4)
    with Publisher(ANY_PORT, source="s", context=ctx, species=["Na+"]) as pub:
        readers = {
            "cubes": lambda: cube_snapshot({"Na+": cube}, frames_per_slice=1, n_slices=2, rebins=0),
            "profile": lambda: ({"species": ["Na+"]}, {"profile": cube.sum(axis=(1, 2))}),
        }
        with (
            rep_server(ctx, {"snapshot": snapshot_handler(pub, readers)}) as endpoint,
            Control(endpoint, context=ctx) as control,
        ):
            assert control.snapshot().seq == -1
            for z in (0, 1, 0):
                pub.cube_update("Na+", z, cube[z], frames_per_slice=1, n_slices=2, rebins=0)
            pub.publish("profile", {}, {"profile": np.zeros(2, np.uint64)})
            snap = control.snapshot("cubes")
            assert snap.seq == 2 and snap.fields["species"] == ["Na+"]
            assert snap.fields["what"] == "cubes" and np.array_equal(snap.arrays["Na+"], cube)
            assert control.snapshot("profile").seq == 0
            with pytest.raises(ControlError, match="cannot snapshot 'ions'") as err:
                control.snapshot("ions")
            assert err.value.code == "bad_arguments"


def test_a_timeout_raises_and_the_next_call_works(ctx: Ctx) -> None:
    # A ROUTER that swallows the first request, as a daemon that lost it would.
    router = ctx.socket(zmq.ROUTER)
    router.bind(ANY_PORT)
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    with Control(endpoint, timeout_s=0.3, context=ctx) as control:
        t0 = time.monotonic()
        with pytest.raises(ControlError, match="no reply to 'status'") as err:
            control.status()
        assert err.value.code == "timeout" and 0.25 < time.monotonic() - t0 < 3
        assert router.poll(1000)
        router.recv_multipart()  # the lost request, never answered

        def answer() -> None:
            if router.poll(5000):
                identity, empty, *frames = router.recv_multipart()
                reply = handle_request(frames, {"status": lambda: {"state": "idle"}})
                router.send_multipart([identity, empty, *reply])

        thread = threading.Thread(target=answer)
        thread.start()
        assert control.status() == {"state": "idle"}  # a fresh REQ socket, not stuck
        thread.join()
    router.close(linger=0)


def test_a_live_profile_puts_the_rows_from_z0_over_its_own() -> None:
    """Whole messages replace, partial ones replace the rows from ``z0`` on; across a
    gap, a rebin, a new run or a daemon restart it has no profile until the next whole
    one, and messages a snapshot already holds are left out."""
    from opsims.client import LiveProfile, Snapshot
    from opsims.wire import Message

    rng = np.random.default_rng(7)
    truth = rng.integers(0, 1000, size=(6, 2), dtype=np.uint64)

    def msg(seq: int, z0: int, n: int, rebins: int = 0, epoch: int = 0) -> Message:
        fields = {"species": ["Na+", "F-"], "z0": z0, "n_slices": n, "rebins": rebins,
                  "epoch": epoch}  # fmt: skip
        return Message("profile", seq, 0, "test", fields, {"profile": truth[z0:n]})

    live = LiveProfile()
    assert not live.apply(msg(0, 1, 3)), "a partial message needs a whole one first"
    assert live.apply(msg(1, 0, 3))
    np.testing.assert_array_equal(live.profile, truth[:3])
    truth[2:] += 5  # the newest slice grows, two more come
    assert live.apply(msg(2, 2, 5))
    np.testing.assert_array_equal(live.profile, truth[:5])
    assert live.species == ["Na+", "F-"]

    assert not live.apply(msg(4, 4, 6)), "message 3 was lost"
    assert not live.apply(msg(5, 5, 6)), "still no whole one"
    assert live.apply(msg(6, 0, 6))
    np.testing.assert_array_equal(live.profile, truth)
    assert not live.apply(msg(7, 3, 6, rebins=1)), "a rebin changed every row"
    assert live.apply(msg(8, 0, 6, rebins=1)) and not live.apply(msg(9, 5, 6, epoch=1))

    fields = {"species": ["Na+", "F-"], "z0": 0, "n_slices": 6, "rebins": 1, "epoch": 1}
    live.sync(Snapshot(seq=11, fields=fields, arrays={"profile": truth}))
    np.testing.assert_array_equal(live.profile, truth)
    assert live.apply(msg(10, 4, 6, rebins=1, epoch=1)), "queued before the snapshot: left out"
    assert live.apply(msg(12, 5, 6, rebins=1, epoch=1)) and live.seq == 12
    assert live.profile is not None and live.profile.shape == (6, 2)
    # The daemon restarted: its numbers start again, and a partial message is not taken
    # as following this profile; the new daemon's first whole one is.
    assert not live.apply(msg(1, 5, 6)), "a restarted daemon's rows need a whole profile"
    assert live.apply(msg(2, 0, 6)) and live.seq == 2
