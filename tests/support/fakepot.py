"""A scripted potentiostat in its own process for the interlock tests: it stands in for
hardware, so it can send exact values (12 V, -10.5 V) at exact moments and timestamp
the commands it receives with CLOCK_MONOTONIC, which is system-wide on Linux and so
comparable with the test process's, whatever that process's GIL is doing.

stdin, one command a line:
  ``sample EWE CURRENT MODE [DELAY_S]``  send one SAMPLES frame (after DELAY_S)
stdout, one JSON line per happening: ``{"port": p}`` once, ``{"sent_ns": t}`` per sample
(taken just before the write), ``{"cmd": name, "recv_ns": t}`` per command received
(every command gets an ok REPLY).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

import numpy as np
from opsims.link import potentiostat as w

_out = threading.Lock()


def say(**fields: object) -> None:
    with _out:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def main() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    say(port=srv.getsockname()[1])
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    send_lock = threading.Lock()
    seq = [0]

    def send(kind: int, payload: bytes) -> int:
        with send_lock:
            frame = w.encode(kind, seq[0], payload)
            seq[0] += 1
            t = time.monotonic_ns()
            conn.sendall(frame)
            return t

    hello = w.Hello(1, 64, 10**9, 10_000, 10e-6, "fakepot")
    send(w.Kind.HELLO, hello.pack())

    def reader() -> None:
        frames = w.FrameReader()
        while data := conn.recv(65536):
            t = time.monotonic_ns()
            frames.feed(data)
            for f in frames:
                say(cmd=w.Kind(f.kind).name, recv_ns=t)
                send(w.Kind.REPLY, w.Reply(f.sequence, w.ReplyCode.OK).pack())

    threading.Thread(target=reader, daemon=True).start()
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] != "sample":
            continue
        ewe, cur, mode = float(parts[1]), float(parts[2]), int(parts[3])
        if len(parts) > 4:
            time.sleep(float(parts[4]))
        s = np.zeros(1, w.SAMPLE_DTYPE)
        s["tick"] = time.monotonic_ns() // 1000
        s["ewe_v"], s["current_a"], s["mode"] = ewe, cur, mode
        say(sent_ns=send(w.Kind.SAMPLES, w.pack_samples(s)))


if __name__ == "__main__":
    main()
