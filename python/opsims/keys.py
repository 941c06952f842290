"""CURVE keys for opsimsd's sockets (docs/publishing.md, "Security"): making a key pair,
reading key files, and the keys a client presents.

A key file holds one Z85 key (40 characters, ZeroMQ's text form of a 32-byte key) on a
line of its own; lines starting with ``#`` are comments. ``NAME.key`` is the secret
key and must be readable by its owner only; ``NAME.pub`` is the public key, which is
what the daemon's allow-list and the clients' ``OPSIMS_SERVER_KEY`` name. The public
key is derived from the secret one wherever the secret one is read, so a key pair can
never disagree.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

__all__ = [
    "ENV_CLIENT_KEY",
    "ENV_SERVER_KEY",
    "ClientKeys",
    "KeyFileError",
    "derive_public_key",
    "new_key_pair",
    "parse_key",
    "public_key_from",
    "read_public_key",
    "read_secret_key",
]

#: The client's secret key file; its public key is derived from it.
ENV_CLIENT_KEY = "OPSIMS_CLIENT_KEY"
#: The daemon's public key: a ``.pub`` file, or the Z85 text itself.
ENV_SERVER_KEY = "OPSIMS_SERVER_KEY"

_Z85 = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")


class KeyFileError(ValueError):
    """A key that is missing, malformed, or not private enough; the text names the file
    and what to do."""


def parse_key(text: str, what: str) -> bytes:
    """A Z85 key (40 characters) as the bytes ZeroMQ's CURVE options take; ``what``
    names where it came from in the error."""
    key = text.strip()
    if not _Z85.fullmatch(key):
        raise KeyFileError(f"{what}: not a Z85 CURVE key (40 characters), got {_show(key)}")
    try:
        raw = z85.decode(key.encode("ascii"))
    except (ValueError, KeyError, OverflowError) as e:
        raise KeyFileError(f"{what}: not a Z85 CURVE key: {e}") from e
    if len(raw) != 32 or z85.encode(raw).decode("ascii") != key:
        raise KeyFileError(f"{what}: not a Z85 CURVE key (it does not decode to 32 bytes)")
    return key.encode("ascii")


def derive_public_key(secret: bytes) -> bytes:
    """The Z85 public key that belongs to a Z85 secret key."""
    return bytes(zmq.curve_public(secret))


def read_public_key(path: str | Path) -> bytes:
    """A public key file's key (Z85 bytes)."""
    return parse_key(_read(Path(path), "public key"), str(path))


def read_secret_key(path: str | Path) -> bytes:
    """A secret key file's key (Z85 bytes). The file must not be open to group or
    others: a secret key anyone else can read is nobody's key."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read the secret key: {e.strerror}") from e
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: the secret key is open to group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    return parse_key(_read(path, "secret key"), str(path))


def _read(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="ascii")
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read the {what}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise KeyFileError(f"{path}: not a key file (not ASCII text)") from e
    lines = [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]
    if len(lines) != 1:
        raise KeyFileError(f"{path}: expected one Z85 key line, found {len(lines)}")
    return lines[0]


def _show(text: str) -> str:
    """A rejected key for an error message: enough to recognise it, never all of it
    (it may be a secret pasted in the wrong place)."""
    return f"{len(text)} characters" if len(text) > 8 else repr(text)


def new_key_pair(name: str, directory: str | Path = ".") -> tuple[Path, Path, str]:
    """Write ``NAME.key`` (secret, mode 0600) and ``NAME.pub`` (public, 0644) in
    ``directory``; an existing file is never overwritten. Returns both paths and the
    public key (Z85 text)."""
    if not KEY_NAME.fullmatch(name):
        raise KeyFileError(
            f"{name!r}: a key name is letters, digits and _ . @ - (no path), starting "
            "with a letter or digit"
        )
    directory = Path(directory)
    secret_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (secret_path, public_path):
        if path.exists():
            raise KeyFileError(f"{path} exists; not overwriting a key (remove it first)")
    public, secret = zmq.curve_keypair()
    _write_new(secret_path, f"# opsims CURVE secret key {name}: keep it private\n", secret, 0o600)
    try:
        _write_new(public_path, f"# opsims CURVE public key {name}\n", public, 0o644)
    except BaseException:
        secret_path.unlink()
        raise
    return secret_path, public_path, public.decode("ascii")


def _write_new(path: Path, comment: str, key: bytes, mode: int) -> None:
    """Create ``path`` with exactly ``mode`` (not widened by the umask, nor narrowed)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as e:
        raise KeyFileError(f"{path} exists; not overwriting a key (remove it first)") from e
    except OSError as e:
        raise KeyFileError(f"{path}: cannot create: {e.strerror}") from e
    with os.fdopen(fd, "w", encoding="ascii") as f:
        os.fchmod(f.fileno(), mode)
        f.write(comment + key.decode("ascii") + "\n")


@dataclass(frozen=True)
class ClientKeys:
    """What a client presents: its own key pair and the daemon's public key (all Z85
    bytes). With them a socket is a CURVE client (``apply``)."""

    secret_key: bytes
    public_key: bytes
    server_key: bytes

    @classmethod
    def from_files(cls, client_key: str | Path, server_key: str | Path) -> ClientKeys:
        """The client's secret key file, and the daemon's public key as a file or as
        Z85 text."""
        secret = read_secret_key(client_key)
        return cls(secret, derive_public_key(secret), public_key_from(str(server_key)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientKeys | None:
        """From ``OPSIMS_CLIENT_KEY`` and ``OPSIMS_SERVER_KEY``; None when neither is set
        (a plain client). One without the other is an error."""
        env = os.environ if environ is None else environ
        client, server = env.get(ENV_CLIENT_KEY, ""), env.get(ENV_SERVER_KEY, "")
        if not client and not server:
            return None
        if not client or not server:
            missing = ENV_SERVER_KEY if client else ENV_CLIENT_KEY
            raise KeyFileError(
                f"{missing} is not set: a CURVE client needs both {ENV_CLIENT_KEY} (its "
                f"secret key file) and {ENV_SERVER_KEY} (the daemon's public key)"
            )
        try:
            return cls.from_files(client, server)
        except KeyFileError as e:
            raise KeyFileError(f"{ENV_CLIENT_KEY}/{ENV_SERVER_KEY}: {e}") from e

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client of the daemon (before it connects)."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)


def public_key_from(value: str, base_dir: Path | None = None) -> bytes:
    """A public key given as Z85 text, or as the path of a ``.pub`` file (relative to
    ``base_dir`` when given)."""
    path = Path(value) if base_dir is None else base_dir / value
    if _Z85.fullmatch(value.strip()) and not path.exists():
        return parse_key(value, "public key")
    return read_public_key(path)
