"""Who may do what (docs/publishing.md, "Security"): CURVE key files, the [security]
table, the binding policy, and a real daemon (embedded simulator, real sockets) that
admits only allow-listed keys and checks every command against its client's
permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from opsims import ConfigError, wire
from opsims.client import ClientKeys, Control, ControlError, Subscriber
from opsims.daemon.config import DaemonConfig
from opsims.daemon.files import make_dir, open_private
from opsims.daemon.journal import JournalConfig, RunRecord
from opsims.daemon.publisher import Handler, handle_request
from opsims.daemon.safety import SafetyRecord
from opsims.daemon.security import PERMISSIONS, is_local, required_permission
from opsims.export import read_records
from opsims.keys import (
    KeyFileError,
    derive_public_key,
    new_key_pair,
    parse_key,
    read_public_key,
    read_secret_key,
)
from opsims.replay import run_info
from opsims.wire import Message
from support.simproc import default_document, merge, run_daemon, small_raster, to_toml
from support.stream import links_up

SIM = merge(
    small_raster(nx=32, ny=16, dwell_ticks=200_000_000, frames_per_slice=20),
    {"daemon": {"status_interval_s": 0.2},
     "sim": {"acceleration": 100.0, "potentiostat": {"sample_period_s": 0.1},
             "specimen": {"total_rate_hz": 3000.0}}},
)  # fmt: skip
REST = {"name": "rest", "steps": [{"kind": "rest", "duration_s": 100_000}]}
#: Who is on the allow-list, and may do what ("stopper": only what anyone may).
CLIENTS = {
    "reader": ["read"],
    "runner": ["read", "run"],
    "operator": ["read", "run", "reset_interlock"],
    "stopper": [],
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Key pairs for the daemon, the allow-listed clients, a subscriber-only key and a
    stranger; each name maps to its ClientKeys (the daemon's to its key files)."""
    d = tmp_path_factory.mktemp("keys")
    secret, public, _ = new_key_pair("opsimsd", d)
    out: dict[str, Any] = {"dir": d, "server": (secret, public)}
    for name in (*CLIENTS, "watcher", "stranger"):
        new_key_pair(name, d)
        out[name] = ClientKeys.from_files(d / f"{name}.key", public)
    return out


def secured(keys: dict[str, Any], **security: Any) -> dict[str, Any]:
    """The test configuration with CURVE: the clients above (public keys as files, or
    as text for the watcher) and any other [security] settings."""
    d = keys["dir"]
    table = {
        "server_secret_key": str(keys["server"][0]),
        "control_clients": [
            {"name": name, "public_key": str(d / f"{name}.pub"), "allow": allow}
            for name, allow in CLIENTS.items()
        ],
        "publish_clients": [{"name": "watcher", "public_key": keys["watcher"].public_key.decode()}],
        **security,
    }
    return merge(SIM, {"security": table})


# --- key files ------------------------------------------------------------------------


