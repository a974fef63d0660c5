# -*- test-case-name: test.test_e2e_udp -*-
"""
End-to-end tests of the C{udp} mode with real processes on loopback.

A real C{nps} (with C{public_vkey}) and a real C{npc} in config-file mode
(an npc.conf C{[udp]} section) tunnel datagrams to targets started here: a
small Python UDP echo server (subprocess) and C{dnsmasq} (answering only its
own names, no upstream). Clients are plain Python sockets and C{dig}. Only
127.0.0.1 is used. No timing is asserted: replies are waited for with
bounded polls and each datagram is retried a few times (UDP may drop).
"""
from __future__ import annotations

import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
from typing import Any, Callable, Iterator

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

Proc = support.Proc
VKEY = "udp-e2e-public-key"

#: A UDP echo server on 127.0.0.1 (port printed as C{listening PORT}): every
#: datagram goes back to its sender as it is, 0 bytes included.
UDP_ECHO = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind(("127.0.0.1", 0))
print("listening", s.getsockname()[1], flush=True)
while True:
    data, addr = s.recvfrom(65535)
    try:
        s.sendto(data, addr)
    except OSError as e:
        print("sendto failed", addr, len(data), e, flush=True)
"""

DNS_NAME = "example.test"
DNS_ANSWER = "10.9.8.7"


# ------------------------------------------------------------- helpers ---


def free_udp_port() -> int:
    """A UDP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_udp_echo(spawn: Callable[..., Proc]) -> int:
    """Start L{UDP_ECHO}; return its port."""
    proc = spawn([sys.executable, "-c", UDP_ECHO], name="udp-echo")
    line = support.wait_for_log(proc, "listening ")
    return int(line.split()[1])


def udp_socket(timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    return s


def exchange(sock: socket.socket, port: int, payload: bytes, tries: int = 4, wait: float = 3.0) -> bytes:
    """
    Send C{payload} to 127.0.0.1:C{port} until a datagram equal to it comes
    back (at most C{tries} sends); return it or the last datagram seen.
    """
    last = b"<nothing received>"
    for _ in range(tries):
        sock.sendto(payload, ("127.0.0.1", port))
        for _ in range(20):  # stale replies of earlier tries are skipped
            ready, _, _ = select.select([sock], [], [], wait)
            if not ready:
                break
            data = sock.recv(65535)
            if data == payload:
                return data
            last = data
    return last


def udp_tunnel(
    nps_server: Callable[..., Any],
    npc_client: Callable[..., Proc],
    target: str,
    *,
    nps_env: dict[str, str] | None = None,
    npc_env: dict[str, str] | None = None,
) -> tuple[Any, Proc, int]:
    """
    nps with C{public_vkey} and an npc whose npc.conf has one C{mode=udp}
    section to C{target}. Returns (server, npc, public UDP port).
    """
    server = nps_server(public_vkey=VKEY, env=nps_env)
    port = free_udp_port()
    conf = support.render_npc_conf(
        server.bridge_addr, VKEY,
        {"udp1": {"mode": "udp", "server_ip": "127.0.0.1", "server_port": port, "target_addr": target}},
    )
    npc = npc_client(conf=conf, env=npc_env)
    support.wait_for_log(npc, "tunnel udp1 is open on the server")
    return server, npc, port


def sessions_of(server: Any, remote: str, what: str) -> int:
    """Server log lines saying C{what} (e.g. "session opened") about peer C{remote}."""
    return sum(1 for line in server.log_text().splitlines() if f"udp {remote} ->" in line and what in line)


# ------------------------------------------------------------- DNS bits ---


def dns_query(qid: int, name: str = DNS_NAME) -> bytes:
    """A DNS query for the A record of C{name} (recursion desired, no EDNS)."""
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def dns_answer_ok(reply: bytes, qid: int, address: str = DNS_ANSWER) -> bool:
    """True if C{reply} answers query C{qid} (NOERROR) with the A record C{address}."""
    if len(reply) < 12:
        return False
    rid, flags, _, ancount, _, _ = struct.unpack("!HHHHHH", reply[:12])
    record = struct.pack("!HHIH", 1, 1, 0, 4)[:4]  # TYPE A, CLASS IN
    return (rid == qid and flags & 0x8000 and flags & 0x000F == 0 and ancount >= 1
            and record in reply[12:] and socket.inet_aton(address) in reply[12:])


@pytest.fixture
def dnsmasq(spawn: Callable[..., Proc]) -> Iterator[int]:
    """
    dnsmasq on 127.0.0.1:<free port> answering only C{example.test} (no
    upstream, no hosts file); yields its port. Skipped if dnsmasq is absent
    (Debian package C{dnsmasq-base}).
    """
    binary = shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None)
    if binary is None:
        pytest.skip("dnsmasq is not installed (Debian package: dnsmasq-base)")
    port = free_udp_port()
    proc = spawn([binary, "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                  "--no-resolv", "--no-hosts", f"--address=/{DNS_NAME}/{DNS_ANSWER}", "--conf-file=/dev/null",
                  "--pid-file="], name="dnsmasq")

    def answers() -> bool:
        with udp_socket(1.0) as s:
            return dns_answer_ok(exchange_dns(s, port, 7), 7)

    support.until(answers, 30, f"dnsmasq answering on 127.0.0.1:{port} (log {proc.log_path})")
    yield port


