# -*- test-case-name: test.test_e2e_httpproxy -*-
"""
End-to-end tests of the httpProxy mode with real processes on loopback.

A real C{nps} (config-file mode, C{public_vkey}) and a real C{npc} whose
npc.conf has a C{mode=httpProxy} section; the user is C{curl -x} (and raw
sockets for bad input).  Targets: the C{http_backend} fixture, a small
threaded HTTP/1.1 server written here (L{ECHO_SERVER}: answers its own name
and the path, and the sha256 of a POST body) and C{openssl s_server -www}
for CONNECT.  Nothing is timed: waits are bounded polls and socket timeouts.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

Proc = support.Proc
VKEY = "httpproxy-e2e-key"
TIMEOUT = 20.0

#: A threaded HTTP/1.1 (keep-alive) server on 127.0.0.1; prints its port.
#: GET answers C{NAME PATH}; POST answers C{NAME LENGTH SHA256} of the body
#: (Content-Length or chunked).
ECHO_SERVER = r"""
import hashlib, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name = sys.argv[1]

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(("%s %s" % (name, self.path)).encode())
    def do_POST(self):
        h = hashlib.sha256()
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                self.rfile.readline()
                h.update(data)
                n += len(data)
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                data = self.rfile.read(min(left, 65536))
                if not data:
                    break
                h.update(data)
                n += len(data)
                left -= len(data)
        self.reply(("%s %d %s" % (name, n, h.hexdigest())).encode())

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print("listening", srv.server_address[1], flush=True)
srv.serve_forever()
"""


def start_proxy(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], **common: object
) -> tuple[Any, Proc, int]:
    """nps + npc with one httpProxy section on 127.0.0.1; returns (server, npc, proxy port)."""
    return support.start_config_tunnel(nps_server, npc_client, VKEY, "proxy", {"mode": "httpProxy"}, **common)


def start_echo(spawn: Callable[..., Proc], name: str) -> int:
    """Start L{ECHO_SERVER} called C{name}; return its port."""
    proc = spawn([sys.executable, "-c", ECHO_SERVER, name], name=f"echo-{name}")
    port = int(support.wait_for_log(proc, "listening ").split()[1])
    support.wait_for_port("127.0.0.1", port, proc=proc)
    return port


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run curl quietly with bounded timeouts; returns the completed process (bytes)."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(TIMEOUT), "--noproxy", "", *args],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT + 10,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
    )


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send C{data} to the proxy, read until it closes (bounded by a socket timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        chunks = []
        for _ in range(10000):
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def tls_server(spawn: Callable[..., Proc], tmp_path: Path) -> int:
    """C{openssl s_server -www} on 127.0.0.1 with a throwaway self-signed cert; returns its port."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-days", "1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    port = support.free_port()
    proc = spawn(["openssl", "s_server", "-www", "-accept", str(port), "-cert", str(cert), "-key", str(key)],
                 name="s_server")
    support.wait_for_port("127.0.0.1", port, proc=proc)
    return port


@pytest.fixture(autouse=True)
def _need_curl() -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")


# --------------------------------------------------------------- tests ---


def test_get_through_proxy(nps_server: Any, npc_client: Any, http_backend: Any) -> None:
    """curl -x fetches a file from a local http.server through the proxy; the body is intact."""
    _, _, port = start_proxy(nps_server, npc_client)
    for name in ("hello.txt", "big.bin"):
        res = curl("-x", f"http://127.0.0.1:{port}", http_backend.url(name))
        assert res.returncode == 0, res.stderr
        assert res.stdout == http_backend.files[name]


def test_keep_alive_to_two_servers_and_post(
    nps_server: Any, npc_client: Any, spawn: Any, http_backend: Any, tmp_path: Path
) -> None:
    """
    One curl run with several URLs reuses its proxy connection across two
    different servers (and back); each body is right.  POST bodies
    (Content-Length and chunked) arrive intact (sha256 checked by the target).
    """
    _, _, port = start_proxy(nps_server, npc_client)
    a, b = start_echo(spawn, "A"), start_echo(spawn, "B")
    urls = [f"http://127.0.0.1:{a}/one", f"http://127.0.0.1:{b}/two", f"http://127.0.0.1:{a}/three?x=1",
            http_backend.url("hello.txt")]
    res = curl("-v", "-x", f"http://127.0.0.1:{port}", *urls)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"A /one" + b"B /two" + b"A /three?x=1" + http_backend.HELLO
    assert b"Re-using existing connection" in res.stderr or b"Reusing existing" in res.stderr, res.stderr

    body = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "body.bin"
    path.write_bytes(body)
    digest = hashlib.sha256(body).hexdigest()
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
        res = curl("-x", f"http://127.0.0.1:{port}", "--data-binary", f"@{path}", *extra,
                   f"http://127.0.0.1:{b}/upload")
        assert res.returncode == 0, res.stderr
        assert res.stdout.decode() == f"B {len(body)} {digest}"


