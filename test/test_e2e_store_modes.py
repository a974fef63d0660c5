# -*- test-case-name: test.test_e2e_store_modes -*-
"""Proxy modes defined on the server (nps tunnel add), used by real clients through a no-config npc."""
from __future__ import annotations

import shutil
import subprocess
from typing import Any, Callable

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def stored_proxies(nps_server: Callable[..., Any], npc_client: Callable[..., Any]) -> dict[str, int]:
    """A client stored with basic credentials, its socks5 and httpProxy tunnels, and its npc running."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (see .ci/apt-packages.txt)")
    server = nps_server(start=False)
    client = server.add_client("proxies", "--basic-user", "alice", "--basic-password", "s3cret")
    assert client.id is not None
    ports = {"socks5": support.free_port(), "httpProxy": support.free_port()}
    for mode, port in ports.items():
        res = server.admin("tunnel", "add", "--client", str(client.id), "--mode", mode, "--port", str(port),
                           "--server-ip", "127.0.0.1")
        assert res.returncode == 0, res.stderr
    server.start()
    npc = npc_client(*client.npc_args)
    for port in ports.values():
        support.wait_for_port("127.0.0.1", port, 30, proc=npc)
    support.wait_for_log(npc, "connected to server", 30)
    return ports


def test_stored_socks5_tunnel_uses_the_clients_credentials(
    stored_proxies: dict[str, int], http_backend: Any
) -> None:
    """The stored client's basic_username/basic_password guard its socks5 tunnel: right ones pass, none fail."""
    url = http_backend.url("hello.txt")
    proxy = f"127.0.0.1:{stored_proxies['socks5']}"
    ok = curl("--socks5-hostname", proxy, "--proxy-user", "alice:s3cret", url)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == (http_backend.dir / "hello.txt").read_text()
    assert curl("--socks5-hostname", proxy, url).returncode != 0
    assert curl("--socks5-hostname", proxy, "--proxy-user", "alice:wrong", url).returncode != 0


def test_stored_http_proxy_tunnel_uses_the_clients_credentials(
    stored_proxies: dict[str, int], http_backend: Any
) -> None:
    """The stored client's credentials guard its httpProxy tunnel: 407 without them, the file with them."""
    url = http_backend.url("hello.txt")
    proxy = f"http://127.0.0.1:{stored_proxies['httpProxy']}"
    denied = curl("-o", "/dev/null", "-w", "%{http_code}", "-x", proxy, url)
    assert denied.stdout == "407", denied
    ok = curl("-x", proxy, "--proxy-user", "alice:s3cret", url)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == (http_backend.dir / "hello.txt").read_text()