def exchange_dns(sock: socket.socket, port: int, qid: int) -> bytes:
    """Ask 127.0.0.1:C{port} for C{example.test}; the reply with id C{qid} (or b"")."""
    for _ in range(3):
        sock.sendto(dns_query(qid), ("127.0.0.1", port))
        ready, _, _ = select.select([sock], [], [], 2.0)
        if ready:
            reply = sock.recv(65535)
            if reply[:2] == struct.pack("!H", qid):
                return reply
    return b""


def dig(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )


# --------------------------------------------------------------- tests ---


def test_datagrams_of_all_sizes_come_back_intact(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc]
) -> None:
    """
    Through a udp tunnel to an echo server, datagrams from 0 bytes to 65507
    bytes (the IPv4 maximum) of random content come back byte for byte, one
    reply per datagram (boundaries kept); then a window of 300 small
    datagrams in flight all come back too.
    """
    echo = start_udp_echo(spawn)
    server, npc, port = udp_tunnel(nps_server, npc_client, f"127.0.0.1:{echo}")
    sizes = [0, 1, 2, 3, 7, 100, 512, 1400, 1500, 4096, 8192, 8193, 16384, 30000, 60000, 65000, 65507]
    sizes += random.sample(range(1, 65508), 8)
    with udp_socket() as s:
        for size in sizes:
            payload = os.urandom(size)
            got = exchange(s, port, payload)
            assert got == payload, f"{size}-byte datagram came back as {len(got)} bytes"

        # Pipelined: up to 16 in flight; every payload names itself, so each is checked.
        expected = {b"%05d:" % i + os.urandom(random.randint(0, 1500)) for i in range(300)}
        pending = sorted(expected)
        received: set[bytes] = set()
        in_flight = 0
        for _ in range(5000):
            while pending and in_flight < 16:
                s.sendto(pending.pop(), ("127.0.0.1", port))
                in_flight += 1
            if not in_flight:
                break
            ready, _, _ = select.select([s], [], [], 10.0)
            if not ready:
                break
            received.add(s.recv(65535))
            in_flight -= 1
        assert received == expected, f"{len(expected - received)} of 300 datagrams lost or changed"
    assert "Traceback" not in server.log_text() and "Traceback" not in npc.log_text()


