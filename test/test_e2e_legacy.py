"""
End to end: the real Go npc 0.26.10 (NPS's client, unchanged) against our nps
with C{legacy_bridge=true}.

The binary comes from /work/shared/peers (see the README there); without it
every test here is skipped with a message saying so.  No timing is asserted:
conditions are waited for with bounded polls.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

try:
    from . import support  # type: ignore[import-not-found]
    from .legacy_peers import GO_NPC, missing  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]
    from legacy_peers import GO_NPC, missing  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

PUBLIC_VKEY = "legacy-public-key-0123456789"


@pytest.fixture
def go_npc(spawn: Callable[..., Any], tmp_path: Path) -> Callable[..., Any]:
    """Factory: run the Go npc with the given arguments (its cwd is a fresh dir)."""
    reason = missing(GO_NPC)
    if reason:
        pytest.skip(reason)

    def _run(*args: str, conf: str | None = None, name: str = "go-npc") -> Any:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        argv = [str(GO_NPC), *args]
        if conf is not None:
            path = workdir / "npc.conf"
            path.write_text(conf)
            argv.append(f"-config={path}")
        return spawn(argv, name=name, cwd=workdir)

    return _run


def legacy_server(nps_server: Callable[..., Any], **extra: object) -> Any:
    return nps_server(public_vkey=extra.pop("public_vkey", None), extra={"legacy_bridge": True, **extra})


class EchoServer:
    """A threaded TCP echo server on 127.0.0.1 (bounded: daemon threads, 120 s socket timeout)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        conn.settimeout(120)
        with conn:
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


class UdpEcho:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
                self.sock.sendto(b"echo:" + data, addr)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def udp_echo() -> Iterator[UdpEcho]:
    server = UdpEcho()
    yield server
    server.close()