def test_opsims_keys_new_writes_a_private_pair_and_never_overwrites(tmp_path: Path) -> None:
    def keys_new(*args: str) -> subprocess.CompletedProcess[str]:
        # umask 0: the modes must not depend on it.
        return subprocess.run([sys.executable, "-m", "opsims.cli", "keys", "new", *args],
                              capture_output=True, text=True, timeout=60,
                              preexec_fn=lambda: os.umask(0))  # fmt: skip

    done = keys_new("alice", "--dir", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    secret, public = Path(out["secret_key_file"]), Path(out["public_key_file"])
    assert (secret, public) == (tmp_path / "alice.key", tmp_path / "alice.pub")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert read_public_key(public).decode() == out["public_key"]
    assert derive_public_key(read_secret_key(secret)) == read_public_key(public)

    before = secret.read_bytes()
    again = keys_new("alice", "--dir", str(tmp_path))
    assert again.returncode == 1 and "exists; not overwriting" in again.stderr
    assert secret.read_bytes() == before
    assert keys_new("../evil", "--dir", str(tmp_path)).returncode == 1


def test_key_files_that_are_missing_malformed_or_not_private(tmp_path: Path) -> None:
    secret, public, text = new_key_pair("k", tmp_path)
    assert parse_key(text, "x") == text.encode()
    with pytest.raises(KeyFileError, match=r"nope.key: cannot read the secret key"):
        read_secret_key(tmp_path / "nope.key")
    for content, why in (
        ("hello\n", "not a Z85 CURVE key"),
        (f"{text}\n{text}\n", "expected one Z85 key line, found 2"),
        ("# only a comment\n", "found 0"),
        (text[:-1] + " \n", "not a Z85 CURVE key"),
    ):
        bad = tmp_path / "bad.pub"
        bad.write_text(content)
        with pytest.raises(KeyFileError, match=why) as e:
            read_public_key(bad)
        assert str(bad) in str(e.value)
    secret.chmod(0o640)
    with pytest.raises(KeyFileError, match=r"open to group or others \(mode 0640\)") as e:
        read_secret_key(secret)
    assert f"chmod 600 {secret}" in str(e.value)
    # One of the two variables without the other is a mistake, not a plain client.
    assert ClientKeys.from_env({}) is None
    with pytest.raises(KeyFileError, match="OPSIMS_SERVER_KEY is not set"):
        ClientKeys.from_env({"OPSIMS_CLIENT_KEY": str(secret)})
    secret.chmod(0o600)
    keys = ClientKeys.from_env({"OPSIMS_CLIENT_KEY": str(secret), "OPSIMS_SERVER_KEY": text})
    assert keys is not None and keys.public_key == keys.server_key == read_public_key(public)


# --- configuration --------------------------------------------------------------------


def load(tmp_path: Path, override: dict[str, Any]) -> DaemonConfig:
    return DaemonConfig.from_document(merge(default_document(), override), tmp_path / "c.toml")


def test_security_config_errors_name_the_key(tmp_path: Path, keys: dict[str, Any]) -> None:
    server_key = str(keys["server"][0])
    client = {"name": "a", "public_key": str(keys["dir"] / "reader.pub"), "allow": ["read"]}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"bogus": 1}, r"security: unknown key\(s\) bogus"),
        ({"control_clients": [client]}, r"security.control_clients: needs security.server_secret"),
        ({"server_secret_key": server_key}, r"security.control_clients: at least one client"),
        ({"server_secret_key": server_key, "control_clients": [{**client, "allow": ["fly"]}]},
         r"security.control_clients\[0\].allow: unknown permission\(s\) \['fly'\]"),
        ({"server_secret_key": server_key, "control_clients": [{**client, "public_key": "x"}]},
         r"security.control_clients\[0\].public_key: .*cannot read the public key"),
        ({"server_secret_key": server_key, "control_clients": [client, {**client, "name": "b"}]},
         r"security.control_clients\[1\]: the same public key as 'a'"),
        ({"server_secret_key": server_key, "control_clients": [{"name": "a", "allow": []}]},
         r"security.control_clients\[0\].public_key: required key is missing"),
        ({"server_secret_key": "missing.key", "control_clients": [client]},
         r"security.server_secret_key: .*missing.key: cannot read the secret key"),
        ({"publish_curve": True}, r"security.publish_curve: needs security.server_secret_key"),
        ({"server_secret_key": server_key, "control_clients": [client],
          "publish_clients": [{"name": "a", "public_key": str(keys["dir"] / "watcher.pub")}]},
         r"security.publish_clients: 'a' and control client 'a': the same key must have"),
        ({"server_secret_key": server_key,
          "control_clients": [{**client, "public_key": str(keys["server"][1])}]},
         r"security.control_clients: 'a' has the daemon's own key"),
    ]  # fmt: skip
    for table, message in cases:
        with pytest.raises(ConfigError, match=message):
            load(tmp_path, {"security": table})
    # A relative path is found from the configuration's folder.
    (tmp_path / "server.key").write_bytes(keys["server"][0].read_bytes())
    (tmp_path / "server.key").chmod(0o644)
    relative = {"security": {"server_secret_key": "server.key", "control_clients": [client]}}
    with pytest.raises(ConfigError, match=r"server_secret_key: .*chmod 600 .*server.key"):
        load(tmp_path, relative)
    (tmp_path / "server.key").chmod(0o600)
    ok = load(tmp_path, relative)
    assert ok.security.protects("control") and ok.security.protects("publish")
    assert "server_secret_key=" not in repr(ok.security)  # the secret stays out of logs


