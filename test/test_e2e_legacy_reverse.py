"""
End to end, the other way round: our npc with C{-proto=0.26} against the real
Go nps 0.26.10, for users who cannot replace their server yet.  Skipped with
a message when the binary is absent (see /work/shared/peers/README.md).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

try:
    from . import support  # type: ignore[import-not-found]
    from .legacy_peers import GO_NPS, GoNps, missing  # type: ignore[import-not-found]
    from .test_e2e_legacy import EchoServer, UdpEcho, echo_works, roundtrip, udp_roundtrip  # type: ignore
except ImportError:
    import support  # type: ignore[no-redef]
    from legacy_peers import GO_NPS, GoNps, missing  # type: ignore[no-redef]
    from test_e2e_legacy import EchoServer, UdpEcho, echo_works, roundtrip, udp_roundtrip  # type: ignore

pytestmark = pytest.mark.e2e


@pytest.fixture
def go_nps(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., GoNps]]:
    reason = missing(GO_NPS)
    if reason:
        pytest.skip(reason)
    servers: list[GoNps] = []

    def _make() -> GoNps:
        server = GoNps(tmp_path / f"gonps{len(servers)}")
        servers.append(server)
        return server

    yield _make
    for server in servers:
        server.stop()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def our_npc(npc_client: Callable[..., Any], server: GoNps, vkey: str, name: str = "npc") -> Any:
    return npc_client("-proto=0.26", f"-server={server.bridge_addr}", f"-vkey={vkey}", name=name)


def test_tcp_and_udp_through_go_nps(go_nps: Callable[..., GoNps], npc_client: Callable[..., Any],
                                    echo: EchoServer) -> None:
    """Our npc logs in to the Go nps; its tcp tunnel carries 8 MB intact and its udp tunnel echoes."""
    udp = UdpEcho()
    try:
        server = go_nps()
        client = server.add_client("py-vkey-1")
        tcp_port, udp_port = support.free_port(), support.free_port()
        server.add_tunnel(client, tcp_port, f"127.0.0.1:{echo.port}")
        server.add_tunnel(client, udp_port, f"127.0.0.1:{udp.port}", mode="udp")
        server.start()
        npc = our_npc(npc_client, server, "py-vkey-1")
        support.wait_for_log(npc, "connected to NPS 0.26 server")
        support.until(lambda: echo_works(tcp_port), what="echo through the Go nps")
        payload = os.urandom(8 << 20)
        assert roundtrip(tcp_port, payload, timeout=120) == payload
        support.until(lambda: udp_roundtrip(udp_port, b"dgram") == b"echo:dgram", what="udp echo")
    finally:
        udp.close()


@pytest.mark.parametrize("flag", ["crypt", "compress"])
def test_crypt_and_compress_from_go_nps(go_nps: Callable[..., GoNps], npc_client: Callable[..., Any],
                                        echo: EchoServer, flag: str) -> None:
    """A Go nps client record with crypt (TLS per stream) or compress (snappy): our npc unwraps it."""
    server = go_nps()
    client = server.add_client("py-vkey-2", **{flag: True})
    port = support.free_port()
    server.add_tunnel(client, port, f"127.0.0.1:{echo.port}")
    server.start()
    our_npc(npc_client, server, "py-vkey-2")
    support.until(lambda: echo_works(port), what=f"echo with {flag}")
    payload = os.urandom(1 << 20) + b"q" * (1 << 20)
    assert roundtrip(port, payload, timeout=120) == payload


def test_wrong_vkey_stops_npc(go_nps: Callable[..., GoNps], npc_client: Callable[..., Any]) -> None:
    """A vkey the Go nps does not know: our npc says so and exits with status 1."""
    server = go_nps()
    server.add_client("the-right-key")
    server.start()
    npc = our_npc(npc_client, server, "a-wrong-key")
    assert npc.wait(60) == 1
    assert "refused the vkey" in npc.log_text()


def test_reconnects_after_go_nps_restart(go_nps: Callable[..., GoNps], npc_client: Callable[..., Any],
                                         echo: EchoServer) -> None:
    """When the Go nps restarts our npc logs in again and the tunnel works."""
    server = go_nps()
    client = server.add_client("py-vkey-3")
    port = support.free_port()
    server.add_tunnel(client, port, f"127.0.0.1:{echo.port}")
    server.start()
    npc = our_npc(npc_client, server, "py-vkey-3")
    support.until(lambda: echo_works(port), what="echo before restart")
    server.restart()
    support.until(lambda: support.count_in_log(npc, "connected to NPS 0.26 server") >= 2, timeout=90,
                  what="npc reconnected")
    support.until(lambda: echo_works(port), what="echo after restart")


def test_config_mode_against_go_nps(go_nps: Callable[..., GoNps], npc_client: Callable[..., Any],
                                    echo: EchoServer, tmp_path: Path) -> None:
    """npc -proto=0.26 -config=npc.conf with the Go nps's public_vkey: its tcp and file tunnels open on the
    Go nps (the file tunnel served from our npc's directory over NPS's file connection)."""
    import subprocess

    server = go_nps()
    server.public_vkey = "go-public-key-0123456789"
    server.start()
    tcp_port, file_port = support.free_port(), support.free_port()
    share = tmp_path / "share"
    share.mkdir()
    (share / "f.txt").write_text("from our npc\n")
    conf = support.render_npc_conf(server.bridge_addr, server.public_vkey, {
        "t": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": tcp_port,
              "target_addr": f"127.0.0.1:{echo.port}"},
        "files": {"mode": "file", "server_ip": "127.0.0.1", "server_port": file_port, "local_path": share,
                  "strip_pre": "/s/"},
    })
    npc = npc_client("-proto=0.26", conf=conf)
    support.wait_for_log(npc, "connected to NPS 0.26 server")
    support.until(lambda: echo_works(tcp_port), what="config tunnel through the Go nps")

    def fetch() -> bytes:
        return subprocess.run(["curl", "-sf", "--max-time", "10", f"http://127.0.0.1:{file_port}/s/f.txt"],
                              capture_output=True, timeout=30).stdout

    support.until(lambda: fetch() == b"from our npc\n", what="file tunnel through the Go nps")


def test_config_mode_refused_tunnel(go_nps: Callable[..., GoNps], npc_client: Callable[..., Any]) -> None:
    """A tunnel the Go nps refuses (its port is taken): our npc names the section and exits with 1."""
    import socket

    server = go_nps()
    server.public_vkey = "go-public-key-0123456789"
    server.start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        conf = support.render_npc_conf(server.bridge_addr, server.public_vkey, {
            "busy": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": port, "target_addr": "127.0.0.1:9"}})
        npc = npc_client("-proto=0.26", conf=conf)
        assert npc.wait(60) == 1
    assert "refused tunnel [busy]" in npc.log_text()


def test_register_against_go_nps(go_nps: Callable[..., GoNps], npc_client: Callable[..., Any],
                                 echo: EchoServer) -> None:
    """With the Go nps's ip_limit=true, `npc register -proto=0.26` from this address opens its tunnels."""
    server = go_nps()
    server.extra["ip_limit"] = "true"
    client = server.add_client("py-vkey-reg")
    port = support.free_port()
    server.add_tunnel(client, port, f"127.0.0.1:{echo.port}")
    server.start()
    npc = our_npc(npc_client, server, "py-vkey-reg")
    support.wait_for_log(npc, "connected to NPS 0.26 server")
    assert not echo_works(port)
    reg = npc_client("register", "-proto=0.26", f"-server={server.bridge_addr}", "-vkey=py-vkey-reg", "-time=1",
                     name="register")
    assert reg.wait(30) == 0, reg.log_text()
    support.until(lambda: echo_works(port), what="echo after register")


