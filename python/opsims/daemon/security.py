"""Who may do what (docs/publishing.md, "Security"): the ``[security]`` table, the
permission classes of the control commands, the binding policy, and the :class:`Gate`
that authenticates CURVE clients and checks every command against its client's
permissions.

The gate runs on the daemon's loop (a ZAP handler it polls without waiting), never on
the acquisition or safety path: those are native threads, and a client that is refused
or never gets through the handshake changes nothing there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from opsims._native import ConfigError
from opsims.config_table import TableReader
from opsims.keys import KEY_NAME, KeyFileError, derive_public_key, public_key_from, read_secret_key
from opsims.wire import ControlError

log = logging.getLogger("opsimsd")

#: Permission class -> the commands it allows. ``read`` also admits a subscriber to a
#: CURVE-protected PUB stream.
PERMISSIONS: dict[str, frozenset[str]] = {
    "read": frozenset({"status", "snapshot"}),
    "run": frozenset({"start_run"}),
    "reset_interlock": frozenset({"reset_interlock"}),
}
#: Commands every authenticated client may send. They only ever make the cell safer
#: (the circuit opens), and whoever sees something wrong must be able to stop it.
ANY_CLIENT = frozenset({"stop_run", "abort"})

Socket = Literal["publish", "control"]
#: ZAP domains: the handler tells the two sockets apart by them.
DOMAINS: dict[Socket, str] = {"control": "opsims-control", "publish": "opsims-publish"}
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # RFC 27: where libzmq asks
#: The same failed handshake (per socket and key) is logged, published and recorded at
#: most once per this many seconds: anyone who can reach the port can cause them. All
#: are counted. A refused command is always reported: it came from an allow-listed
#: key, one request per reply, and the record must show every attempt.
REPORT_INTERVAL_S = 5.0
HANDSHAKE_FAILED = ("not a CURVE client of this daemon (no keys, or the wrong server key), "
                    "or a connection closed before the handshake ended")  # fmt: skip
#: How a handshake that never reached ZAP ends, one event per connection attempt:
#: PROTOCOL when the server saw the mismatch, NO_DETAIL when the client saw it first
#: and hung up (or the peer was not ZeroMQ at all).
_FAILED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def required_permission(cmd: str) -> str | None:
    """The permission class ``cmd`` needs; None when any authenticated client may."""
    if cmd in ANY_CLIENT:
        return None
    for name, commands in PERMISSIONS.items():
        if cmd in commands:
            return name
    raise KeyError(cmd)


def check_classified(commands: Iterable[str]) -> None:
    """Every control command has a permission class (or is one anyone may send): a new
    command nobody classified must not start out open to all."""
    missing = []
    for cmd in commands:
        try:
            required_permission(cmd)
        except KeyError:
            missing.append(cmd)
    if missing:
        raise RuntimeError(f"control command(s) without a permission class: {missing}")


@dataclass(frozen=True)
class Client:
    """An allow-listed key: its name (the ZeroMQ User-Id of its connections), its
    public key (Z85 bytes) and its permission classes."""

    name: str
    public_key: bytes
    allow: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``. Without ``server_secret_key`` both sockets are plain ZeroMQ and
    may only be bound to local addresses (or ``allow_insecure_bind``)."""

    server_secret_key: bytes | None = field(default=None, repr=False)
    control_clients: tuple[Client, ...] = ()
    publish_clients: tuple[Client, ...] = ()
    publish_curve: bool = False
    allow_insecure_bind: bool = False

    @property
    def curve(self) -> bool:
        return self.server_secret_key is not None

    def protects(self, socket: Socket) -> bool:
        """Whether ``socket`` is a CURVE server."""
        return self.curve and (socket == "control" or self.publish_curve)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], base_dir: Path) -> SecurityConfig:
        """Key files named by relative paths are found from ``base_dir`` (the folder of
        the configuration file)."""
        r = TableReader(table, "security")
        secret_path: str = r.get("server_secret_key", str, "")
        publish_curve: bool = r.get("publish_curve", bool, True)
        insecure: bool = r.get("allow_insecure_bind", bool, False)
        control = _clients(r, "control_clients", base_dir, with_allow=True)
        publish = _clients(r, "publish_clients", base_dir, with_allow=False)
        r.reject_unknown()
        if not secret_path:
            explicit_curve = "publish_curve" in table and publish_curve
            given = {"control_clients": control, "publish_clients": publish,
                     "publish_curve": explicit_curve}  # fmt: skip
            for key, value in given.items():
                if value:
                    raise r.error(key, "needs security.server_secret_key (the daemon's "
                                       "secret key file; `opsims keys new opsimsd`)")  # fmt: skip
            return cls(allow_insecure_bind=insecure)
        try:
            secret = read_secret_key(base_dir / secret_path)
        except KeyFileError as e:
            raise r.error("server_secret_key", str(e)) from e
        if not control:
            raise r.error("control_clients", "at least one client is needed with a "
                          "server_secret_key, or nobody can talk to the daemon")  # fmt: skip
        server_public = derive_public_key(secret)
        for c in (*control, *publish):
            if c.public_key == server_public:
                raise r.error("control_clients" if c in control else "publish_clients",
                              f"{c.name!r} has the daemon's own key; give it a key pair "
                              "of its own")  # fmt: skip
        # One name, one key: logs and records name the client, not the key.
        for p in publish:
            for c in control:
                if (p.name == c.name) != (p.public_key == c.public_key):
                    raise r.error("publish_clients", f"{p.name!r} and control client "
                                  f"{c.name!r}: the same key must have the same name, and "
                                  "one name one key")  # fmt: skip
        return cls(secret, control, publish, publish_curve, insecure)