def roundtrip(port: int, payload: bytes, timeout: float = 30.0) -> bytes:
    """Send C{payload} through the public port while reading the echo; return what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        sender = threading.Thread(target=conn.sendall, args=(payload,), daemon=True)
        sender.start()
        got = bytearray()
        while len(got) < len(payload):
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        sender.join(timeout)
        return bytes(got)


def echo_works(port: int, payload: bytes = b"hello legacy") -> bool:
    try:
        return roundtrip(port, payload, timeout=5) == payload
    except OSError:
        return False


def udp_roundtrip(port: int, payload: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            return sock.recvfrom(65535)[0]
        except OSError:
            return None


def client_list(server: Any) -> str:
    return str(server.admin("client", "list").stdout)


# -- no-config mode ---------------------------------------------------------------------


def test_no_config_tcp_tunnel(nps_server: Callable[..., Any], go_npc: Callable[..., Any], echo: EchoServer) -> None:
    """The Go npc logs in with -server -vkey -type=tcp; a tcp tunnel carries 8 MB both ways intact;
    the client is listed as a legacy 0.26 client and the server warns that its key check is md5 only."""
    server = legacy_server(nps_server)
    client = server.add_client("router")
    port = support.free_port()
    server.add_tunnel(client.id, port, f"127.0.0.1:{echo.port}")
    npc = go_npc(f"-server={server.bridge_addr}", f"-vkey={client.vkey}", "-type=tcp")
    support.wait_for_log(npc, "Successful connection with server")
    support.until(lambda: "legacy 0.26" in client_list(server), what="legacy client listed online")
    support.until(lambda: echo_works(port), what="echo through the Go npc")
    payload = os.urandom(8 << 20)
    got = roundtrip(port, payload, timeout=120)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert "md5 only" in server.log_text()


def test_no_config_many_connections(nps_server: Callable[..., Any], go_npc: Callable[..., Any],
                                    echo: EchoServer) -> None:
    """Fifty connections at once through one Go npc each get their own bytes back."""
    server = legacy_server(nps_server)
    client = server.add_client("router")
    port = support.free_port()
    server.add_tunnel(client.id, port, f"127.0.0.1:{echo.port}")
    go_npc(f"-server={server.bridge_addr}", f"-vkey={client.vkey}", "-type=tcp")
    support.until(lambda: echo_works(port), what="echo through the Go npc")
    results: list[bool] = []

    def one(i: int) -> None:
        payload = os.urandom(50_000) + str(i).encode()
        results.append(roundtrip(port, payload) == payload)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [True] * 50


def test_legacy_bridge_off_refuses(nps_server: Callable[..., Any], go_npc: Callable[..., Any]) -> None:
    """Without legacy_bridge=true the Go npc is refused, and the log says which key enables it;
    our own npc still connects on the same port."""
    server = nps_server()
    client = server.add_client("router")
    go_npc(f"-server={server.bridge_addr}", f"-vkey={client.vkey}", "-type=tcp")
    support.until(lambda: "set legacy_bridge=true" in server.log_text(), what="refusal logged")
    assert "legacy 0.26" not in client_list(server)


def test_wrong_vkey_and_garbage(nps_server: Callable[..., Any], go_npc: Callable[..., Any],
                                echo: EchoServer) -> None:
    """A wrong vkey is refused; a garbage "TST" connection is closed; the server goes on serving."""
    server = legacy_server(nps_server)
    client = server.add_client("router")
    port = support.free_port()
    server.add_tunnel(client.id, port, f"127.0.0.1:{echo.port}")
    bad = go_npc(f"-server={server.bridge_addr}", "-vkey=not-the-key", "-type=tcp", name="bad-npc")
    support.until(lambda: "unknown vkey" in server.log_text(), what="wrong key refused")
    with socket.create_connection(("127.0.0.1", server.bridge_port), timeout=5) as conn:
        conn.sendall(b"TST\xff\xff\xff\x7f")
        assert conn.recv(100) == b""
    assert "outside 1..64" in server.log_text()
    bad.stop()
    go_npc(f"-server={server.bridge_addr}", f"-vkey={client.vkey}", "-type=tcp")
    support.until(lambda: echo_works(port), what="echo through the good npc")


def test_udp_tunnel(nps_server: Callable[..., Any], go_npc: Callable[..., Any], udp_echo: UdpEcho) -> None:
    """Datagrams cross a udp tunnel through the Go npc one by one, large ones whole."""
    server = legacy_server(nps_server)
    client = server.add_client("router")
    port = support.free_port()
    server.add_tunnel(client.id, port, f"127.0.0.1:{udp_echo.port}", mode="udp")
    go_npc(f"-server={server.bridge_addr}", f"-vkey={client.vkey}", "-type=tcp")
    support.until(lambda: udp_roundtrip(port, b"ping") == b"echo:ping", what="udp echo")
    big = os.urandom(20000)
    assert support.until(lambda: udp_roundtrip(port, big), what="big datagram") == b"echo:" + big


def test_socks5_and_http_proxy(nps_server: Callable[..., Any], go_npc: Callable[..., Any],
                               http_backend: Any) -> None:
    """curl through a socks5 and an httpProxy tunnel served by the Go npc gets the backend's file."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    server = legacy_server(nps_server)
    client = server.add_client("router")
    socks_port, http_port = support.free_port(), support.free_port()
    for mode, port in (("socks5", socks_port), ("httpProxy", http_port)):
        server.admin("tunnel", "add", "--client", str(client.id), "--mode", mode, "--port", str(port),
                     "--server-ip", "127.0.0.1", check=True)
    go_npc(f"-server={server.bridge_addr}", f"-vkey={client.vkey}", "-type=tcp")
    url = http_backend.url()
    expected = (Path(http_backend.dir) / "hello.txt").read_bytes()

    def fetch(*proxy: str) -> bytes:
        return subprocess.run(["curl", "-sf", "--max-time", "10", *proxy, url], capture_output=True,
                              timeout=30).stdout

    support.until(lambda: fetch("--socks5-hostname", f"127.0.0.1:{socks_port}") == expected, what="socks5")
    support.until(lambda: fetch("-x", f"http://127.0.0.1:{http_port}") == expected, what="http proxy")


def test_socks5_udp_associate(nps_server: Callable[..., Any], go_npc: Callable[..., Any], udp_echo: UdpEcho) -> None:
    """SOCKS5 UDP ASSOCIATE through a Go npc (NPS's udp5 link): datagrams reach a UDP echo and come back
    with the SOCKS UDP header of the echo's address."""
    import struct

    server = legacy_server(nps_server)
    client = server.add_client("router")
    port = support.free_port()
    server.admin("tunnel", "add", "--client", str(client.id), "--mode", "socks5", "--port", str(port),
                 "--server-ip", "127.0.0.1", check=True)
    go_npc(f"-server={server.bridge_addr}", f"-vkey={client.vkey}", "-type=tcp")
    support.until(lambda: "legacy 0.26" in client_list(server), what="client online")
    control = socket.create_connection(("127.0.0.1", port), timeout=10)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(1.0)
    try:
        control.sendall(b"\x05\x01\x00")
        assert control.recv(2) == b"\x05\x00"
        control.sendall(b"\x05\x03\x00\x01" + bytes(6))
        reply = control.recv(10)
        assert reply[:2] == b"\x05\x00", reply
        relay = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
        header = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", udp_echo.port)

        def exchange() -> bytes | None:
            udp.sendto(header + b"via-udp5", relay)
            try:
                return udp.recvfrom(65535)[0]
            except OSError:
                return None

        assert support.until(exchange, timeout=30, what="udp5 answer") == header + b"echo:via-udp5"
    finally:
        control.close()
        udp.close()