def test_secret_visitor_against_go_nps(go_nps: Callable[..., GoNps], npc_client: Callable[..., Any],
                                       echo: EchoServer) -> None:
    """A secret tunnel on the Go nps: our npc -proto=0.26 provides it, another visits it with -password."""
    server = go_nps()
    provider = server.add_client("py-provider")
    server.add_client("py-visitor")
    server.add_tunnel(provider, 0, f"127.0.0.1:{echo.port}", mode="secret", password="go-secret-pw")
    server.start()
    npc = our_npc(npc_client, server, "py-provider")
    support.wait_for_log(npc, "connected to NPS 0.26 server")
    local = support.free_port()
    visitor = npc_client("-proto=0.26", f"-server={server.bridge_addr}", "-vkey=py-visitor",
                         "-password=go-secret-pw", "-local_type=secret", f"-local_port={local}", name="visitor")
    support.wait_for_port("127.0.0.1", local, proc=visitor)
    support.until(lambda: echo_works(local), what="echo through the secret tunnel")
    payload = os.urandom(1 << 20)
    assert roundtrip(local, payload, timeout=60) == payload


def test_bad_proto_flags(npc_client: Callable[..., Any]) -> None:
    """-proto takes only 0.26, and with it only the flags it supports; each mistake is named."""
    bad = npc_client("-proto=0.27", "-server=127.0.0.1:1", "-vkey=k", name="bad1")
    assert bad.wait(30) == 2 and "-proto='0.27'" in bad.log_text()
    bad = npc_client("-proto=0.26", "-server=127.0.0.1:1", "-vkey=k", "-target=1.2.3.4:5", name="bad2")
    assert bad.wait(30) == 2 and "not supported with -proto=0.26" in bad.log_text()
    bad = npc_client("-proto=0.26", "-server=127.0.0.1:1", "-vkey=k", "-password=x", "-local_type=p2p", name="bad3")
    assert bad.wait(30) == 2 and "only secret visitors" in bad.log_text()
