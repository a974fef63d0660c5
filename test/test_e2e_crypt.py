# -*- test-case-name: test.test_e2e_crypt -*-
"""
End-to-end tests of C{crypt} and C{compress} with real nps and npc processes.

The bridge connection runs through L{bridgetap.BridgeTap}, a recording
forwarder, so the tests see exactly what an eavesdropper on the bridge
sees: a random marker sent through a C{crypt=true} tunnel must not appear
in it (and does appear without crypt, so the test can fail).  Targets are
small threaded echo servers in this process; everything stays on 127.0.0.1.
No timing is asserted.
"""
from __future__ import annotations

import hashlib
import os
import select
import socket
import socketserver
import threading
from typing import Any, Callable, Iterator

import pytest

try:
    from . import support  # type: ignore[import-not-found]
    from .bridgetap import BridgeTap  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]
    from bridgetap import BridgeTap  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

VKEY = "crypt-e2e-public-key-0123456789"
TEXT = b"".join(b"%06d GET /index.html HTTP/1.1 Host: intranet.example Accept: text/html\n" % i
                for i in range(40000))


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.settimeout(120)
        while True:
            data = sock.recv(1 << 18)
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def udp_echo_port() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.2)
            if ready:
                data, addr = sock.recvfrom(65535)
                sock.sendto(data, addr)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield int(sock.getsockname()[1])
    stop.set()
    thread.join(timeout=2)
    sock.close()


@pytest.fixture
def taps() -> Iterator[Callable[[int], BridgeTap]]:
    made: list[BridgeTap] = []

    def make(bridge_port: int) -> BridgeTap:
        tap = BridgeTap(("127.0.0.1", bridge_port)).start()
        made.append(tap)
        return tap

    yield make
    for tap in made:
        tap.stop()


