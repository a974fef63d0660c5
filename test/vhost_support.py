# -*- test-case-name: test.test_e2e_vhost -*-
"""
Helpers for the domain-proxy (vhost) end-to-end tests and benchmarks: a small
HTTP/1.1 backend that says who it is and echoes what it got, a WebSocket
echo server (autobahn), nginx on a free port, self-signed certificates, and
raw HTTP over a socket.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

Proc = support.Proc
TIMEOUT = 20.0

#: HTTP/1.1 keep-alive backend: GET answers JSON {backend, path, headers};
#: POST (Content-Length or chunked) answers {backend, len}; GET /chunked
#: streams a chunked body; GET /health answers 200 unless the file
#: argv[3] exists (then 503).
BACKEND = r"""
import json, os, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
PORT, NAME = int(sys.argv[1]), sys.argv[2]
SICK = sys.argv[3] if len(sys.argv) > 3 else ""
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def _send(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    def do_GET(self):
        if self.path == "/health":
            self._send(503 if SICK and os.path.exists(SICK) else 200, b"{}")
            return
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(50):
                piece = (b"%d:" % i) + b"x" * 1000 + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self._send(200, json.dumps({"backend": NAME, "path": self.path,
                                    "headers": dict(self.headers.items())}).encode())
    do_HEAD = do_GET
    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += len(self.rfile.read(size))
                self.rfile.readline()
        else:
            total = len(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self._send(200, json.dumps({"backend": NAME, "len": total}).encode())
s = ThreadingHTTPServer(("127.0.0.1", PORT), H)
print("ready", flush=True)
s.serve_forever()
"""

#: WebSocket echo server (autobahn on Twisted) on 127.0.0.1:argv[1].
WS_ECHO = r"""
import sys
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
class Echo(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        self.sendMessage(payload, isBinary)
f = WebSocketServerFactory()
f.protocol = Echo
reactor.listenTCP(int(sys.argv[1]), f, interface="127.0.0.1")
reactor.run()
"""


def start_backend(workdir: Path, name: str, sick_file: str = "") -> tuple[Proc, int]:
    """Start L{BACKEND}; return (process, port)."""
    script = workdir / "vhost_backend.py"
    script.write_text(BACKEND)
    port = support.free_port()
    argv = [sys.executable, str(script), str(port), name] + ([sick_file] if sick_file else [])
    proc = Proc(argv, workdir / f"backend-{name}.log", name=f"backend-{name}")
    support.wait_for_port("127.0.0.1", port, proc=proc)
    return proc, port


def start_ws_echo(workdir: Path) -> tuple[Proc, int]:
    script = workdir / "ws_echo.py"
    script.write_text(WS_ECHO)
    port = support.free_port()
    proc = Proc([sys.executable, str(script), str(port)], workdir / "ws_echo.log", name="ws-echo")
    support.wait_for_port("127.0.0.1", port, proc=proc)
    return proc, port


def self_signed(workdir: Path, name: str) -> tuple[str, str]:
    """A self-signed certificate for C{name} (and C{*.name}); returns (cert, key) paths."""
    cert, key = workdir / f"{name}.crt", workdir / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name},DNS:*.{name}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (str(Path("/usr/sbin/nginx")) if Path("/usr/sbin/nginx").exists() else None)


def start_nginx(workdir: Path, servers: str) -> Proc:
    """
    nginx in the foreground with C{servers} (server blocks) in its http{} block;
    everything it writes stays in C{workdir}.
    """
    binary = nginx_binary()
    if binary is None:
        raise support.Unavailable("nginx is not installed (apt package nginx-light)")
    tmp = workdir / "nginx-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    temps = " ".join(f"{k}_temp_path {tmp};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"""
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  {temps}
  {servers}
}}
""")
    return Proc([binary, "-c", str(conf), "-p", str(workdir)], workdir / "nginx.log", name="nginx")


def http_raw(port: int, data: bytes, *, read_until_close: bool = True, timeout: float = TIMEOUT) -> bytes:
    """Send C{data} to 127.0.0.1:C{port} and return everything read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length response from C{sock}: (status, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed inside a body")
        body += chunk
    return status, headers, body[:length]


def json_body(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"))
