# -*- test-case-name: test.test_e2e_vhost -*-
"""
End-to-end tests of the HTTP domain proxy (C{http_proxy_port}) with real
processes on loopback: a real C{nps} and C{npc}, backends that say who
they are, clients C{curl} and raw sockets.  Nothing is timed: waits are
bounded polls and socket timeouts.
"""
from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping

import pytest

try:
    from . import support, vhost_support as vs  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]
    import vhost_support as vs  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

VKEY = "vhost-e2e-public-key-0123456789abcdef"
TIMEOUT = 20.0


def start_vhost(
    nps_server: Callable[..., Any], npc_client: Callable[..., Any], hosts: Mapping[str, Mapping[str, object]],
    extra: Mapping[str, object] | None = None, **common: object,
) -> tuple[Any, Any, int]:
    """nps with an HTTP vhost port and an npc whose npc.conf has C{hosts}; returns (server, npc, port)."""
    port = support.free_port()
    server = nps_server(public_vkey=VKEY, extra={"http_proxy_ip": "127.0.0.1", "http_proxy_port": port,
                                                 **(extra or {})})
    support.wait_for_port("127.0.0.1", port, proc=server.proc)
    npc = npc_client(conf=support.render_npc_conf(server.bridge_addr, VKEY, hosts, **common))
    for _ in hosts:
        support.wait_for_log(npc, "is open on the server")
    support.until(lambda: support.count_in_log(npc, "is open on the server") >= len(hosts), timeout=TIMEOUT,
                  what="hosts registered")
    return server, npc, port


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", str(int(TIMEOUT)), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT + 10)


@pytest.fixture
def backends(tmp_path: Path) -> dict[str, int]:
    """Three backends, C{b1}, C{b2}, C{b3}: name -> port."""
    ports = {}
    for name in ("b1", "b2", "b3"):
        _, ports[name] = vs.start_backend(tmp_path, name)
    return ports


def test_two_hosts_one_port(nps_server: Any, npc_client: Any, backends: dict[str, int]) -> None:
    """
    Two hosts on one HTTP port reach two backends, by C{curl --resolve} and
    by C{-H Host:}; a wildcard host answers names under its domain only
    (exact suffix, not NPS's substring match); an unknown host gets the 404 page.
    """
    _, _, port = start_vhost(nps_server, npc_client, {
        "one": {"host": "a.example.com", "target_addr": f"127.0.0.1:{backends['b1']}"},
        "two": {"host": "b.example.com", "target_addr": f"127.0.0.1:{backends['b2']}"},
        "wild": {"host": "*.wild.example.com", "target_addr": f"127.0.0.1:{backends['b3']}"},
    })
    for name, backend in (("a.example.com", "b1"), ("b.example.com", "b2"), ("x.y.wild.example.com", "b3")):
        res = curl("--resolve", f"{name}:{port}:127.0.0.1", f"http://{name}:{port}/hi")
        assert res.returncode == 0, res.stderr
        assert vs.json_body(res.stdout)["backend"] == backend
        assert vs.json_body(res.stdout)["headers"]["Host"] == f"{name}:{port}"
    res = curl("-H", "Host: B.Example.COM", f"http://127.0.0.1:{port}/")
    assert vs.json_body(res.stdout)["backend"] == "b2"
    for unknown in ("c.example.com", "wild.example.com", "a.wild.example.com.evil.net", "evil-wild.example.com"):
        res = curl("-i", "-H", f"Host: {unknown}", f"http://127.0.0.1:{port}/")
        assert res.stdout.startswith(b"HTTP/1.1 404 "), (unknown, res.stdout[:200])
        assert b"There is no site for" in res.stdout