def test_connect_to_tls_server(nps_server: Any, npc_client: Any, tls_server: int) -> None:
    """curl reaches a local TLS server (https://localhost) through CONNECT."""
    _, _, port = start_proxy(nps_server, npc_client)
    res = curl("-k", "-x", f"http://127.0.0.1:{port}", f"https://localhost:{tls_server}/")
    assert res.returncode == 0, res.stderr
    assert b"s_server" in res.stdout


def test_basic_auth(nps_server: Any, npc_client: Any, http_backend: Any, tls_server: int) -> None:
    """
    With [common] basic_username/basic_password: no or wrong credentials get
    407 (for plain requests and CONNECT); the right ones work for both.
    """
    server, _, port = start_proxy(nps_server, npc_client, basic_username="u", basic_password="p")
    proxy = f"http://127.0.0.1:{port}"
    for cred in ([], ["--proxy-user", "u:wrong"], ["--proxy-user", "x:p"]):
        res = curl("-o", "/dev/null", "-w", "%{http_code}", "-x", proxy, *cred, http_backend.url())
        assert res.stdout == b"407", (cred, res)
        res = curl("-k", "-o", "/dev/null", "-w", "%{http_connect}", "-x", proxy, *cred,
                   f"https://localhost:{tls_server}/")
        assert res.returncode != 0 and res.stdout == b"407", (cred, res)
    head = raw_exchange(port, b"CONNECT localhost:%d HTTP/1.1\r\nHost: x\r\n\r\n" % tls_server)
    assert head.startswith(b"HTTP/1.1 407 ") and b'Proxy-Authenticate: Basic realm="nps"' in head
    assert b" 200 " not in head

    res = curl("--proxy-user", "u:p", "-x", proxy, http_backend.url())
    assert res.returncode == 0 and res.stdout == http_backend.HELLO, res.stderr
    res = curl("-k", "--proxy-user", "u:p", "-x", proxy, f"https://localhost:{tls_server}/")
    assert res.returncode == 0 and b"s_server" in res.stdout, res.stderr
    assert support.count_in_log(server.proc, "407") >= 7


def test_closed_target_is_502(nps_server: Any, npc_client: Any) -> None:
    """A closed target port gives 502 Bad Gateway (plain request and CONNECT), with the reason in the body."""
    server, _, port = start_proxy(nps_server, npc_client)
    closed = support.free_port()
    res = curl("-w", "\n%{http_code}", "-x", f"http://127.0.0.1:{port}", f"http://127.0.0.1:{closed}/x")
    body, _, code = res.stdout.rpartition(b"\n")
    assert code == b"502", res
    assert b"refused" in body.lower()
    res = curl("-w", "%{http_connect}", "-x", f"http://127.0.0.1:{port}", f"https://127.0.0.1:{closed}/")
    assert res.returncode != 0 and res.stdout == b"502", res
    support.wait_for_log(server.proc, "502")


def test_bad_input_refused_good_client_works(nps_server: Any, npc_client: Any, http_backend: Any) -> None:
    """
    Garbage gets 400, an origin-form request 400, an oversized head 431, and
    each such connection is closed; a good client still works afterwards.
    """
    server, _, port = start_proxy(nps_server, npc_client)
    assert raw_exchange(port, b"\x16\x03\x01garbage \x00\xff\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw_exchange(port, b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge = b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (80 * 1024) + b"\r\n\r\n"
    assert raw_exchange(port, huge).startswith(b"HTTP/1.1 431 ")
    res = curl("-x", f"http://127.0.0.1:{port}", http_backend.url())
    assert res.returncode == 0 and res.stdout == http_backend.HELLO, res.stderr
    assert server.proc.alive
    assert support.count_in_log(server.proc, "refused") >= 3