def test_concurrent_peers_get_only_their_own_replies(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc]
) -> None:
    """
    Five peers (separate sockets) send interleaved datagrams through one
    udp tunnel; each receives all of its own replies and none of another
    peer's, and the server opened one session per peer.
    """
    echo = start_udp_echo(spawn)
    server, _, port = udp_tunnel(nps_server, npc_client, f"127.0.0.1:{echo}")
    peers = [udp_socket() for _ in range(5)]
    try:
        rounds = 20
        for n in range(rounds):
            for i, s in enumerate(peers):
                s.sendto(b"peer%d-round%d" % (i, n), ("127.0.0.1", port))
        for i, s in enumerate(peers):
            got: set[bytes] = set()
            for _ in range(rounds * 3):
                if len(got) == rounds:
                    break
                ready, _, _ = select.select([s], [], [], 10.0)
                if not ready:
                    break
                data = s.recv(65535)
                assert data.startswith(b"peer%d-" % i), f"peer {i} received {data!r}"
                got.add(data)
            missing = {b"peer%d-round%d" % (i, n) for n in range(rounds)} - got
            # UDP may drop: retry what is missing, one at a time.
            for payload in sorted(missing):
                assert exchange(s, port, payload) == payload
        for s in peers:
            remote = "127.0.0.1:%d" % s.getsockname()[1]
            assert sessions_of(server, remote, "session opened") == 1
    finally:
        for s in peers:
            s.close()


def test_dns_through_udp_tunnel(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], dnsmasq: int
) -> None:
    """
    dig through a udp tunnel to a real dnsmasq gets C{example.test} =
    10.9.8.7; 50 concurrent queries from 50 sockets are all answered
    correctly; garbage datagrams to the tunnel hurt nothing (dig still works).
    """
    if shutil.which("dig") is None:
        pytest.skip("dig is not installed (Debian package: bind9-dnsutils)")
    server, npc, port = udp_tunnel(nps_server, npc_client, f"127.0.0.1:{dnsmasq}")
    res = dig(port, DNS_NAME, "+short", "+time=3", "+tries=3")
    assert res.returncode == 0 and res.stdout.split() == [DNS_ANSWER], res.stdout + res.stderr

    socks = [udp_socket() for _ in range(50)]
    try:
        for qid, s in enumerate(socks, 1000):
            s.sendto(dns_query(qid), ("127.0.0.1", port))
        answered: set[int] = set()
        for qid, s in enumerate(socks, 1000):
            ready, _, _ = select.select([s], [], [], 10.0)
            if ready and dns_answer_ok(s.recv(65535), qid):
                answered.add(qid)
        for qid, s in enumerate(socks, 1000):  # UDP may drop: ask again once per missing answer
            if qid not in answered and dns_answer_ok(exchange_dns(s, port, qid), qid):
                answered.add(qid)
        assert len(answered) == 50
    finally:
        for s in socks:
            s.close()

    with udp_socket() as s:
        for size in (0, 1, 5, 11, 12, 13, 300, 1400, 65507):
            s.sendto(os.urandom(size), ("127.0.0.1", port))
        s.sendto(b"\xff" * 12, ("127.0.0.1", port))
    res = dig(port, DNS_NAME, "+short", "+time=3", "+tries=3")
    assert res.returncode == 0 and res.stdout.split() == [DNS_ANSWER], res.stdout + res.stderr
    assert "Traceback" not in server.log_text() and "Traceback" not in npc.log_text()


@pytest.mark.parametrize("side", ["nps", "npc"])
def test_idle_session_expires(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc], side: str
) -> None:
    """
    With C{NPS_UDP_IDLE_TIMEOUT=1} on one side (nps or npc), a peer's session
    ends after a second of silence and the server forgets it; the same peer
    then gets a new session and its datagrams flow again.
    """
    echo = start_udp_echo(spawn)
    short = {"NPS_UDP_IDLE_TIMEOUT": "1"}
    server, npc, port = udp_tunnel(nps_server, npc_client, f"127.0.0.1:{echo}",
                                   nps_env=short if side == "nps" else None,
                                   npc_env=short if side == "npc" else None)
    with udp_socket() as s:
        remote = "127.0.0.1:%d" % s.getsockname()[1]
        assert exchange(s, port, b"first") == b"first"
        support.until(lambda: sessions_of(server, remote, "session closed") == 1, 30,
                      f"server closing the idle session of {remote}")
        if side == "nps":
            assert sessions_of(server, remote, "session expired") == 1
        assert exchange(s, port, b"second") == b"second"
        assert sessions_of(server, remote, "session opened") == 2
