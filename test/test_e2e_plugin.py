# -*- test-case-name: test.test_e2e_plugin -*-
"""A proxy mode from a package outside nps is found through twisted.plugin and used end to end."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

PLUGIN_DIR = Path(__file__).resolve().parent / "third_party_plugin"


def test_third_party_mode_runs_on_server_and_npc(
    nps_server: Callable[..., Any], npc_client: Callable[..., Any]
) -> None:
    """With the plugin's directory on PYTHONPATH, npc.conf mode=shout opens a port on nps and npc answers."""
    env = dict(os.environ, PYTHONPATH=str(PLUGIN_DIR))
    key = "third-party-plugin-public-key-42"
    server = nps_server(public_vkey=key, env=env)
    port = support.free_port()
    npc = npc_client(conf=support.render_npc_conf(
        server.bridge_addr, key, {"loud": {"mode": "shout", "server_port": port, "server_ip": "127.0.0.1"}}),
        env=env)
    support.wait_for_port("127.0.0.1", port, 30, proc=npc)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"hello plugin")
        answer = b""
        while not answer.endswith(b"HELLO PLUGIN"):
            chunk = conn.recv(100)
            assert chunk, f"closed early after {answer!r}"
            answer += chunk
    assert answer == b"%d:HELLO PLUGIN" % npc.pid
    assert "not supported" not in npc.log_text()


def test_unknown_mode_without_the_plugin_is_a_config_error(npc_client: Callable[..., Any], tmp_path: Path) -> None:
    """Without the plugin on the path, mode=shout stops npc at start-up naming the file, line and key."""
    npc = npc_client(conf="[common]\nserver_addr=127.0.0.1:1\nvkey=k\n[loud]\nmode=shout\nserver_port=9\n")
    assert npc.wait(timeout=30) != 0
    assert "mode" in npc.log_text() and "shout" in npc.log_text()