def _clients(r: TableReader, key: str, base_dir: Path, *, with_allow: bool) -> tuple[Client, ...]:
    items = r.get(key, list, [])
    clients: list[Client] = []
    for i, item in enumerate(items):
        path = f"{r.path}.{key}[{i}]"
        if not isinstance(item, dict):
            wanted = "name, public_key, allow" if with_allow else "name, public_key"
            raise ConfigError(f"{path}: expected a table {{{wanted}}}, got {item!r}")
        t = TableReader(item, path)
        name: str = t.get("name", str)
        if not KEY_NAME.fullmatch(name):
            raise t.error("name", f"letters, digits and _ . @ - only, got {name!r}")
        try:
            public = public_key_from(t.get("public_key", str), base_dir)
        except KeyFileError as e:
            raise t.error("public_key", str(e)) from e
        allow: frozenset[str] = frozenset()
        if with_allow:
            listed = t.get("allow", list)
            unknown = [a for a in listed if a not in PERMISSIONS]
            if unknown:
                raise t.error("allow", f"unknown permission(s) {unknown}; the classes are "
                                       f"{', '.join(PERMISSIONS)} (stop_run and abort need "
                                       "none)")  # fmt: skip
            allow = frozenset(listed)
        t.reject_unknown()
        for other in clients:
            if other.name == name or other.public_key == public:
                what = "name" if other.name == name else "public key"
                raise ConfigError(f"{path}: the same {what} as {other.name!r}")
        clients.append(Client(name, public, allow))
    return tuple(clients)


# --- binding policy -------------------------------------------------------------------


