# -*- test-case-name: test.test_e2e_socks5 -*-
"""
End-to-end tests of the socks5 mode with real processes on loopback.

A real C{nps} (config-file mode, C{public_vkey}) and a real C{npc} whose
npc.conf has a C{mode=socks5} section; clients are C{curl} and small
SOCKS5 clients written here with plain sockets.  Nothing is timed: waits
are bounded polls and socket timeouts.
"""
from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
from typing import Any, Callable

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

Proc = support.Proc
VKEY = "socks5-e2e-public-key-0123456789abcdef"
TIMEOUT = 20.0

#: A UDP echo server on 127.0.0.1: answers b"echo:" + datagram; prints its port.
UDP_ECHO = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print("listening", s.getsockname()[1], flush=True)
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(b"echo:" + data, addr)
"""


def start_socks(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], **common: object
) -> tuple[Any, Proc, int]:
    """nps + npc with one socks5 section on 127.0.0.1; returns (server, npc, proxy port)."""
    return support.start_config_tunnel(nps_server, npc_client, VKEY, "socks", {"mode": "socks5"}, **common)


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", str(int(TIMEOUT)), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT + 10)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {size} bytes: {data!r}")
        data += chunk
    return data


def read_reply(sock: socket.socket) -> tuple[int, str, int]:
    """Read a SOCKS5 request reply; return (code, bound host, bound port)."""
    head = recv_exactly(sock, 4)
    assert head[0] == 5, head
    atyp = head[3]
    if atyp == 1:
        host = socket.inet_ntop(socket.AF_INET, recv_exactly(sock, 4))
    elif atyp == 4:
        host = socket.inet_ntop(socket.AF_INET6, recv_exactly(sock, 16))
    else:
        host = recv_exactly(sock, recv_exactly(sock, 1)[0]).decode()
    (port,) = struct.unpack("!H", recv_exactly(sock, 2))
    return head[1], host, port


def socks_request(port: int, request: bytes, greeting: bytes = b"\x05\x01\x00") -> tuple[socket.socket, int, str, int]:
    """Greet without auth, send C{request}; return (socket, reply code, host, port)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(greeting)
    assert recv_exactly(sock, 2) == b"\x05\x00"
    sock.sendall(request)
    code, host, bport = read_reply(sock)
    return sock, code, host, bport


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed: reads reach EOF (or a reset) before TIMEOUT."""
    sock.settimeout(TIMEOUT)
    try:
        for _ in range(1000):
            if not sock.recv(4096):
                return True
    except ConnectionResetError:
        return True
    return False


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


# ---------------------------------------------------------------- tests ---


@needs_curl
def test_curl_through_socks5(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], http_backend: Any
) -> None:
    """
    curl fetches a page through the socks5 port both with a host name that
    the npc resolves (C{--socks5-hostname ... http://localhost:...}) and with
    an IP address (C{--socks5}); a 1 MiB file arrives intact.
    """
    _, _, port = start_socks(nps_server, npc_client)
    proxy = f"127.0.0.1:{port}"
    res = curl("--socks5-hostname", proxy, http_backend.url("hello.txt", host="localhost"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == support.HTTPBackend.HELLO
    res = curl("--socks5", proxy, http_backend.url("hello.txt"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == support.HTTPBackend.HELLO
    res = curl("--socks5-hostname", proxy, http_backend.url("big.bin"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == http_backend.files["big.bin"]


@needs_curl
def test_curl_with_accounts(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], http_backend: Any
) -> None:
    """
    With C{basic_username}/C{basic_password} in npc.conf's [common], curl
    with the right C{--proxy-user} gets the page; a wrong password and no
    credentials at all are refused (and the server logs why).
    """
    server, _, port = start_socks(nps_server, npc_client, basic_username="alice", basic_password="s3cret")
    proxy = f"127.0.0.1:{port}"
    url = http_backend.url("hello.txt")
    res = curl("--socks5-hostname", proxy, "--proxy-user", "alice:s3cret", url)
    assert res.returncode == 0, res.stderr
    assert res.stdout == support.HTTPBackend.HELLO
    wrong = curl("--socks5-hostname", proxy, "--proxy-user", "alice:nope", url)
    assert wrong.returncode != 0 and wrong.stdout == b""
    anonymous = curl("--socks5-hostname", proxy, url)
    assert anonymous.returncode != 0 and anonymous.stdout == b""
    support.wait_for_log(server.proc, "wrong user name or password")
    support.wait_for_log(server.proc, "does not offer user/password")

    # The same refusals, byte by byte: 0xFF for no acceptable method, status 1 for bad credentials.
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exactly(sock, 2) == b"\x05\xff"
        assert closed_by_server(sock)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\x05\x01\x02" + b"\x01\x05alice\x04nope")
        assert recv_exactly(sock, 4) == b"\x05\x02\x01\x01"
        assert closed_by_server(sock)


@needs_curl
def test_refused_target(nps_server: Callable[..., Any], npc_client: Callable[..., Proc]) -> None:
    """
    A CONNECT to a closed port gets reply 0x05 (connection refused) and a
    close; curl reports the failure; a name that does not resolve gets a
    failure reply too (0x04, host unreachable).
    """
    _, _, port = start_socks(nps_server, npc_client)
    closed = support.free_port()
    request = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", closed)
    sock, code, _, _ = socks_request(port, request)
    with sock:
        assert code == 0x05
        assert closed_by_server(sock)
    res = curl("--socks5-hostname", f"127.0.0.1:{port}", f"http://127.0.0.1:{closed}/")
    assert res.returncode != 0
    # curl names the reply: "Connection refused" in newer releases, "(5)" in older ones.
    assert b"refused" in res.stderr.lower() or b"(5)" in res.stderr, res.stderr
    name = b"no-such-host.invalid"
    request = b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", 80)
    sock, code, _, _ = socks_request(port, request)
    with sock:
        assert code == 0x04
        assert closed_by_server(sock)


def test_udp_associate(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc]
) -> None:
    """
    A UDP ASSOCIATE client sends datagrams through the association to a UDP
    echo server (by IP and by name) and gets each answer back with the SOCKS
    UDP header of the echo server's address; closing the control connection
    ends the association.
    """
    echo = spawn([sys.executable, "-c", UDP_ECHO], name="udp-echo")
    echo_port = int(support.wait_for_log(echo, "listening ").split()[1])
    _, _, port = start_socks(nps_server, npc_client)
    control, code, relay_host, relay_port = socks_request(port, b"\x05\x03\x00\x01" + bytes(4) + bytes(2))
    assert code == 0
    assert relay_host == "127.0.0.1" and relay_port > 0
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(2.0)
    try:
        by_ip = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", echo_port)
        name = b"localhost"
        by_name = b"\x00\x00\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", echo_port)
        for header, payload in ((by_ip, b"ping-1"), (by_name, b"ping-2")):
            answer = None
            for _ in range(10):  # UDP may drop: retry a bounded number of times
                udp.sendto(header + payload, (relay_host, relay_port))
                try:
                    answer, _ = udp.recvfrom(65535)
                    break
                except socket.timeout:
                    continue
            assert answer is not None, "no answer through the association"
            assert answer == by_ip + b"echo:" + payload
        fragment = b"\x00\x00\x01\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", echo_port) + b"frag"
        udp.sendto(fragment, (relay_host, relay_port))
        with pytest.raises(socket.timeout):
            udp.recvfrom(65535)
    finally:
        control.close()
        udp.close()


def test_garbage_handshakes(nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc]) -> None:
    """
    Garbage (an HTTP request), a SOCKS4 request, a truncated greeting
    followed by a half-close, BIND (reply 0x07) and a bad address type
    (reply 0x08) each get their connection closed, while a good client on
    the same port still completes a CONNECT and echoes through it.
    """
    echo = spawn([sys.executable, "-c", TCP_ECHO], name="tcp-echo")
    echo_port = int(support.wait_for_log(echo, "listening ").split()[1])
    server, _, port = start_socks(nps_server, npc_client)
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00"):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(junk)
            assert closed_by_server(sock)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\x05\x02\x00")
        sock.shutdown(socket.SHUT_WR)
        assert closed_by_server(sock)
    sock, code, _, _ = socks_request(port, b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50")
    with sock:
        assert code == 0x07
        assert closed_by_server(sock)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x09\x00\x00")
        assert recv_exactly(sock, 2) == b"\x05\x00"
        assert read_reply(sock)[0] == 0x08
        assert closed_by_server(sock)
    support.wait_for_log(server.proc, "not a SOCKS5 greeting")

    request = b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", echo_port)
    sock, code, _, _ = socks_request(port, request)
    with sock:
        assert code == 0
        sock.sendall(b"hello socks")
        assert recv_exactly(sock, len(b"hello socks")) == b"hello socks"
        sock.shutdown(socket.SHUT_WR)
        assert closed_by_server(sock)


#: A TCP echo server on 127.0.0.1 (one thread per connection); prints its port.
TCP_ECHO = r"""
import socket, threading
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
print("listening", srv.getsockname()[1], flush=True)
def handle(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""


@needs_curl
def test_multi_account_file(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], http_backend: Any, tmp_path: Any
) -> None:
    """
    A socks5 section's C{multi_account} file (C{user=password} lines) lets
    each listed user in and refuses a wrong password.
    """
    accounts = tmp_path / "accounts.conf"
    accounts.write_text("# socks users\nbob=one\ncarol=two\n")
    server = nps_server(public_vkey=VKEY)
    port = support.free_port()
    conf = support.render_npc_conf(
        server.bridge_addr, VKEY,
        {"socks": {"mode": "socks5", "server_ip": "127.0.0.1", "server_port": port,
                   "multi_account": str(accounts)}},
    )
    npc = npc_client(conf=conf)
    support.wait_for_log(npc, "is open on the server")
    support.wait_for_port("127.0.0.1", port, proc=server.proc)
    url = http_backend.url("hello.txt")
    for user in ("bob:one", "carol:two"):
        res = curl("--socks5-hostname", f"127.0.0.1:{port}", "--proxy-user", user, url)
        assert res.returncode == 0, res.stderr
        assert res.stdout == support.HTTPBackend.HELLO
    wrong = curl("--socks5-hostname", f"127.0.0.1:{port}", "--proxy-user", "bob:two", url)
    assert wrong.returncode != 0 and wrong.stdout == b""