def test_crypt_and_compress_client(nps_server: Callable[..., Any], go_npc: Callable[..., Any],
                                   echo: EchoServer) -> None:
    """A client record with crypt (TLS per stream) and one with compress (snappy) both carry 2 MB intact."""
    server = legacy_server(nps_server)
    ports = []
    for flag in ("--crypt", "--compress"):
        client = server.add_client(flag.strip("-"), flag)
        port = support.free_port()
        server.add_tunnel(client.id, port, f"127.0.0.1:{echo.port}")
        go_npc(f"-server={server.bridge_addr}", f"-vkey={client.vkey}", "-type=tcp", name=f"npc{flag}")
        ports.append(port)
    payload = os.urandom(1 << 20) + b"z" * (1 << 20)
    for port in ports:
        support.until(lambda: echo_works(port), what="echo")
        assert roundtrip(port, payload, timeout=120) == payload


def test_reconnects_after_server_restart(nps_server: Callable[..., Any], go_npc: Callable[..., Any],
                                         echo: EchoServer) -> None:
    """When our nps restarts, the Go npc (no-config mode) logs in again and the tunnel works."""
    server = legacy_server(nps_server)
    client = server.add_client("router")
    port = support.free_port()
    server.add_tunnel(client.id, port, f"127.0.0.1:{echo.port}")
    npc = go_npc(f"-server={server.bridge_addr}", f"-vkey={client.vkey}", "-type=tcp")
    support.until(lambda: echo_works(port), what="echo before restart")
    server.restart()
    support.until(lambda: support.count_in_log(npc, "Successful connection with server") >= 2, timeout=90,
                  what="npc reconnected")
    support.until(lambda: echo_works(port), what="echo after restart")


def test_register_with_ip_limit(nps_server: Callable[..., Any], go_npc: Callable[..., Any],
                                echo: EchoServer) -> None:
    """With ip_limit=true the tunnel refuses until `npc register` from this address."""
    server = legacy_server(nps_server, ip_limit=True)
    client = server.add_client("router")
    port = support.free_port()
    server.add_tunnel(client.id, port, f"127.0.0.1:{echo.port}")
    go_npc(f"-server={server.bridge_addr}", f"-vkey={client.vkey}", "-type=tcp")
    support.until(lambda: "legacy 0.26" in client_list(server), what="client online")
    assert not echo_works(port)
    reg = go_npc("register", f"-server={server.bridge_addr}", f"-vkey={client.vkey}", "-time=1", name="register")
    assert reg.wait(30) == 0
    support.until(lambda: echo_works(port), what="echo after register")
    assert "registered by client" in server.log_text()


# -- config-file mode ---------------------------------------------------------------------


def npc_conf(server: Any, vkey: str, sections: dict[str, dict[str, object]], **common: object) -> str:
    return support.render_npc_conf(server.bridge_addr, vkey, sections, **common)