def is_local(endpoint: str) -> bool:
    """Whether only this host can reach a bound ``endpoint``: ipc:// and inproc://, or
    tcp:// on a loopback address (127.0.0.0/8, ::1, ``localhost``, the interface
    ``lo``). ``*``, 0.0.0.0, a LAN address, a host or an interface name are not."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rpartition(":")[0].strip("[]")
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_bindings(
    security: SecurityConfig, publish: str, control: str
) -> list[tuple[Socket, str]]:
    """Each socket reachable from other hosts that is not a CURVE server, with why."""
    found: list[tuple[Socket, str]] = []
    endpoints: dict[Socket, str] = {"publish": publish, "control": control}
    for socket, endpoint in endpoints.items():
        if is_local(endpoint) or security.protects(socket):
            continue
        why = ("security.publish_curve is false" if security.curve
               else "no CURVE keys are configured (security.server_secret_key)")  # fmt: skip
        found.append((socket, f"{endpoint} can be reached from other hosts, but {why}"))
    return found


def insecure_binding_error(socket: Socket, problem: str) -> str:
    """The refusal at start, with the ways out."""
    keys = ("server_secret_key and control_clients"
            + (", publish_curve = true" if socket == "publish" else ""))  # fmt: skip
    return (f"{problem}. Configure CURVE keys (security.{keys}; docs/publishing.md, "
            f"\"Security\"), bind to 127.0.0.1 or ipc://, or set "
            f"security.allow_insecure_bind = true to let in anyone who can reach it")  # fmt: skip


# --- at run time ----------------------------------------------------------------------

Report = Callable[[dict[str, Any]], None]


class Gate:
    """Authentication and permissions at run time: the ZAP handler (RFC 27) that admits
    allow-listed keys and names their connections, the permission check of each
    command, and the counters for ``status``. Denials and refusals go to ``report``
    (the daemon logs, publishes and records them). Belongs to the daemon's loop thread.
    """

    def __init__(self, config: SecurityConfig, context: zmq.Context[Any], report: Report) -> None:
        self.config = config
        self.report = report
        self.refused = 0
        self.unauthenticated = 0
        self.handshake_failed = 0
        self._clients = {c.name: c for c in config.control_clients}
        controllers = {c.public_key: c.name for c in config.control_clients}
        readers = {c.public_key: c.name for c in config.control_clients if "read" in c.allow}
        subscribers = {c.public_key: c.name for c in config.publish_clients}
        # Per ZAP domain, the keys it admits and the name their connections get.
        self._admit: dict[str, dict[bytes, str]] = {
            DOMAINS["control"]: controllers,
            DOMAINS["publish"]: {**subscribers, **readers},
        }
        self._known = {**subscribers, **controllers}
        self._reported: dict[tuple[Any, ...], tuple[float, int]] = {}
        self._monitors: list[tuple[Socket, zmq.Socket[Any]]] = []
        self._zap: zmq.Socket[Any] | None = None
        if config.curve:
            # Bound before any CURVE socket: libzmq lets every key in when no handler
            # listens (and refuses all with ZAP_ENFORCE_DOMAIN, set where supported).
            zap = context.socket(zmq.REP)
            zap.setsockopt(zmq.LINGER, 0)
            try:
                zap.bind(ZAP_ENDPOINT)
            except zmq.ZMQError:
                zap.close(linger=0)
                raise
            self._zap = zap

    def protect(self, sock: zmq.Socket[Any], socket: Socket) -> None:
        """Make ``sock`` a CURVE server when the configuration says so (call it before
        ``bind``), and watch it for handshakes that fail before authentication."""
        secret = self.config.server_secret_key
        if not self.config.protects(socket) or secret is None:
            return
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, derive_public_key(secret))
        sock.setsockopt(zmq.ZAP_DOMAIN, DOMAINS[socket].encode())
        with contextlib.suppress(zmq.ZMQError):  # an older libzmq: the handler is bound first
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        self._monitors.append((socket, sock.get_monitor_socket(_FAILED)))

    # --- the loop's turn ---

    def serve(self) -> None:
        """Answer the handshakes waiting for a verdict, and count the failed ones.
        Never waits."""
        zap = self._zap
        while zap is not None and zap.poll(0, zmq.POLLIN):
            zap.send_multipart(self._verdict(zap.recv_multipart()))
        for socket, monitor in self._monitors:
            while monitor.poll(0, zmq.POLLIN):
                event = recv_monitor_message(monitor)
                if event["event"] & _FAILED:
                    self.handshake_failed += 1
                    detail = f"a handshake on {socket} failed: {HANDSHAKE_FAILED}"
                    fields = {"event": "handshake_failed", "socket": socket, "detail": detail}
                    self._report(("failed", socket), fields)

    def _verdict(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) < 6:
            request_id = frames[1] if len(frames) > 1 else b""
            return [b"1.0", request_id, b"500", b"malformed ZAP request", b"", b""]
        version, request_id, domain, address, _routing_id, mechanism = frames[:6]
        if version != b"1.0":
            return [b"1.0", request_id, b"500", b"unsupported ZAP version", b"", b""]
        credentials = frames[6:]
        admit = self._admit.get(domain.decode("ascii", "replace"), {})
        key = None
        if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            key = z85.encode(credentials[0])
            name = admit.get(key)
            if name is not None:
                return [b"1.0", request_id, b"200", b"OK", name.encode(), b""]
        socket = next((s for s, d in DOMAINS.items() if d.encode() == domain), "?")
        known = self._known.get(key) if key is not None else None
        if known is None:
            reason = "the key is not on the allow-list"
        elif socket == "publish":
            reason = f"{known!r} lacks the 'read' permission"
        else:
            reason = f"{known!r} is in security.publish_clients only"
        self.unauthenticated += 1
        text = key.decode("ascii") if key is not None else mechanism.decode("ascii", "replace")
        peer = address.decode("ascii", "replace")
        self._report(("denied", socket, key), {
            "event": "denied", "socket": socket, "client": known, "client_key": text,
            "address": peer, "detail": f"{socket} handshake from {peer} denied: {reason} "
                                       f"(key {text})",
        })  # fmt: skip
        return [b"1.0", request_id, b"400", reason.encode(), b"", b""]

    # --- a command ---

    def client_of(self, frame: zmq.Frame) -> str | None:
        """The client name ZAP gave the connection a request came on (None without
        CURVE)."""
        if not self.config.curve:
            return None
        try:
            return str(frame.get("User-Id"))
        except zmq.ZMQError:
            return None

    def authorize(self, client: str | None, cmd: str) -> None:
        """Raise :class:`ControlError` ``forbidden`` unless ``client`` may send ``cmd``."""
        if not self.config.curve:
            return
        try:
            need = required_permission(cmd)
        except KeyError:
            need = "an unclassified command"
        entry = self._clients.get(client or "")
        if entry is not None and (need is None or need in entry.allow):
            return
        self.refused += 1
        if entry is None:  # not a connection ZAP named: cannot happen with CURVE on
            message = f"an unidentified client may not {cmd}"
        else:
            message = (f"client {client!r} may not {cmd}: it needs the {need!r} permission "
                       "(security.control_clients)")  # fmt: skip
        self.report({
            "event": "refused", "socket": "control", "client": client, "command": cmd,
            "needs": need, "detail": message,
        })  # fmt: skip
        raise ControlError("forbidden", message)

    def _report(self, key: tuple[Any, ...], fields: dict[str, Any]) -> None:
        """Report an event unless the same one was reported within REPORT_INTERVAL_S;
        a report says how many were held back since the previous one (``suppressed``)."""
        now = time.monotonic()
        last, held = self._reported.get(key, (-REPORT_INTERVAL_S, 0))
        if now - last < REPORT_INTERVAL_S:
            self._reported[key] = (last, held + 1)
            return
        if len(self._reported) > 1000:  # many distinct keys: forget the quiet ones
            self._reported = {k: v for k, v in self._reported.items()
                              if now - v[0] < REPORT_INTERVAL_S}  # fmt: skip
        self._reported[key] = (now, 0)
        self.report({**fields, "suppressed": held})

    def status(self) -> dict[str, Any]:
        """The ``security`` entry of ``status``."""
        return {
            "curve": self.config.curve,
            "publish_curve": self.config.protects("publish"),
            "refused": self.refused,
            "unauthenticated": self.unauthenticated,
            "handshake_failed": self.handshake_failed,
        }

    def close(self) -> None:
        """After the sockets it protects are closed: until then the handler must answer."""
        for _, monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors.clear()
        if self._zap is not None:
            self._zap.close(linger=0)
            self._zap = None
