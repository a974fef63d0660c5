# -*- test-case-name: test.test_e2e_reload -*-
"""Real processes: SIGHUP makes npc re-read npc.conf without dropping the tunnels that stay."""
from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any, Callable

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e


def echo_once(conn: socket.socket, payload: bytes) -> bytes:
    conn.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = conn.recv(4096)
        assert chunk, "connection closed"
        got += chunk
    return got


def test_sighup_reloads_npc_conf(nps_server: Callable[..., Any], npc_client: Callable[..., Any],
                                 spawn: Callable[..., Any], tmp_path: Path) -> None:
    """After editing npc.conf and sending SIGHUP, a new tunnel opens, a removed one closes, and a
    connection through the unchanged tunnel keeps working."""
    script = tmp_path / "echo.py"
    script.write_text(
        "import socket, threading\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(16); print('listening', s.getsockname()[1], flush=True)\n"
        "def h(c):\n"
        "    while True:\n"
        "        d = c.recv(4096)\n"
        "        if not d: break\n"
        "        c.sendall(d)\n"
        "while True:\n"
        "    c, _ = s.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()\n")
    echo = spawn(["python3", str(script)], name="echo")
    target = f"127.0.0.1:{int(support.wait_for_log(echo, 'listening', 30).split()[-1])}"
    key = "reload-public-key-0123456789abcdef"
    server = nps_server(public_vkey=key)
    keep, drop, new = support.free_port(), support.free_port(), support.free_port()

    def conf(ports: dict[str, int]) -> str:
        return support.render_npc_conf(server.bridge_addr, key, {
            name: {"mode": "tcp", "server_port": port, "server_ip": "127.0.0.1", "target_addr": target}
            for name, port in ports.items()})

    npc = npc_client(conf=conf({"keep": keep, "drop": drop}))
    support.wait_for_port("127.0.0.1", keep, 30, proc=npc)
    support.wait_for_port("127.0.0.1", drop, 30, proc=npc)
    with socket.create_connection(("127.0.0.1", keep), timeout=10) as held:
        assert echo_once(held, b"before") == b"before"
        conf_path = Path(npc.log_path).with_suffix(".conf")  # where the npc_client fixture wrote it
        assert conf_path.exists(), conf_path
        conf_path.write_text(conf({"keep": keep, "new": new}))
        npc.kill(signal.SIGHUP)
        support.wait_for_port("127.0.0.1", new, 30, proc=npc)
        support.until(lambda: not _accepts(drop), timeout=30, what=f"port {drop} closed")
        assert echo_once(held, b"after") == b"after"
    with socket.create_connection(("127.0.0.1", new), timeout=10) as fresh:
        assert echo_once(fresh, b"new") == b"new"
    assert npc.alive


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False
