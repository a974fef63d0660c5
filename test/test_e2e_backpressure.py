# -*- test-case-name: test.test_e2e_backpressure -*-
"""Real processes: a user who stops reading holds back only their own stream.

A target pours data into a tunnel whose user never reads. With flow control
working end to end the kernel buffers fill, nps pauses that stream, npc stops
reading the target, and the memory of nps and npc stays flat; meanwhile a
second connection over the same bridge keeps working.
"""
from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

#: A TCP server on 127.0.0.1 that prints its port, then for every connection
#: sends zeros as fast as the peer takes them (at most 4 GiB), or echoes when
#: the first byte it reads is "e".
POUR_SERVER = r"""
import socket, sys, threading
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
print("listening", srv.getsockname()[1], flush=True)
def handle(c):
    try:
        first = c.recv(1)
        if first == b"e":
            c.sendall(first)
            while True:
                data = c.recv(65536)
                if not data:
                    break
                c.sendall(data)
        else:
            block = bytes(1 << 20)
            for _ in range(4096):
                c.sendall(block)
    except OSError:
        pass
    finally:
        c.close()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def start_pour_server(spawn: Callable[..., Any], tmp_path: Path) -> int:
    script = tmp_path / "pour.py"
    script.write_text(POUR_SERVER)
    proc = spawn([sys.executable, str(script)], name="pour")
    line = support.wait_for_log(proc, "listening", 30)
    return int(line.split()[-1])


def test_stalled_reader_keeps_memory_flat_and_others_flowing(
    nps_server: Callable[..., Any], npc_client: Callable[..., Any], spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """200+ MiB offered to a user who never reads: nps/npc RSS grows by less than 64 MiB and
    another connection through the same tunnel still echoes promptly."""
    target = start_pour_server(spawn, tmp_path)
    key = "backpressure-public-key-0123456789"
    server = nps_server(public_vkey=key)
    port = support.free_port()
    npc = npc_client(conf=support.render_npc_conf(
        server.bridge_addr, key, {"pour": {"mode": "tcp", "target_addr": f"127.0.0.1:{target}",
                                           "server_port": port, "server_ip": "127.0.0.1"}}))
    support.wait_for_port("127.0.0.1", port, 30, proc=npc)
    before = {"nps": rss_kib(server.proc.pid), "npc": rss_kib(npc.pid)}

    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    stalled.sendall(b"p")  # ask for the flood, then never read
    try:
        time.sleep(3)  # let every buffer on the path fill up
        peaks = dict(before)
        for _ in range(10):  # sample while the target keeps trying to send
            peaks = {"nps": max(peaks["nps"], rss_kib(server.proc.pid)),
                     "npc": max(peaks["npc"], rss_kib(npc.pid))}
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as other:
            other.sendall(b"e" + b"still flowing")
            got = b""
            while len(got) < 14:
                chunk = other.recv(100)
                assert chunk, "the second connection was closed"
                got += chunk
        assert got == b"e" + b"still flowing"
    finally:
        stalled.close()
    growth = {name: peaks[name] - before[name] for name in before}
    assert growth["nps"] < 64 * 1024 and growth["npc"] < 64 * 1024, growth
