# -*- test-case-name: test.test_e2e_quic_bridge -*-
"""
End-to-end tests of the UDP bridge (C{bridge_type=kcp|quic}; npc
C{-type=kcp|quic} / C{conn_type=}): QUIC through aioquic, the bridge protocol
on one stream.  Real nps and npc processes; the lossy link is a pair of
network namespaces this test makes (veth with C{tc netem loss 2%}) and
removes.  No timing is asserted.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

try:
    from . import support  # type: ignore[import-not-found]
    from .test_e2e_crypt import echo_port, echo_round_trip  # type: ignore[import-not-found]  # noqa: F401
except ImportError:
    import support  # type: ignore[no-redef]
    from test_e2e_crypt import echo_port, echo_round_trip  # type: ignore[no-redef]  # noqa: F401

pytestmark = pytest.mark.e2e

VKEY = "quic-bridge-e2e-public-key-0123"
MIB = 1024 * 1024


def npc_conf(server_addr: str, echo: str, port: int, **common: object) -> str:
    conf = support.render_npc_conf(server_addr, VKEY, {"t1": {"mode": "tcp", "server_ip": "127.0.0.1",
                                                              "server_port": port, "target_addr": echo}},
                                   **common)
    return conf.replace("conn_type=tcp\n", "")


def udp_tunnel(nps_server: Any, npc_client: Any, echo: int, tmp_path: Path, kind: str = "kcp",
               extra: dict[str, object] | None = None) -> tuple[Any, Any, int, Path]:
    server = nps_server(public_vkey=VKEY, extra={"bridge_type": kind, **(extra or {})})
    known = tmp_path / "known_servers"
    port = support.free_port()
    npc = npc_client(conf=npc_conf(server.bridge_addr, f"127.0.0.1:{echo}", port, conn_type=kind,
                                   tls_known_servers=known))
    support.wait_for_log(npc, "tunnel t1 is open on the server")
    support.wait_for_port("127.0.0.1", port, proc=server.proc)
    return server, npc, port, known


def sha_round_trip(port: int, size: int) -> None:
    payload = os.urandom(size)
    back = echo_round_trip(port, payload)
    assert len(back) == size
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_kcp_bridge_carries_20_mib(nps_server: Any, npc_client: Any, echo_port: int, tmp_path: Path) -> None:
    """bridge_type=kcp + conn_type=kcp: the bridge is QUIC on UDP; 20 MiB cross it intact; the cert is pinned."""
    server, npc, port, known = udp_tunnel(nps_server, npc_client, echo_port, tmp_path)
    assert "bridge (UDP, QUIC; bridge_type=kcp) listening on 127.0.0.1:" in server.log_text()
    sha_round_trip(port, 20 * MIB)
    pinned = support.until(lambda: known.read_text().strip(), what="pin written")
    cert = server.data_dir / "bridge_tls" / "cert.pem"
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert pinned == f"{server.bridge_addr} sha256:{hashlib.sha256(der).hexdigest()}"
    # npc talks to the bridge over UDP only: its process has no TCP connection to the bridge port.
    tcp = subprocess.run(["ss", "-Htnp", "dst", server.bridge_addr], capture_output=True, text=True).stdout
    assert f"pid={npc.pid}," not in tcp
    udp = subprocess.run(["ss", "-Huanp"], capture_output=True, text=True).stdout
    assert any(f"pid={npc.pid}," in line for line in udp.splitlines()), udp


def test_npc_reconnects_after_nps_restarts(nps_server: Any, npc_client: Any, echo_port: int,
                                          tmp_path: Path) -> None:
    server, npc, port, _ = udp_tunnel(nps_server, npc_client, echo_port, tmp_path, kind="quic")
    sha_round_trip(port, 1 * MIB)
    server.restart()
    support.until(lambda: support.count_in_log(npc, "tunnel t1 is open on the server") >= 2,
                  what="npc to reconnect and reopen t1", timeout=90)
    support.wait_for_port("127.0.0.1", port, proc=server.proc)
    sha_round_trip(port, 2 * MIB)
    # after kill -9 the server says nothing; npc notices through QUIC's idle timeout and comes back
    assert server.proc is not None
    server.proc.kill()
    server.start()
    support.until(lambda: support.count_in_log(npc, "tunnel t1 is open on the server") >= 3,
                  what="npc to reconnect after kill -9", timeout=120)
    support.wait_for_port("127.0.0.1", port, proc=server.proc)
    sha_round_trip(port, 1 * MIB)


def test_type_flag_and_server_made_client(nps_server: Any, npc_client: Any, echo_port: int,
                                          tmp_path: Path) -> None:
    """npc -type=quic with a client and tunnel made by `nps client add` / `nps tunnel add`."""
    server = nps_server(start=False, extra={"bridge_type": "quic"})
    client = server.add_client("quic")
    assert client.id is not None
    public = support.free_port()
    server.add_tunnel(client.id, public, f"127.0.0.1:{echo_port}")
    server.start()
    npc = npc_client(f"-server={server.bridge_addr}", f"-vkey={client.vkey}", "-type=quic",
                     f"-tls_known_servers={tmp_path / 'known'}")
    support.wait_for_log(npc, "connected to server")
    support.wait_for_port("127.0.0.1", public, proc=server.proc)
    sha_round_trip(public, 3 * MIB)
    # the TCP bridge stays on the same port number beside the UDP one
    assert support.port_open("127.0.0.1", server.bridge_port)


def test_wrong_vkey_and_garbage_are_refused(nps_server: Any, npc_client: Any, echo_port: int,
                                            tmp_path: Path) -> None:
    """Junk datagrams and a wrong vkey over QUIC: clear errors, and the server keeps serving."""
    server, npc, port, _ = udp_tunnel(nps_server, npc_client, echo_port, tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for size in (1, 40, 1200, 1400):
            for _ in range(20):
                sock.sendto(os.urandom(size), ("127.0.0.1", server.bridge_port))
        # a QUIC-looking Initial header with garbage after it
        sock.sendto(b"\xc3\x00\x00\x00\x01\x08" + os.urandom(1300), ("127.0.0.1", server.bridge_port))
    bad = npc_client(f"-server={server.bridge_addr}", "-vkey=not-the-right-key-at-all", "-type=kcp",
                     f"-tls_known_servers={tmp_path / 'known2'}", name="npc-bad")
    code = support.until(lambda: bad.poll() is not None and bad.returncode, what="bad npc to stop", timeout=60)
    assert code == 1
    assert "refused" in bad.log_text()
    assert "handshake from" in server.log_text()
    sha_round_trip(port, 1 * MIB)
    assert server.proc is not None and server.proc.alive


def test_changed_certificate_is_refused(nps_server: Any, npc_client: Any, echo_port: int,
                                        tmp_path: Path) -> None:
    server, npc, port, known = udp_tunnel(nps_server, npc_client, echo_port, tmp_path)
    support.until(lambda: known.exists() and known.read_text().strip(), what="pin written")
    npc.stop()
    server.stop()
    shutil.rmtree(server.data_dir / "bridge_tls")  # the server gets a new certificate
    server.start()
    npc2 = npc_client(conf=npc_conf(server.bridge_addr, f"127.0.0.1:{echo_port}", support.free_port(),
                                    conn_type="kcp", tls_known_servers=known), name="npc2")
    code = support.until(lambda: npc2.poll() is not None and npc2.returncode, what="npc to stop", timeout=60)
    assert code == 1
    log = npc2.log_text()
    assert "on the UDP bridge" in log and str(known) in log and "delete that line" in log


# -- a lossy link --------------------------------------------------------------------------


def _run(*argv: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


@pytest.fixture
def lossy_pair() -> Iterator[dict[str, str]]:
    """Two namespaces joined by a veth pair dropping 2% of packets each way; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("socat") is None:
        pytest.skip("needs root, ip and socat")
    tag = secrets.token_hex(3)
    net = 16 + secrets.randbelow(200)
    pair = {"srv": f"q{tag}s", "cli": f"q{tag}c", "srv_ip": f"10.{net}.77.1", "cli_ip": f"10.{net}.77.2"}
    made: list[str] = []
    try:
        for role in ("srv", "cli"):
            _run("ip", "netns", "add", pair[role])
            made.append(pair[role])
        _run("ip", "link", "add", f"v{tag}s", "netns", pair["srv"], "type", "veth", "peer", "name", f"v{tag}c",
             "netns", pair["cli"])
        for role, side in (("srv", "s"), ("cli", "c")):
            ns = ["ip", "netns", "exec", pair[role]]
            _run(*ns, "ip", "addr", "add", f"{pair[role + '_ip']}/24", "dev", f"v{tag}{side}")
            _run(*ns, "ip", "link", "set", f"v{tag}{side}", "up")
            _run(*ns, "ip", "link", "set", "lo", "up")
            try:
                _run(*ns, "tc", "qdisc", "add", "dev", f"v{tag}{side}", "root", "netem", "loss", "2%")
                pair["loss"] = "tc netem loss 2%"
            except RuntimeError as netem_error:
                # No sch_netem in this kernel (containers often lack it): drop 2% with iptables instead.
                try:
                    _run(*ns, "iptables", "-A", "OUTPUT", "-o", f"v{tag}{side}", "-m", "statistic",
                         "--mode", "random", "--probability", "0.02", "-j", "DROP")
                    pair["loss"] = "iptables statistic 2%"
                except RuntimeError as e:
                    pytest.skip(f"no way to lose packets: tc netem ({netem_error}), iptables ({e})")
    except RuntimeError as e:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        pytest.skip(f"cannot build namespaces: {e}")
    yield pair
    for name in made:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:  # only processes inside our own namespaces
            try:
                os.kill(int(pid), 9)
            except (OSError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


ECHO_AND_CHECK = r"""
import hashlib, os, socket, sys, threading
port, size = int(sys.argv[1]), int(sys.argv[2])
payload = os.urandom(size)
with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
    got = bytearray()
    def reader():
        while True:
            data = sock.recv(1 << 18)
            if not data:
                return
            got.extend(data)
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    t.join(300)
print("MATCH" if hashlib.sha256(got).digest() == hashlib.sha256(payload).digest() else f"DIFF {len(got)}")
"""


def test_lossy_link_transfer_completes(lossy_pair: dict[str, str], tmp_path: Path) -> None:
    """nps and npc in two namespaces over a veth losing 2% each way: a tunnel over the kcp bridge still delivers."""
    srv = ["ip", "netns", "exec", lossy_pair["srv"]]
    cli = ["ip", "netns", "exec", lossy_pair["cli"]]
    bridge_port, public, echo = 18024, 18080, 18090
    data = tmp_path / "data"
    data.mkdir()
    conf = tmp_path / "nps.conf"
    conf.write_text(support.render_nps_conf({"bridge_type": "kcp", "bridge_ip": "0.0.0.0", "bridge_port": bridge_port,
                                             "data_dir": data, "public_vkey": VKEY}))
    procs = []
    try:
        nps = support.Proc(srv + [str(support.VENV_BIN / "nps"), "--config", str(conf)], tmp_path / "nps.log",
                           name="nps")
        procs.append(nps)
        support.wait_for_log(nps, "bridge (UDP, QUIC")
        echo_server = support.Proc(cli + ["socat", f"TCP-LISTEN:{echo},bind=127.0.0.1,fork,reuseaddr", "EXEC:cat"],
                                   tmp_path / "socat.log", name="socat")
        procs.append(echo_server)
        npc_file = tmp_path / "npc.conf"
        npc_file.write_text(npc_conf(f"{lossy_pair['srv_ip']}:{bridge_port}", f"127.0.0.1:{echo}", public,
                                     conn_type="kcp", tls_known_servers=tmp_path / "known"))
        npc = support.Proc(cli + [str(support.VENV_BIN / "npc"), f"-config={npc_file}"], tmp_path / "npc.log",
                           name="npc")
        procs.append(npc)
        support.wait_for_log(npc, "tunnel t1 is open on the server", timeout=90)
        script = tmp_path / "check.py"
        script.write_text(ECHO_AND_CHECK)
        done = subprocess.run(srv + [sys.executable, str(script), str(public), str(4 * MIB)],
                              capture_output=True, text=True, timeout=600)
        assert done.stdout.strip() == "MATCH", (done.stdout, done.stderr, npc.log_tail(), nps.log_tail())
        # the loss really happened on the bridge path (iptables counts its drops)
        if lossy_pair["loss"].startswith("iptables"):
            counters = subprocess.run(cli + ["iptables", "-nvx", "-L", "OUTPUT"], capture_output=True,
                                      text=True).stdout
            dropped = [int(line.split()[0]) for line in counters.splitlines() if "DROP" in line and "statistic" in line]
            assert dropped and dropped[0] > 0, counters
    finally:
        for proc in reversed(procs):
            proc.stop()