def echo_round_trip(port: int, payload: bytes) -> bytes:
    """Send C{payload} through the tunnel to the echo server, half-close, read everything back."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        received = bytearray()

        def reader() -> None:
            while True:
                data = sock.recv(1 << 18)
                if not data:
                    return
                received.extend(data)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        thread.join(timeout=120)
        assert not thread.is_alive(), "echo did not finish"
        return bytes(received)


def config_tunnel(nps_server: Callable[..., Any], npc_client: Callable[..., Any], tap_for: Callable[[int], BridgeTap],
                  section: dict[str, object], **common: object) -> tuple[Any, Any, BridgeTap, int]:
    """nps (public_vkey) and an npc.conf tunnel whose bridge runs through a tap; returns (server, npc, tap, port)."""
    server = nps_server(public_vkey=VKEY)
    tap = tap_for(server.bridge_port)
    port = support.free_port()
    conf = support.render_npc_conf(f"127.0.0.1:{tap.port}", VKEY,
                                   {"t1": {**section, "server_ip": "127.0.0.1", "server_port": port}}, **common)
    npc = npc_client(conf=conf)
    support.wait_for_log(npc, "tunnel t1 is open on the server")
    if section["mode"] != "udp":
        support.wait_for_port("127.0.0.1", port, proc=server.proc)
    return server, npc, tap, port


@pytest.mark.parametrize("crypt", [True, False])
def test_marker_is_hidden_on_the_bridge_only_with_crypt(nps_server: Any, npc_client: Any, taps: Any,
                                                        echo_port: int, crypt: bool) -> None:
    """
    A random marker crosses a tcp tunnel both ways.  With crypt=true in
    npc.conf's [common] it is nowhere in the captured bridge bytes; without
    it the same capture shows it (the tap really sees the traffic).
    """
    _, _, tap, port = config_tunnel(nps_server, npc_client, taps,
                                    {"mode": "tcp", "target_addr": f"127.0.0.1:{echo_port}"}, crypt=crypt)
    marker = b"MARKER-" + os.urandom(12).hex().encode()
    payload = b"x" * 1000 + marker + os.urandom(50000) + marker
    assert echo_round_trip(port, payload) == payload
    captured = tap.captured()
    assert tap.connections == 1
    assert len(captured) > 2 * len(payload)
    assert (marker in captured) is (not crypt)
    assert (marker[:16] in captured) is (not crypt)


def test_server_side_crypt_setting(nps_server: Any, npc_client: Any, taps: Any, echo_port: int) -> None:
    """A client added with --crypt (no npc.conf) gets encrypted streams; a big transfer arrives intact."""
    server = nps_server(start=False)
    client = server.add_client("crypted", "--crypt")
    port = support.free_port()
    assert client.id is not None
    server.add_tunnel(client.id, port, f"127.0.0.1:{echo_port}")
    server.start()
    tap = taps(server.bridge_port)
    npc = npc_client(f"-server=127.0.0.1:{tap.port}", f"-vkey={client.vkey}", "-type=tcp")
    support.wait_for_log(npc, "connected to server")
    support.wait_for_port("127.0.0.1", port, proc=server.proc)
    marker = os.urandom(16).hex().encode()
    payload = (marker + os.urandom(4096)) * 2000  # ~8 MB
    got = echo_round_trip(port, payload)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert marker not in tap.captured()


@pytest.mark.parametrize("compress", [True, False])
def test_compress_saves_bridge_bytes_on_text(nps_server: Any, npc_client: Any, taps: Any, echo_port: int,
                                             compress: bool) -> None:
    _, _, tap, port = config_tunnel(nps_server, npc_client, taps,
                                    {"mode": "tcp", "target_addr": f"127.0.0.1:{echo_port}"}, compress=compress)
    before = tap.total
    assert echo_round_trip(port, TEXT) == TEXT
    used = support.until(lambda: tap.total - before if tap.total - before > 0 else None, what="bridge bytes")
    if compress:
        assert used < len(TEXT) // 2, f"{used} bridge bytes for 2 x {len(TEXT)} bytes of text"
    else:
        assert used > 2 * len(TEXT)


def test_crypt_and_compress_together(nps_server: Any, npc_client: Any, taps: Any, echo_port: int) -> None:
    _, _, tap, port = config_tunnel(nps_server, npc_client, taps,
                                    {"mode": "tcp", "target_addr": f"127.0.0.1:{echo_port}"},
                                    crypt=True, compress=True)
    marker = b"TEXTMARKER-" + os.urandom(8).hex().encode()
    payload = TEXT + marker + TEXT[:100000]
    before = tap.total
    assert echo_round_trip(port, payload) == payload
    assert marker not in tap.captured()
    assert TEXT[:40] not in tap.captured()
    assert tap.total - before < len(payload)


def test_udp_datagrams_keep_their_boundaries_with_crypt_and_compress(
        nps_server: Any, npc_client: Any, taps: Any, udp_echo_port: int) -> None:
    """NPS bug #370 (crypt/compress break UDP datagram boundaries) does not exist here."""
    _, _, tap, port = config_tunnel(nps_server, npc_client, taps,
                                    {"mode": "udp", "target_addr": f"127.0.0.1:{udp_echo_port}"},
                                    crypt=True, compress=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    marker = b"UDPMARK-" + os.urandom(8).hex().encode()
    try:
        for size in (1, 7, 100, 1400, 9000, 60000):
            datagram = (marker + b"a" * size)[:max(size, len(marker))] if size >= len(marker) else b"z" * size
            got = b""
            for _ in range(5):  # UDP may drop: a few tries
                sock.sendto(datagram, ("127.0.0.1", port))
                ready, _, _ = select.select([sock], [], [], 3.0)
                if ready:
                    got = sock.recv(65535)
                    while got != datagram:  # skip a late reply of an earlier try
                        ready, _, _ = select.select([sock], [], [], 1.0)
                        if not ready:
                            break
                        got = sock.recv(65535)
                    if got == datagram:
                        break
            assert got == datagram, f"datagram of {size} bytes came back as {len(got)} bytes"
    finally:
        sock.close()
    assert marker not in tap.captured()


def test_old_style_npc_is_refused_with_a_clear_error_when_crypt_is_required(nps_server: Any, npc_client: Any,
                                                                          tmp_path: Any) -> None:
    """A client without key exchange (as an older npc) cannot log in to a crypt=true client record."""
    import subprocess
    import sys

    server = nps_server(start=False)
    client = server.add_client("crypted", "--crypt")
    server.start()
    script = f"""
import socket, sys
sys.path.insert(0, {os.getcwd()!r})
from nps.protocols.handshake import ClientHandshake
h = ClientHandshake({client.vkey!r}, 1, {{"role": "client", "version": "old"}})
s = socket.create_connection(("127.0.0.1", {server.bridge_port}), timeout=10)
s.sendall(h.hello())
try:
    for _ in range(10):
        data = s.recv(65536)
        if not data:
            break
        out, result = h.feed(data)
        if out:
            s.sendall(out)
    print("no refusal")
except Exception as e:
    print("refused:", e)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stdout
    assert "refused: server refused us:" in out and "upgrade npc" in out