def test_binding_beyond_loopback_needs_keys(tmp_path: Path, keys: dict[str, Any]) -> None:
    for endpoint, local in (
        ("tcp://127.0.0.1:7411", True), ("tcp://127.0.0.1:*", True), ("tcp://[::1]:7411", True),
        ("tcp://localhost:7411", True), ("tcp://lo:7411", True), ("ipc:///run/opsims/c", True),
        ("tcp://0.0.0.0:7411", False), ("tcp://*:7411", False), ("tcp://192.168.10.5:7411", False),
        ("tcp://eth0:7411", False), ("tcp://[::]:7411", False), ("tcp://lab-pc:7411", False),
    ):  # fmt: skip
        assert is_local(endpoint) is local, endpoint
    anywhere = {"daemon": {"control": "tcp://0.0.0.0:7411"}}
    with pytest.raises(ConfigError) as e:
        load(tmp_path, anywhere)
    message = str(e.value)
    assert message.startswith("daemon.control: tcp://0.0.0.0:7411 can be reached from other hosts")
    assert "security.server_secret_key" in message and "allow_insecure_bind = true" in message
    assert load(tmp_path, merge(anywhere, {"security": {"allow_insecure_bind": True}}))
    # With keys, the control socket is protected; a plain stream on the LAN is not.
    lan = merge(secured(keys, publish_curve=False), {"daemon": {"publish": "tcp://*:7410"}})
    with pytest.raises(ConfigError, match=r"daemon.publish: .*security.publish_curve is false"):
        load(tmp_path, lan)
    assert load(tmp_path, merge(lan, {"security": {"publish_curve": True}}))