def test_keepalive_routes_each_request(nps_server: Any, npc_client: Any, backends: dict[str, int]) -> None:
    """
    Requests on one keep-alive connection are each routed by their own Host,
    and by the longest matching C{location}.
    """
    _, _, port = start_vhost(nps_server, npc_client, {
        "one": {"host": "a.example.com", "target_addr": f"127.0.0.1:{backends['b1']}"},
        "static": {"host": "a.example.com", "location": "/static", "target_addr": f"127.0.0.1:{backends['b3']}"},
        "two": {"host": "b.example.com", "target_addr": f"127.0.0.1:{backends['b2']}"},
    })
    seen = []
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        for host, path in (("a.example.com", "/"), ("b.example.com", "/x"), ("a.example.com", "/static/app.js"),
                           ("a.example.com", "/other"), ("b.example.com", "/y")):
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status, _, body = vs.read_response(s)
            assert status == 200
            seen.append((vs.json_body(body)["backend"], vs.json_body(body)["path"]))
        # Pipelined: two requests in one write, answered in order.
        s.sendall(b"GET /p1 HTTP/1.1\r\nHost: b.example.com\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        for _ in range(2):
            status, _, body = vs.read_response(s)
            seen.append((vs.json_body(body)["backend"], vs.json_body(body)["path"]))
    assert seen == [("b1", "/"), ("b2", "/x"), ("b3", "/static/app.js"), ("b1", "/other"), ("b2", "/y"),
                    ("b2", "/p1"), ("b1", "/p2")]


def test_header_rewrites(nps_server: Any, npc_client: Any, backends: dict[str, int]) -> None:
    """
    C{host_change} rewrites Host, C{header_*} sets request headers, and with
    C{http_add_origin_header} the backend sees X-Forwarded-For (appended) and X-Real-IP.
    """
    _, _, port = start_vhost(nps_server, npc_client, {
        "one": {"host": "a.example.com", "target_addr": f"127.0.0.1:{backends['b1']}",
                "host_change": "inner.lan", "header_X-Proxy": "nps", "header_X-Env": "test"},
    }, extra={"http_add_origin_header": True})
    res = curl("-H", "Host: a.example.com", "-H", "X-Forwarded-For: 10.1.2.3", "-H", "X-Proxy: client",
               f"http://127.0.0.1:{port}/h")
    headers = vs.json_body(res.stdout)["headers"]
    assert headers["Host"] == "inner.lan"
    assert headers["X-Proxy"] == "nps"
    assert headers["X-Env"] == "test"
    assert headers["X-Forwarded-For"] == "10.1.2.3, 127.0.0.1"
    assert headers["X-Real-IP"] == "127.0.0.1"


def test_streaming_bodies(nps_server: Any, npc_client: Any, backends: dict[str, int], tmp_path: Path) -> None:
    """
    Chunked request and response bodies, and a large Content-Length upload,
    pass through; the connection stays usable afterwards.
    """
    _, _, port = start_vhost(nps_server, npc_client, {
        "one": {"host": "a.example.com", "target_addr": f"127.0.0.1:{backends['b1']}"},
    })
    res = curl("-H", "Host: a.example.com", f"http://127.0.0.1:{port}/chunked")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 50 and lines[-1].startswith(b"49:")
    upload = tmp_path / "up.bin"
    upload.write_bytes(os.urandom(3 << 20))
    res = curl("-H", "Host: a.example.com", "--data-binary", f"@{upload}", f"http://127.0.0.1:{port}/up")
    assert vs.json_body(res.stdout) == {"backend": "b1", "len": 3 << 20}
    res = curl("-H", "Host: a.example.com", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}",
               f"http://127.0.0.1:{port}/up")
    assert vs.json_body(res.stdout) == {"backend": "b1", "len": 3 << 20}


