# -*- test-case-name: test.test_e2e_https -*-
"""
End-to-end tests of the HTTPS domain proxy (C{https_proxy_port}): SNI
pass-through to nginx (TLS and HTTP/2 end at nginx), TLS termination with a
host's own or the default certificate, HTTP-to-HTTPS redirects, and clean
refusals of ClientHellos without SNI, with unknown names or not TLS at all.
Real processes on loopback: nps, npc, nginx, curl, openssl s_client.
"""
from __future__ import annotations

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

VKEY = "https-e2e-public-key-0123456789abcdef"
TIMEOUT = 20.0


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", str(int(TIMEOUT)), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT + 10)


def s_client(port: int, servername: str | None) -> subprocess.CompletedProcess[bytes]:
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"]
    argv += ["-servername", servername] if servername else ["-noservername"]
    return subprocess.run(argv, input=b"", capture_output=True, timeout=TIMEOUT + 10)


@pytest.fixture
def nginx_tls(tmp_path: Path) -> tuple[int, str]:
    """nginx with TLS and HTTP/2 for a.example.com on a free port; returns (port, cert path)."""
    if vs.nginx_binary() is None:
        pytest.skip("nginx is not installed (apt package nginx-light)")
    cert, key = vs.self_signed(tmp_path, "example.com")
    port = support.free_port()
    proc = vs.start_nginx(tmp_path / "nginx", f"""
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{ return 200 "nginx says $server_protocol for $host\\n"; }}
  }}""")
    support.wait_for_port("127.0.0.1", port, proc=proc)
    return port, cert


def start_https(
    nps_server: Callable[..., Any], npc_client: Callable[..., Any], hosts: Mapping[str, Mapping[str, object]],
    extra: Mapping[str, object] | None = None,
) -> tuple[Any, Any, int]:
    """nps with an HTTPS vhost port and an npc with C{hosts}; returns (server, npc, https port)."""
    port = support.free_port()
    server = nps_server(public_vkey=VKEY, extra={"http_proxy_ip": "127.0.0.1", "https_proxy_port": port,
                                                 **(extra or {})})
    support.wait_for_port("127.0.0.1", port, proc=server.proc)
    npc = npc_client(conf=support.render_npc_conf(server.bridge_addr, VKEY, hosts))
    support.until(lambda: support.count_in_log(npc, "is open on the server") >= len(hosts), timeout=TIMEOUT,
                  what="hosts registered")
    return server, npc, port


def test_sni_passthrough_http2(nps_server: Any, npc_client: Any, nginx_tls: tuple[int, str]) -> None:
    """
    curl over HTTP/2 reaches nginx through SNI pass-through: nginx's
    certificate verifies, ALPN h2 is negotiated end to end.
    """
    backend, cert = nginx_tls
    _, _, port = start_https(nps_server, npc_client, {
        "tls": {"host": "a.example.com", "target_addr": f"127.0.0.1:{backend}"},
        "wild": {"host": "*.example.com", "target_addr": f"127.0.0.1:{backend}"},
    })
    for name in ("a.example.com", "x.example.com"):
        res = curl("--http2", "--cacert", cert, "--resolve", f"{name}:{port}:127.0.0.1",
                   "-w", "|%{http_version}", f"https://{name}:{port}/")
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"nginx says HTTP/2.0 for {name}\n|2".encode()
    res = s_client(port, "a.example.com")
    assert b"CN = example.com" in res.stderr + res.stdout, res.stderr