def test_a_daemon_on_all_interfaces_without_keys_refuses_to_start(
    tmp_path: Path, keys: dict[str, Any]
) -> None:
    doc = merge(default_document(), merge(SIM, {"daemon": {"control": "tcp://0.0.0.0:*"}}))
    cfg = tmp_path / "open.toml"
    cfg.write_text(to_toml(doc))
    done = subprocess.run([sys.executable, "-m", "opsims.daemon.main", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "daemon.control: tcp://0.0.0.0:* can be reached from other hosts" in done.stderr
    assert "allow_insecure_bind" in done.stderr

    # Allowed on purpose: it starts, and says so.
    insecure = merge(SIM, {"security": {"allow_insecure_bind": True}})
    (tmp_path / "insecure").mkdir()
    with run_daemon(tmp_path / "insecure", insecure, host="0.0.0.0") as daemon:
        with Control(daemon.control) as ctl:
            assert ctl.status()["security"]["curve"] is False
        assert daemon.stop() == 0
        log = daemon.log()
    assert "security: daemon.control: tcp://0.0.0.0:* can be reached" in log
    assert "allowed by security.allow_insecure_bind" in log


# --- permissions ----------------------------------------------------------------------


def test_every_command_has_a_permission_class() -> None:
    assert required_permission("status") == required_permission("snapshot") == "read"
    assert required_permission("start_run") == "run"
    assert required_permission("reset_interlock") == "reset_interlock"
    # Stopping only makes the cell safer: anyone admitted may.
    assert required_permission("stop_run") is required_permission("abort") is None
    assert set(PERMISSIONS) == {"read", "run", "reset_interlock"}


def test_a_forbidden_command_is_refused_before_its_arguments_are_read() -> None:
    called: list[str] = []

    def start_run(protocol: dict[str, Any]) -> dict[str, Any]:
        called.append("start_run")
        return {}

    def authorize(cmd: str) -> None:
        if cmd == "start_run":
            raise ControlError("forbidden", "not you")

    handlers: dict[str, Handler] = {"start_run": start_run, "status": lambda: {"up": True}}
    for frames, ok, code in (
        (wire.encode_request("start_run", nonsense=1), False, "forbidden"),
        (wire.encode_request("dance"), False, "unknown_command"),
        (wire.encode_request("status"), True, None),
    ):
        reply = wire.decode_reply(handle_request(frames, handlers, authorize))
        assert reply.ok is ok and (reply.error or (None,))[0] == code
    assert called == []


def wait_for(sub: Subscriber, until: Callable[[Message], bool], timeout_s: float) -> Message:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = sub.recv(0.2)
        if msg is not None and until(msg):
            return msg
    raise AssertionError("no such message")


def security_event(event: str, **fields: Any) -> Callable[[Message], bool]:
    return lambda m: (
        m.topic == "security"
        and m.fields["event"] == event
        and all(m.fields.get(k) == v for k, v in fields.items())
    )


@pytest.fixture
def daemon_with_keys(tmp_path: Path, keys: dict[str, Any]) -> Iterator[Any]:
    with run_daemon(tmp_path, secured(keys)) as daemon:
        yield daemon


def test_each_client_may_do_what_its_permissions_allow(
    tmp_path: Path, keys: dict[str, Any], daemon_with_keys: Any
) -> None:
    daemon = daemon_with_keys
    with (
        Control(daemon.control, curve=keys["reader"]) as reader,
        Control(daemon.control, curve=keys["runner"]) as runner,
        Control(daemon.control, curve=keys["operator"]) as operator,
        Control(daemon.control, curve=keys["stopper"]) as stopper,
        Subscriber(daemon.publish, ["security"], curve=keys["reader"]) as sub,
    ):
        status = links_up(reader)
        assert status["security"] == {"curve": True, "publish_curve": True, "refused": 0,
                                      "unauthenticated": 0, "handshake_failed": 0}  # fmt: skip
        time.sleep(0.3)  # the subscription reaches the publisher

        # Read-only: status and snapshot, not a run. Refused, published, counted.
        assert reader.snapshot("profile").seq >= -1
        with pytest.raises(ControlError) as e:
            reader.start_run(REST)
        assert e.value.code == "forbidden"
        assert "'reader' may not start_run: it needs the 'run' permission" in e.value.message
        msg = wait_for(sub, security_event("refused", client="reader"), 5)
        assert msg.fields["command"] == "start_run" and msg.fields["needs"] == "run"
        with pytest.raises(ControlError, match="forbidden"):
            stopper.status()  # no permission at all: only stop and abort
        assert reader.status()["security"]["refused"] == 2

        # A run, started and stopped by the client allowed to run it.
        with pytest.raises(ControlError) as e:
            runner.reset_interlock(operator="ana", reason="checked")
        assert e.value.code == "forbidden" and "'reset_interlock' permission" in e.value.message
        first = runner.start_run(REST, operator="ana", reason="test")["run_id"]
        assert runner.status()["run"]["state"] == "running"
        runner.stop_run(operator="ana", reason="done")
        # Permitted, then refused by the interlock itself (not tripped).
        with pytest.raises(ControlError) as e:
            operator.reset_interlock(operator="ana", reason="checked")
        assert e.value.code == "refused"

        # Anyone admitted may abort; a refusal during a run goes into its journal.
        second = runner.start_run(REST)["run_id"]
        with pytest.raises(ControlError, match="forbidden"):
            reader.start_run(REST)
        stopper.abort("the cell looks wrong")
        state = reader.status()["run"]["state"]
        assert state == "aborted", state
        assert reader.status()["security"]["refused"] == 4
        assert daemon.stop() == 0
        log = daemon.log()
    assert "security: client 'reader' may not start_run" in log
    runs = tmp_path / "state" / "runs"
    assert run_info(runs / first)["client"] == "runner"
    control = read_records(runs / second).logs["control"]
    assert [(c.get("command"), c.get("client"), c.get("event")) for c in control] == [
        ("start_run", "runner", None),
        ("start_run", "reader", "refused"),
        ("abort", "stopper", None),
    ]


def test_unknown_or_plain_clients_get_nothing_and_are_counted(
    keys: dict[str, Any], daemon_with_keys: Any
) -> None:
    daemon = daemon_with_keys
    with (
        Control(daemon.control, curve=keys["reader"]) as reader,
        Subscriber(daemon.publish, ["security", "status"], curve=keys["reader"]) as sub,
    ):
        links_up(reader)
        assert sub.recv(5.0) is not None  # subscribed: it will see what is denied now
        # A stranger, a plain client, and a key admitted to the stream only.
        strangers: list[ClientKeys | Literal[False]] = [keys["stranger"], False, keys["watcher"]]
        for curve in strangers:
            with Control(daemon.control, curve=curve, timeout_s=1.0) as ctl:
                with pytest.raises(ControlError) as e:
                    ctl.status()
                assert e.value.code == "timeout"
        denied = wait_for(sub, security_event("denied", socket="control"), 5)
        assert denied.fields["client_key"] == keys["stranger"].public_key.decode()
        assert denied.fields["client"] is None and denied.fields["address"] == "127.0.0.1"

        # An allowed subscriber (allow-listed with "read", or in publish_clients) gets the
        # stream; a stranger, a control client without "read" and a plain one get nothing.
        with Subscriber(daemon.publish, ["status"], curve=keys["watcher"]) as watcher:
            assert watcher.recv(5.0) is not None
        for curve in [keys["stranger"], keys["stopper"], False]:
            with Subscriber(daemon.publish, ["status"], curve=curve) as quiet:
                assert quiet.recv(1.0) is None, curve
        security = reader.status()["security"]
        assert security["unauthenticated"] >= 4  # the stranger, the watcher, on control;
        # and on publish the stranger and the stopper
        assert security["handshake_failed"] >= 2  # the plain clients
        assert security["refused"] == 0
        wait_for(sub, security_event("denied", socket="publish", client="stopper"), 5)
        assert daemon.stop() == 0
    log = daemon.log()
    assert "control handshake from 127.0.0.1 denied: the key is not on the allow-list" in log
    assert "denied: 'watcher' is in security.publish_clients only" in log
    assert "publish handshake from 127.0.0.1 denied: 'stopper' lacks the 'read' permission" in log
    assert "a handshake on control failed: not a CURVE client of this daemon" in log


def test_a_keyless_daemon_admits_plain_clients_and_counts_nothing(tmp_path: Path) -> None:
    with run_daemon(tmp_path, SIM) as daemon, Control(daemon.control, curve=False) as ctl:
        security = links_up(ctl)["security"]
        assert security == {"curve": False, "publish_curve": False, "refused": 0,
                             "unauthenticated": 0, "handshake_failed": 0}  # fmt: skip
        assert daemon.stop() == 0


def test_clients_take_their_keys_from_the_environment(
    tmp_path: Path, keys: dict[str, Any], daemon_with_keys: Any
) -> None:
    daemon = daemon_with_keys
    env = {**os.environ, "OPSIMS_CLIENT_KEY": str(keys["dir"] / "reader.key"),
           "OPSIMS_SERVER_KEY": str(keys["server"][1])}  # fmt: skip

    def opsims(*args: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "opsims.cli", *args, "--control",
                               daemon.control, "--publish", daemon.publish],
                              capture_output=True, text=True, timeout=60, env=environ)  # fmt: skip

    done = opsims("status", "--json", environ=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["security"]["curve"] is True
    protocol = tmp_path / "rest.toml"
    protocol.write_text('name = "rest"\n[[steps]]\nkind = "rest"\nduration_s = 600\n')
    done = opsims("run", str(protocol), environ=env)
    assert done.returncode == 1 and "forbidden: client 'reader' may not start_run" in done.stderr
    half = {k: v for k, v in env.items() if k != "OPSIMS_SERVER_KEY"}
    done = opsims("status", environ=half)
    assert done.returncode == 2 and "OPSIMS_SERVER_KEY is not set" in done.stderr
    assert daemon.stop() == 0


# --- state files ----------------------------------------------------------------------


def test_state_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        state = tmp_path / "state"
        record = SafetyRecord(state)
        record.audit("test")
        record.latch({"reason": "nan", "detail": "x", "trip_host_ns": 1, "sample": None})
        cfg = tmp_path / "c.toml"
        cfg.write_text("")
        run = RunRecord(state / "runs", "run-1", config=JournalConfig(), config_path=cfg,
                        protocol={}, meta={})  # fmt: skip
        run.close_in_background({}).join()
        make_dir(tmp_path / "a" / "b")
        with open_private(tmp_path / "a" / "b" / "f") as f:
            f.write("x")
    finally:
        os.umask(old)
    for path in (state, state / "safety", state / "runs", run.dir, tmp_path / "a" / "b"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o750, path
    files = ["run.json", "config.toml", "protocol.json"]
    for path in (record.audit_path, record.latched_path, *(run.dir / f for f in files),
                 tmp_path / "a" / "b" / "f"):  # fmt: skip
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