def test_websocket_through_vhost(nps_server: Any, npc_client: Any, tmp_path: Path) -> None:
    """
    A WebSocket upgrade passes through the vhost to an autobahn echo server;
    frames go both ways afterwards.
    """
    _, ws_port = vs.start_ws_echo(tmp_path)
    _, _, port = start_vhost(nps_server, npc_client, {
        "ws": {"host": "ws.example.com", "target_addr": f"127.0.0.1:{ws_port}"},
    })
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(f"GET /chat HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        rest = head.partition(b"\r\n\r\n")[2]
        for i in range(20):
            payload = f"message {i} ".encode() * (1 + i * 50)
            s.sendall(_ws_frame(payload))
            got, rest = _ws_read(s, rest)
            assert got == payload


def _ws_frame(payload: bytes) -> bytes:
    """A masked text frame (clients must mask)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes([0x81, 0x80 | size])
    elif size < 65536:
        head = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _ws_read(s: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
    """Read one unmasked server frame; returns (payload, leftover)."""
    def need(n: int) -> None:
        nonlocal buffer
        while len(buffer) < n:
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError("websocket closed")
            buffer += chunk

    need(2)
    size = buffer[1] & 0x7F
    offset = 2
    if size == 126:
        need(4)
        size, offset = int.from_bytes(buffer[2:4], "big"), 4
    elif size == 127:
        need(10)
        size, offset = int.from_bytes(buffer[2:10], "big"), 10
    need(offset + size)
    return buffer[offset:offset + size], buffer[offset + size:]


def test_bad_requests_refused_others_served(nps_server: Any, npc_client: Any, backends: dict[str, int]) -> None:
    """
    Malformed heads get 400, oversized heads 431, smuggling-shaped framing
    400, HTTP/2 prior knowledge 505, CONNECT 405; each of those connections
    is closed and a good request on another connection still works.
    """
    _, _, port = start_vhost(nps_server, npc_client, {
        "one": {"host": "a.example.com", "target_addr": f"127.0.0.1:{backends['b1']}"},
    })
    cases = [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a.example.com\r\nBad Header: x\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: a.example.com\r\n folded\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
         b"400"),
        (b"POST / HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", b"431"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"505"),
        (b"CONNECT a.example.com:443 HTTP/1.1\r\nHost: a.example.com\r\n\r\n", b"405"),
    ]
    for request, status in cases:
        reply = vs.http_raw(port, request)
        assert reply.startswith(b"HTTP/1.1 " + status), (request[:60], reply[:120])
    res = curl("-H", "Host: a.example.com", f"http://127.0.0.1:{port}/ok")
    assert vs.json_body(res.stdout)["backend"] == "b1"


def test_stored_host_client_offline_502(nps_server: Any, npc_client: Any, backends: dict[str, int]) -> None:
    """
    A host stored on the server (C{nps host add}) routes to its client while
    it is online; while the client is offline the vhost answers 502.
    """
    port = support.free_port()
    server = nps_server(extra={"http_proxy_ip": "127.0.0.1", "http_proxy_port": port}, start=False)
    client = server.add_client("web")
    res = server.admin("host", "add", "--client", str(client.id), "--host", "stored.example.com",
                       "--target", f"127.0.0.1:{backends['b1']}", "--target", f"127.0.0.1:{backends['b2']}",
                       "--header", "X-From: store")
    assert res.returncode == 0, res.stderr
    listing = server.admin("host", "list")
    assert "stored.example.com" in listing.stdout
    server.start()
    support.wait_for_port("127.0.0.1", port, proc=server.proc)
    reply = curl("-i", "-H", "Host: stored.example.com", f"http://127.0.0.1:{port}/")
    assert reply.stdout.startswith(b"HTTP/1.1 502 "), reply.stdout[:200]
    assert b"offline" in reply.stdout
    npc = npc_client(*client.npc_args, f"-server={server.bridge_addr}")
    support.wait_for_log(npc, "connected to server")
    got = set()

    def both() -> bool:
        res = curl("-H", "Host: stored.example.com", f"http://127.0.0.1:{port}/")
        body = vs.json_body(res.stdout)
        assert body["headers"]["X-From"] == "store"
        got.add(body["backend"])
        return got == {"b1", "b2"}

    support.until(both, timeout=TIMEOUT, what="round robin over both targets")


def test_health_check_failover(nps_server: Any, npc_client: Any, tmp_path: Path) -> None:
    """
    npc's http health checks take a failing target out of the round robin
    (reported to the server) and put it back when it recovers; a stopped
    target stops getting requests once reported, while requests keep running.
    """
    sick = tmp_path / "b1.sick"
    b1, p1 = vs.start_backend(tmp_path, "b1", sick_file=str(sick))
    _, p2 = vs.start_backend(tmp_path, "b2")
    targets = f"127.0.0.1:{p1},127.0.0.1:{p2}"
    port = support.free_port()
    server = nps_server(public_vkey=VKEY, extra={"http_proxy_ip": "127.0.0.1", "http_proxy_port": port})
    support.wait_for_port("127.0.0.1", port, proc=server.proc)
    conf = support.render_npc_conf(server.bridge_addr, VKEY, {
        "web": {"host": "lb.example.com", "target_addr": targets},
        "health_web": {"health_check_type": "http", "health_http_url": "/health", "health_check_interval": 1,
                       "health_check_timeout": 1, "health_check_max_failed": 2, "health_check_target": targets},
    })
    npc = npc_client(conf=conf)
    support.wait_for_log(npc, "is open on the server")

    def get() -> tuple[int, str]:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: lb.example.com\r\nConnection: close\r\n\r\n")
            status, _, body = vs.read_response(s)
            return status, vs.json_body(body)["backend"] if status == 200 else ""

    def sees(*names: str) -> bool:
        return {get()[1] for _ in range(6)} == set(names)

    support.until(lambda: sees("b1", "b2"), timeout=TIMEOUT, what="both targets in rotation")
    sick.write_text("x")
    support.wait_for_log(server.proc, f"target 127.0.0.1:{p1} is down")
    assert sees("b2")
    sick.unlink()
    support.wait_for_log(server.proc, f"target 127.0.0.1:{p1} is up again")
    support.until(lambda: sees("b1", "b2"), timeout=TIMEOUT, what="b1 back in rotation")
    b1.kill()
    support.until(lambda: support.count_in_log(server.proc, f"target 127.0.0.1:{p1} is down") >= 2,
                  timeout=TIMEOUT, what="stopped b1 reported down")
    results = [get() for _ in range(20)]
    assert results == [(200, "b2")] * 20


def test_reload_npc_conf_domains(nps_server: Any, npc_client: Any, backends: dict[str, int]) -> None:
    """
    SIGHUP makes npc re-read its domain sections: a new domain is routed, a
    removed one answers 404, an unchanged one keeps working.
    """
    server, npc, port = start_vhost(nps_server, npc_client, {
        "one": {"host": "a.example.com", "target_addr": f"127.0.0.1:{backends['b1']}"},
        "two": {"host": "b.example.com", "target_addr": f"127.0.0.1:{backends['b2']}"},
    })
    conf_path = Path(npc.log_path).parent / "npc.conf"
    conf_path.write_text(support.render_npc_conf(server.bridge_addr, VKEY, {
        "one": {"host": "a.example.com", "target_addr": f"127.0.0.1:{backends['b1']}"},
        "three": {"host": "c.example.com", "target_addr": f"127.0.0.1:{backends['b3']}"},
    }))
    npc.kill(signal.SIGHUP)

    def status(host: str) -> bytes:
        return curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {host}",
                    f"http://127.0.0.1:{port}/").stdout

    support.until(lambda: status("c.example.com") == b"200", timeout=TIMEOUT, what="new domain routed")
    assert status("b.example.com") == b"404"
    assert status("a.example.com") == b"200"
