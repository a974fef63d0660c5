# -*- test-case-name: test.test_e2e_p2p_nat -*-
"""p2p through real NATs: network namespaces with iptables MASQUERADE routers.

With endpoint-independent mapping (plain MASQUERADE keeps the source port)
the npcs punch through and the payload goes straight between them: the
server's namespace receives far fewer bytes than were sent. With a symmetric
NAT (--random-fully) punching fails and the visitor relays by itself. ssh
runs to a real sshd in the provider's namespace both ways.
"""
from __future__ import annotations

import secrets
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

try:
    from . import netns, support  # type: ignore[import-not-found]
except ImportError:
    import netns  # type: ignore[no-redef]
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

VKEY = "p2p-nat-public-vkey-" + "x" * 16
PASSWORD = "p2p-nat-password"
PAYLOAD = 4 * 1024 * 1024


@pytest.fixture(params=[False, True], ids=["eim", "symmetric"])
def nat(request: pytest.FixtureRequest) -> Iterator[netns.Topology]:
    try:
        netns.check()
    except netns.Unavailable as e:
        pytest.skip(f"cannot build network namespaces: {e}")
    topology = netns.Topology(random_fully=bool(request.param))
    try:
        yield topology.build()
    finally:
        topology.destroy()


def _start(topology: netns.Topology, tmp: Path, procs: list[Any]) -> tuple[Any, Any, Any, Any, int]:
    bridge_port, p2p_port, local_port = 8024, 6000, 2000
    data = tmp / "data"
    data.mkdir()
    conf = tmp / "nps.conf"
    conf.write_text(support.render_nps_conf({"bridge_type": "tcp", "bridge_ip": "0.0.0.0", "bridge_port": bridge_port,
                                             "data_dir": data, "public_vkey": VKEY, "p2p_port": p2p_port}))
    server = support.Proc(topology.exec("srv", [str(support.VENV_BIN / "nps"), "--config", str(conf)]),
                          tmp / "nps.log", name="nps")
    procs.append(server)
    support.wait_for_log(server, "p2p rendezvous listening", 30)

    sshd = support.SSHD(tmp / "sshd")
    sshd.proc = support.Proc(topology.exec("peerA", [support.SSHD_BIN, "-D", "-e", "-f", str(sshd.config)]),
                             sshd.log_path, name="sshd")
    procs.append(sshd.proc)
    support.wait_for_log(sshd.proc, "Server listening", 30)

    addr = f"{topology.server_ip}:{bridge_port}"
    provider_conf = tmp / "provider.conf"
    provider_conf.write_text(support.render_npc_conf(addr, VKEY, {
        "p2p_ssh": {"mode": "p2p", "password": PASSWORD, "target_addr": f"127.0.0.1:{sshd.port}"}}))
    provider = support.Proc(topology.exec("peerA", [str(support.VENV_BIN / "npc"), f"-config={provider_conf}"]),
                            tmp / "provider.log", name="provider")
    procs.append(provider)
    support.wait_for_log(provider, "tunnel p2p_ssh is open on the server", 30)
    visitor_conf = tmp / "visitor.conf"
    visitor_conf.write_text(support.render_npc_conf(addr, VKEY, {
        "p2p_visit": {"password": PASSWORD, "local_port": local_port}}))
    visitor = support.Proc(topology.exec("peerB", [str(support.VENV_BIN / "npc"), f"-config={visitor_conf}"]),
                           tmp / "visitor.log", name="visitor")
    procs.append(visitor)
    support.wait_for_log(visitor, "connected to server", 30)
    return server, sshd, provider, visitor, local_port


def test_p2p_through_nat(nat: netns.Topology, tmp_path: Path) -> None:
    procs: list[Any] = []
    try:
        server, sshd, provider, visitor, port = _start(nat, tmp_path, procs)
        word = secrets.token_hex(4)
        ssh = nat.exec("peerB", sshd.ssh_cmd(port=port) + ["echo", word])
        result = subprocess.run(ssh, capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == word
        if nat.random_fully:
            support.wait_for_log(visitor, "relaying through the server", 30)
            support.wait_for_log(server, "uses the relayed path", 30)
            assert "direct path to the provider" not in visitor.log_text()
        else:
            support.wait_for_log(visitor, "direct path to the provider", 30)
            support.wait_for_log(server, "uses the direct path", 30)
        # Bulk data through ssh: count what reached the server's sockets meanwhile.
        before = nat.server_input_bytes()
        bulk = nat.exec("peerB", sshd.ssh_cmd(port=port) + ["head", "-c", str(PAYLOAD), "/dev/urandom"])
        received = subprocess.run(bulk, capture_output=True, timeout=120)
        assert received.returncode == 0, received.stderr
        assert len(received.stdout) == PAYLOAD
        through_server = nat.server_input_bytes() - before
        if nat.random_fully:
            assert through_server > PAYLOAD  # relayed: every byte crossed the server
        else:
            assert through_server < PAYLOAD // 20, f"{through_server} bytes reached the server"
    finally:
        for proc in reversed(procs):
            proc.stop()