def test_config_mode_public_vkey(nps_server: Callable[..., Any], go_npc: Callable[..., Any], echo: EchoServer,
                                 udp_echo: UdpEcho, http_backend: Any, tmp_path: Path) -> None:
    """npc -config with public_vkey: tcp, udp, file and secret tunnels and a domain section from its
    npc.conf; `npc status` lists them; a secret visitor (another Go npc) reaches the secret target."""
    http_port = support.free_port()
    server = legacy_server(nps_server, public_vkey=PUBLIC_VKEY, http_proxy_ip="127.0.0.1",
                           http_proxy_port=http_port)
    tcp_port, udp_port, file_port, visit_port = (support.free_port() for _ in range(4))
    share = tmp_path / "share"
    share.mkdir()
    (share / "a.txt").write_text("served by the Go npc\n")
    conf = npc_conf(server, PUBLIC_VKEY, {
        "web": {"host": "legacy.example.test", "target_addr": f"127.0.0.1:{http_backend.port}"},
        "tcp1": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": tcp_port,
                 "target_addr": f"127.0.0.1:{echo.port}"},
        "udp1": {"mode": "udp", "server_ip": "127.0.0.1", "server_port": udp_port,
                 "target_addr": f"127.0.0.1:{udp_echo.port}"},
        "files": {"mode": "file", "server_ip": "127.0.0.1", "server_port": file_port, "local_path": share,
                  "strip_pre": "/web/"},
        "sec": {"mode": "secret", "password": "legacy-secret-pw", "target_addr": f"127.0.0.1:{echo.port}"},
    })
    npc = go_npc(conf=conf)
    support.wait_for_log(npc, "Successful connection with server")
    support.until(lambda: echo_works(tcp_port), what="tcp from npc.conf")
    support.until(lambda: udp_roundtrip(udp_port, b"u") == b"echo:u", what="udp from npc.conf")

    def fetch_file() -> bytes:
        return subprocess.run(["curl", "-sf", "--max-time", "10", f"http://127.0.0.1:{file_port}/web/a.txt"],
                              capture_output=True, timeout=30).stdout

    def fetch_domain() -> bytes:
        return subprocess.run(["curl", "-sf", "--max-time", "10", "-H", "Host: legacy.example.test",
                               f"http://127.0.0.1:{http_port}/hello.txt"], capture_output=True, timeout=30).stdout

    if shutil.which("curl"):
        support.until(lambda: fetch_file() == b"served by the Go npc\n", what="file mode")
        support.until(lambda: fetch_domain() == http_backend.HELLO, what="domain through the Go npc")
    visitor = go_npc(f"-server={server.bridge_addr}", f"-vkey={PUBLIC_VKEY}", "-type=tcp",
                     "-password=legacy-secret-pw", "-local_type=secret", f"-local_port={visit_port}", name="visitor")
    support.wait_for_port("127.0.0.1", visit_port, proc=visitor)
    support.until(lambda: echo_works(visit_port), what="secret visitor")
    status = go_npc("status", f"-config={Path(npc.argv[-1].split('=', 1)[1])}", name="status")
    assert status.wait(30) == 0
    text = status.log_text()
    assert "tcp1 ok" in text and "udp1 ok" in text and "web ok" in text, text
    assert "legacy 0.26" in client_list(server)


@pytest.mark.parametrize("flag", ["crypt", "compress"])
def test_config_mode_crypt_compress(nps_server: Callable[..., Any], go_npc: Callable[..., Any], echo: EchoServer,
                                    flag: str) -> None:
    """[common] crypt=true / compress=true in the Go npc's npc.conf: streams are TLS / snappy and intact."""
    server = legacy_server(nps_server, public_vkey=PUBLIC_VKEY)
    port = support.free_port()
    conf = npc_conf(server, PUBLIC_VKEY, {"t": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": port,
                                                "target_addr": f"127.0.0.1:{echo.port}"}}, **{flag: True})
    go_npc(conf=conf)
    support.until(lambda: echo_works(port), what=f"echo with {flag}")
    payload = os.urandom(500_000) + b"a" * 500_000
    assert roundtrip(port, payload, timeout=120) == payload


def test_config_mode_reconnects_after_restart(nps_server: Callable[..., Any], go_npc: Callable[..., Any],
                                              echo: EchoServer) -> None:
    """A config-file Go npc (auto_reconnection=true) sends its npc.conf again after our nps restarts,
    and its tunnel opens again on the same port."""
    server = legacy_server(nps_server, public_vkey=PUBLIC_VKEY)
    port = support.free_port()
    conf = npc_conf(server, PUBLIC_VKEY, {"t": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": port,
                                                "target_addr": f"127.0.0.1:{echo.port}"}})
    npc = go_npc(conf=conf)
    support.until(lambda: echo_works(port), what="echo before restart")
    server.restart()
    support.until(lambda: support.count_in_log(npc, "Successful connection with server") >= 2, timeout=90,
                  what="npc reconnected")
    support.until(lambda: echo_works(port), what="echo after restart")


def test_private_vkey_config_mode(nps_server: Callable[..., Any], go_npc: Callable[..., Any],
                                  echo: EchoServer) -> None:
    """npc -config with a client's own vkey (config_conn_allow): its npc.conf tunnel opens under that client."""
    server = legacy_server(nps_server)
    client = server.add_client("conf-client")
    port = support.free_port()
    conf = npc_conf(server, client.vkey, {"t": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": port,
                                                "target_addr": f"127.0.0.1:{echo.port}"}})
    go_npc(conf=conf)
    support.until(lambda: echo_works(port), what="echo through config tunnel")
    assert "conf-client" in client_list(server)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