def test_refusals_logged_others_served(nps_server: Any, npc_client: Any, nginx_tls: tuple[int, str]) -> None:
    """
    A ClientHello without SNI, with an unknown name, garbage, or a slow
    partial hello gets a closed connection and a log line; a good client
    is served throughout.
    """
    backend, cert = nginx_tls
    server, _, port = start_https(nps_server, npc_client, {
        "tls": {"host": "a.example.com", "target_addr": f"127.0.0.1:{backend}"},
    })
    res = s_client(port, "unknown.example.com")
    assert b"CONNECTED" not in res.stdout or b"Verification" not in res.stderr
    support.wait_for_log(server.proc, "no site for server name 'unknown.example.com'")
    s_client(port, None)
    support.wait_for_log(server.proc, "ClientHello without a server name (SNI)")
    reply = vs.http_raw(port, b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
    assert reply == b""
    support.wait_for_log(server.proc, "bad ClientHello: not a TLS handshake")
    reply = vs.http_raw(port, b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")
    assert reply == b""
    support.wait_for_log(server.proc, "not a ClientHello")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as slow:
        slow.sendall(b"\x16\x03\x01\x02\x00\x01")  # a hello that never completes
        res = curl("--cacert", cert, "--resolve", f"a.example.com:{port}:127.0.0.1", f"https://a.example.com:{port}/")
        assert res.stdout.startswith(b"nginx says"), res.stderr


def test_termination_with_host_cert_and_redirect(nps_server: Any, npc_client: Any, tmp_path: Path) -> None:
    """
    A stored host with cert_file/key_file is terminated at the server with
    that certificate and forwarded as plain HTTP (X-Forwarded-Proto https);
    with redirect_https its plain-HTTP requests get a 301 to the HTTPS port.
    """
    _, backend = vs.start_backend(tmp_path, "plain")
    cert, key = vs.self_signed(tmp_path, "term.example.com")
    http_port, https_port = support.free_port(), support.free_port()
    server = nps_server(extra={"http_proxy_ip": "127.0.0.1", "http_proxy_port": http_port,
                               "https_proxy_port": https_port, "http_add_origin_header": True}, start=False)
    client = server.add_client("web")
    res = server.admin("host", "add", "--client", str(client.id), "--host", "term.example.com",
                       "--target", f"127.0.0.1:{backend}", "--cert-file", cert, "--key-file", key,
                       "--redirect-https")
    assert res.returncode == 0, res.stderr
    server.start()
    support.wait_for_port("127.0.0.1", https_port, proc=server.proc)
    npc = npc_client(*client.npc_args, f"-server={server.bridge_addr}")
    support.wait_for_log(npc, "connected to server")
    name = "term.example.com"

    def served() -> Any:
        res = curl("--cacert", cert, "--resolve", f"{name}:{https_port}:127.0.0.1", "-w", "|%{http_version}",
                   f"https://{name}:{https_port}/secure?x=1")
        body, _, version = res.stdout.rpartition(b"|")
        return vs.json_body(body), version

    body, version = support.until(served, timeout=TIMEOUT, what="terminated https request")
    assert version == b"1.1"
    assert body["path"] == "/secure?x=1"
    assert body["headers"]["X-Forwarded-Proto"] == "https"
    res = curl("-i", "--resolve", f"{name}:{http_port}:127.0.0.1", f"http://{name}:{http_port}/a/b?c=d")
    assert res.stdout.startswith(b"HTTP/1.1 301 "), res.stdout[:200]
    assert f"Location: https://{name}:{https_port}/a/b?c=d".encode() in res.stdout
    res = curl("-L", "--cacert", cert, "--resolve", f"{name}:{http_port}:127.0.0.1",
               "--resolve", f"{name}:{https_port}:127.0.0.1", f"http://{name}:{http_port}/followed")
    assert vs.json_body(res.stdout)["path"] == "/followed"


def test_termination_with_default_cert(nps_server: Any, npc_client: Any, tmp_path: Path) -> None:
    """
    With https_just_proxy=false, config-file hosts are terminated with
    https_default_cert_file/key_file and routed by Host like plain HTTP.
    """
    _, backend = vs.start_backend(tmp_path, "deflt")
    cert, key = vs.self_signed(tmp_path, "example.org")
    _, _, port = start_https(nps_server, npc_client, {
        "web": {"host": "site.example.org", "target_addr": f"127.0.0.1:{backend}", "header_X-Via": "nps"},
    }, extra={"https_just_proxy": False, "https_default_cert_file": cert, "https_default_key_file": key})
    name = "site.example.org"
    res = curl("--cacert", cert, "--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}/d")
    assert res.returncode == 0, res.stderr
    body = vs.json_body(res.stdout)
    assert (body["backend"], body["path"], body["headers"]["X-Via"]) == ("deflt", "/d", "nps")
