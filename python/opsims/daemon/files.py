"""Modes of what the daemon writes under its state directory: never writable, nor
readable, by other users, whatever the umask it was started with (the systemd unit's
``UMask=0027`` says the same; this holds without it). The native journal writer's
segments inherit the protection of the run directory they are in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

#: At most: the umask can only take bits away.
DIR_MODE = 0o750
FILE_MODE = 0o640


def make_dir(path: Path, *, exist_ok: bool = True) -> None:
    """``path`` and its missing parents, each created with at most ``DIR_MODE``."""
    if not path.parent.exists():
        make_dir(path.parent)
    path.mkdir(mode=DIR_MODE, exist_ok=exist_ok)


def open_private(path: Path, mode: str = "w") -> IO[Any]:
    """``open(path, mode)``, a file it creates getting at most ``FILE_MODE``."""
    return open(path, mode, opener=lambda p, flags: os.open(p, flags, FILE_MODE))
