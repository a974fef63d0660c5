# -*- test-case-name: test.test_e2e_p2p -*-
"""Real processes on loopback: p2p tunnels (UDP rendezvous, QUIC between the npcs, relay fallback)."""
from __future__ import annotations

import json
import secrets
import socket
import subprocess
import urllib.request
from typing import Any, Callable

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e


def _provider(server: Any, npc_client: Callable[..., Any], vkey: str, target: str, password: str) -> Any:
    conf = support.render_npc_conf(server.bridge_addr, vkey, {
        "p2p_ssh": {"mode": "p2p", "password": password, "target_addr": target}})
    provider = npc_client(conf=conf, name="provider")
    support.wait_for_log(provider, "tunnel p2p_ssh is open on the server", 30)
    return provider


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _visitor(server: Any, npc_client: Callable[..., Any], vkey: str, password: str, name: str,
             conf: bool = True) -> tuple[Any, int, int]:
    """A p2p visitor npc: from an npc.conf [p2p_...] section (with pprof_addr for /debug) or flags."""
    local_port, debug_port = support.free_port(), support.free_port()
    if conf:
        text = support.render_npc_conf(server.bridge_addr, vkey, {
            "p2p_visit": {"password": password, "local_port": local_port}}, pprof_addr=f"127.0.0.1:{debug_port}")
        proc = npc_client(conf=text, name=name)
    else:
        proc = npc_client(f"-server={server.bridge_addr}", f"-vkey={vkey}", f"-password={password}",
                          "-local_type=p2p", f"-local_port={local_port}", name=name)
    support.wait_for_port("127.0.0.1", local_port, 30, proc=proc)
    support.wait_for_log(proc, "connected to server", 30)
    return proc, local_port, debug_port


def _ssh(sshd: Any, port: int, word: str) -> None:
    result = subprocess.run(sshd.ssh_cmd(port=port) + ["echo", word], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == word


def _debug_p2p(debug_port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/debug", timeout=10) as response:
        return list(json.loads(response.read())["p2p"])


def test_ssh_over_a_direct_p2p_path(nps_server: Callable[..., Any], npc_client: Callable[..., Any],
                                    sshd: Any) -> None:
    """nps.conf p2p_port set: the npcs pair, punch (trivially on loopback) and ssh runs over QUIC
    between them; the path shows as direct in the visitor's log, its /debug and the server's log;
    a second ssh reuses the QUIC connection."""
    p2p_port = free_udp_port()
    server = nps_server(start=False, extra={"p2p_port": p2p_port})
    provider_rec = server.add_client("provider")
    visitor_rec = server.add_client("visitor")
    server.start()
    support.wait_for_log(server.proc, "p2p rendezvous listening", 30)
    # Bad input on p2p_port: garbage and well-formed registrations with made-up tokens are
    # dropped with a log line (at most 5 per 10 s, then one summary) and pair nobody.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(30):
            junk = b"\x00NP2\x01" + secrets.token_bytes(16) if i % 2 else secrets.token_bytes(i + 1)
            s.sendto(junk, ("127.0.0.1", p2p_port))
    support.wait_for_log(server.proc, "unknown or used token", 30)
    support.until(lambda: server.log_text().count("p2p: dropped a datagram") == 5, 30, "five drop lines")
    provider = _provider(server, npc_client, provider_rec.vkey, f"127.0.0.1:{sshd.port}", "p2p-e2e-pw")
    visitor, port, debug_port = _visitor(server, npc_client, visitor_rec.vkey, "p2p-e2e-pw", "visitor")
    _ssh(sshd, port, "hello-over-p2p")
    support.wait_for_log(visitor, "direct path to the provider", 30)
    support.wait_for_log(provider, "direct path from the visitor", 30)
    support.wait_for_log(server.proc, "uses the direct path", 30)
    _ssh(sshd, port, "again-over-p2p")
    assert server.log_text().count("p2p: dropped a datagram") == 5  # rate-limited
    links = support.until(lambda: [link for link in _debug_p2p(debug_port) if link["direct_connections"] >= 2],
                          30, "two direct connections in npc /debug")
    assert links[0]["path"] == "direct"
    assert links[0]["relayed_connections"] == 0


def test_relay_fallback_and_wrong_password(nps_server: Callable[..., Any], npc_client: Callable[..., Any],
                                           sshd: Any) -> None:
    """A server without p2p_port: the visitor relays through the server by itself (and says so);
    a visitor with a wrong password is never paired nor relayed."""
    server = nps_server(start=False)
    provider_rec = server.add_client("provider")
    visitor_rec = server.add_client("visitor")
    server.start()
    _provider(server, npc_client, provider_rec.vkey, f"127.0.0.1:{sshd.port}", "p2p-relay-pw")
    visitor, port, debug_port = _visitor(server, npc_client, visitor_rec.vkey, "p2p-relay-pw", "visitor")
    _ssh(sshd, port, "hello-relayed")
    support.wait_for_log(visitor, "relaying through the server", 30)
    support.wait_for_log(server.proc, "uses the relayed path", 30)
    assert _debug_p2p(debug_port)[0]["path"] == "relayed"

    wrong, wrong_port, _ = _visitor(server, npc_client, visitor_rec.vkey, "not-the-password", "wrong",
                                  conf=False)
    refused = subprocess.run(sshd.ssh_cmd(port=wrong_port) + ["true"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    support.wait_for_log(wrong, "the server refused: wrong password", 30)
    assert "pairing client" not in server.log_text()
