# -*- test-case-name: test.test_e2e_file -*-
"""
End-to-end tests of the C{file} mode with real processes on loopback.

One real C{nps} (public_vkey) and one real C{npc} in config-file mode with
three C{mode=file} sections are started once for the module: C{[web]}
serves a temporary directory, C{[pre]} serves it under C{strip_pre=/web/},
and C{[gone]} points at a directory that does not exist.  The directory
holds small files, a subdirectory, a 20 MiB random file and symbolic links
pointing outside it.  Requests are made with real C{curl}.  No timing is
asserted: readiness is waited for with bounded polls.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import attrs
import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

VKEY = "file-mode-e2e-key"
BIG_SIZE = 20 * 1024 * 1024
HELLO = b"hello from the file tunnel\n"
INNER = b"inner file in a subdirectory\n"
SECRET = b"TOP-SECRET-outside-the-root-" + os.urandom(8).hex().encode() + b"\n"


@attrs.frozen
class FileTunnels:
    """The running processes and what they serve."""

    server: support.NpsServer
    npc: support.Proc
    port: int
    pre_port: int
    gone_port: int
    gone_path: str
    root: Path
    big_sha256: str


@pytest.fixture(scope="module")
def tunnels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileTunnels]:
    """
    nps + npc with the three file tunnels, and the served directory.
    """
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    base = tmp_path_factory.mktemp("filemode")
    root = base / "www"
    (root / "sub").mkdir(parents=True)
    (root / "hello.txt").write_bytes(HELLO)
    (root / "sub" / "inner.txt").write_bytes(INNER)
    (root / "name with space.txt").write_bytes(b"spaced\n")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "leakdir").symlink_to(outside)
    (root / "inner-link.txt").symlink_to(root / "sub" / "inner.txt")
    h = hashlib.sha256()
    with open(root / "big.bin", "wb") as f:
        for _ in range(BIG_SIZE // (1 << 20)):
            block = os.urandom(1 << 20)
            h.update(block)
            f.write(block)

    port, pre_port, gone_port = support.free_port(), support.free_port(), support.free_port()
    gone_path = str(base / "does-not-exist")
    server = support.NpsServer(tmp_path_factory.mktemp("nps"), VKEY)
    server.start()
    conf = support.render_npc_conf(server.bridge_addr, VKEY, {
        "web": {"mode": "file", "server_ip": "127.0.0.1", "server_port": port, "local_path": root},
        "pre": {"mode": "file", "server_ip": "127.0.0.1", "server_port": pre_port, "local_path": root,
                "strip_pre": "/web/"},
        "gone": {"mode": "file", "server_ip": "127.0.0.1", "server_port": gone_port, "local_path": gone_path},
    })
    npc = support.start_npc(tmp_path_factory.mktemp("npc"), conf=conf)
    try:
        support.wait_for_log(npc, "connected to server")
        for p in (port, pre_port, gone_port):
            support.wait_for_port("127.0.0.1", p, proc=npc)
        yield FileTunnels(server, npc, port, pre_port, gone_port, gone_path, root, h.hexdigest())
    finally:
        npc.stop()
        server.stop()


def curl(url: str, *args: str, max_time: int = 60) -> tuple[int, bytes]:
    """
    Run curl on C{url}; return (HTTP status, body). Status 0 if no response.
    """
    res = subprocess.run(
        ["curl", "-sS", "--max-time", str(max_time), "-o", "-", "-w", "%{stderr}%{http_code}", *args, url],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=max_time + 30,
    )
    tail = res.stderr.decode("utf-8", "replace").strip()[-3:]
    return (int(tail) if tail.isdigit() else 0), res.stdout


def url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


# --------------------------------------------------------------- tests ---


def test_get_file_and_subdirectory(tunnels: FileTunnels) -> None:
    """
    curl fetches a file at the root, one in a subdirectory, one with an
    encoded space, and one through a symbolic link that stays inside the root.
    """
    assert curl(url(tunnels.port, "/hello.txt")) == (200, HELLO)
    assert curl(url(tunnels.port, "/sub/inner.txt")) == (200, INNER)
    assert curl(url(tunnels.port, "/name%20with%20space.txt")) == (200, b"spaced\n")
    assert curl(url(tunnels.port, "/inner-link.txt")) == (200, INNER)


def test_directory_listing(tunnels: FileTunnels) -> None:
    """
    The root and a subdirectory are listed as HTML with links to their
    entries; links that lead outside the root are not listed; a directory
    asked without its trailing slash redirects to it.
    """
    status, body = curl(url(tunnels.port, "/"))
    assert status == 200
    assert b'href="hello.txt"' in body and b'href="sub/"' in body and b'href="big.bin"' in body
    assert b"leak" not in body
    status, body = curl(url(tunnels.port, "/sub/"))
    assert status == 200 and b'href="inner.txt"' in body
    status, _ = curl(url(tunnels.port, "/sub"))
    assert status == 302
    status, body = curl(url(tunnels.port, "/sub"), "-L")
    assert status == 200 and b'href="inner.txt"' in body


def test_big_file_sha256(tunnels: FileTunnels) -> None:
    """
    A 20 MiB random file arrives whole: length and sha256 match.
    """
    status, body = curl(url(tunnels.port, "/big.bin"))
    assert status == 200
    assert len(body) == BIG_SIZE
    assert hashlib.sha256(body).hexdigest() == tunnels.big_sha256


def test_range_request(tunnels: FileTunnels) -> None:
    """
    C{curl -r 0-99} gets exactly the first 100 bytes with status 206, and a
    range in the middle of the big file matches the file's bytes.
    """
    data = (tunnels.root / "big.bin").read_bytes()
    assert curl(url(tunnels.port, "/big.bin"), "-r", "0-99") == (206, data[:100])
    assert curl(url(tunnels.port, "/big.bin"), "-r", "1000000-1000999") == (206, data[1000000:1001000])


def test_head(tunnels: FileTunnels) -> None:
    """
    HEAD answers 200 with the file's length and no body.
    """
    res = subprocess.run(["curl", "-sS", "-I", "--max-time", "30", url(tunnels.port, "/hello.txt")],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    head = res.stdout.decode("latin-1").lower()
    assert head.startswith("http/1.1 200")
    assert f"content-length: {len(HELLO)}" in head


def test_strip_pre(tunnels: FileTunnels) -> None:
    """
    With C{strip_pre=/web/}, C{/web/x} serves C{local_path/x}, C{/web/}
    lists the root, and a path outside the prefix is not found.
    """
    assert curl(url(tunnels.pre_port, "/web/hello.txt")) == (200, HELLO)
    assert curl(url(tunnels.pre_port, "/web/sub/inner.txt")) == (200, INNER)
    status, body = curl(url(tunnels.pre_port, "/web/"))
    assert status == 200 and b'href="hello.txt"' in body
    assert curl(url(tunnels.pre_port, "/hello.txt"))[0] == 404
    assert curl(url(tunnels.pre_port, "/webx/hello.txt"))[0] == 404
    status, _ = curl(url(tunnels.pre_port, "/web"))
    assert status == 302


@pytest.mark.parametrize("path", [
    "/../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2fetc/passwd",
    "/sub/../../etc/passwd",
    "/%2E%2E/outside/secret.txt",
    "/..%5c..%5cetc/passwd",
    "/leak.txt",
    "/leakdir/secret.txt",
    "/leakdir/",
    "/../outside/secret.txt",
])
def test_escape_attempts_fail(tunnels: FileTunnels, path: str) -> None:
    """
    Sent verbatim (C{--path-as-is}), traversal with C{..}, encoded dots,
    encoded slashes and backslashes, and symbolic links pointing outside the
    root all get a 4xx and never the outside file's content.
    """
    for port in (tunnels.port, tunnels.pre_port):
        prefix = "/web" if port == tunnels.pre_port else ""
        status, body = curl(url(port, prefix + path), "--path-as-is")
        assert 400 <= status < 500, (path, status)
        assert SECRET.strip() not in body
        assert b"root:" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_writes_refused(tunnels: FileTunnels, method: str) -> None:
    """
    POST, PUT and DELETE get 405 with C{Allow: GET, HEAD}; nothing changes on disk.
    """
    before = sorted(os.listdir(tunnels.root))
    res = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "30", "-X", method, "--data-binary", "written",
         url(tunnels.port, "/new.txt")],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
    )
    head = res.stdout.decode("latin-1").lower()
    assert head.startswith("http/1.1 405"), head[:200]
    assert "allow: get, head" in head
    assert sorted(os.listdir(tunnels.root)) == before
    assert curl(url(tunnels.port, "/hello.txt"), "-X", method)[0] == 405
    assert (tunnels.root / "hello.txt").read_bytes() == HELLO


def test_garbage_then_still_serving(tunnels: FileTunnels) -> None:
    """
    Garbage bytes (not HTTP) on the public port get a 400 or a close, and
    the tunnel keeps serving the next requests.
    """
    for garbage in (b"\x00\xff\x16\x03\x01garbage\r\n\r\n", b"GET\r\n\r\n", os.urandom(4096)):
        with socket.create_connection(("127.0.0.1", tunnels.port), timeout=30) as s:
            try:
                s.sendall(garbage)
                s.shutdown(socket.SHUT_WR)
                reply = bytearray()
                for _ in range(100):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
            except ConnectionResetError:
                reply = bytearray()
        assert not reply or reply.startswith(b"HTTP/1.1 400"), bytes(reply[:100])
    assert curl(url(tunnels.port, "/hello.txt")) == (200, HELLO)
    assert tunnels.npc.alive and tunnels.server.proc is not None and tunnels.server.proc.alive


def test_missing_local_path_is_refused_with_reason(tunnels: FileTunnels) -> None:
    """
    A tunnel whose local_path does not exist on the npc: the connection is
    closed without a response, npc logs "local_path ... does not exist",
    and the other tunnels keep working.
    """
    status, body = curl(url(tunnels.gone_port, "/hello.txt"), max_time=30)
    assert status == 0 and body == b""
    line = support.wait_for_log(tunnels.npc, f"local_path {tunnels.gone_path} does not exist")
    assert "cannot serve" in line
    assert curl(url(tunnels.port, "/hello.txt")) == (200, HELLO)


def test_aborted_download_then_still_serving(tunnels: FileTunnels) -> None:
    """
    A client that reads part of the big file and then resets the connection
    leaves npc and nps healthy: no traceback in either log, and the next
    download is whole.
    """
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", tunnels.port), timeout=30) as s:
            s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            got = 0
            for _ in range(1000):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
                if got > 1 << 20:
                    break
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    status, body = curl(url(tunnels.port, "/big.bin"))
    assert status == 200 and hashlib.sha256(body).hexdigest() == tunnels.big_sha256
    for text in (tunnels.npc.log_text(), tunnels.server.log_text()):
        assert "Traceback" not in text
        assert "Unhandled" not in text
