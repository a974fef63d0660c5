"""
End-to-end tests of TCP tunnels with real processes on loopback.

Every test runs the real C{nps} and C{npc} console scripts (or C{twistd}
with the dropins) against real targets: OpenSSH, C{python -m http.server}
and a small threaded Python TCP server (echo / sink / source, see
L{TOOL_SERVER}) run as a subprocess. No timing is asserted: conditions are
waited for with bounded polls.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

Proc = support.Proc

#: A threaded TCP server on 127.0.0.1 (port chosen by the kernel, printed as
#: C{listening PORT}). Modes:
#:   - C{echo}: echo every chunk as it arrives; at EOF half-close the reply side.
#:   - C{echo-after-eof}: read until EOF, then send C{b"got N:" + data} and close.
#:   - C{sink}: read until EOF, print C{sink N SHA256} to stdout, reply the same
#:     line, close.
#:   - C{source FILE}: send the file, then close.
TOOL_SERVER = r"""
import hashlib, socket, sys, threading
mode = sys.argv[1]
arg = sys.argv[2] if len(sys.argv) > 2 else None
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(1024)
print("listening", srv.getsockname()[1], flush=True)

def handle(c):
    try:
        c.settimeout(180)
        if mode == "echo":
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
            c.shutdown(socket.SHUT_WR)
        elif mode == "echo-after-eof":
            buf = bytearray()
            while True:
                d = c.recv(65536)
                if not d:
                    break
                buf += d
            c.sendall(b"got %d:" % len(buf) + bytes(buf))
            c.shutdown(socket.SHUT_WR)
        elif mode == "sink":
            h = hashlib.sha256()
            n = 0
            while True:
                d = c.recv(1 << 20)
                if not d:
                    break
                n += len(d)
                h.update(d)
            line = "sink %d %s" % (n, h.hexdigest())
            print(line, flush=True)
            c.sendall(line.encode() + b"\n")
        elif mode == "source":
            with open(arg, "rb") as f:
                c.sendfile(f)
            c.shutdown(socket.SHUT_WR)
    except Exception as e:
        print("handler error", repr(e), flush=True)
    finally:
        c.close()

while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""

BIG_SIZE = 100 * 1024 * 1024


# ------------------------------------------------------------- helpers ---


def start_tool_server(spawn: Callable[..., Proc], mode: str, *args: str) -> int:
    """
    Start L{TOOL_SERVER} in C{mode}; return the port it listens on.
    """
    proc = spawn([sys.executable, "-c", TOOL_SERVER, mode, *args], name=f"tool-{mode}")
    line = support.wait_for_log(proc, "listening ")
    port = int(line.split()[1])
    support.wait_for_port("127.0.0.1", port, proc=proc)
    return port


until = support.until
count_in_log = support.count_in_log


def wait_for_log_count(proc: Proc, substring: str, count: int, timeout: float = 60.0) -> None:
    """
    Wait until C{substring} occurs on at least C{count} lines of C{proc}'s log.
    """
    until(lambda: count_in_log(proc, substring) >= count, timeout,
          f"{count} x {substring!r} in {proc.name} log ({proc.log_path})")


def roundtrip(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """
    Send C{payload} to 127.0.0.1:C{port} and read back as many bytes (echo target).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        got = bytearray()
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return bytes(got)


def echo_works(port: int) -> bool:
    payload = b"ping-" + os.urandom(8).hex().encode()
    return roundtrip(port, payload, timeout=5) == payload


def curl(url: str, max_time: int = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", str(max_time), url],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=max_time + 30,
    )


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def ssh_echo(sshd: Any, port: int, word: str = "hello-through-tunnel") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sshd.ssh_cmd(port=port) + ["echo", word],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )


def server_side_tunnel(
    nps_server: Callable[..., Any],
    npc_client: Callable[..., Proc],
    target: str,
    *,
    public_vkey: str | None = None,
    extra: dict[str, object] | None = None,
) -> tuple[Any, Proc, int]:
    """
    nps with a stored client and a tcp tunnel (admin CLI) to C{target}, and an
    npc in no-config mode connected to it. Returns (server, npc, port).
    """
    server = nps_server(public_vkey, extra, start=False)
    client = server.add_client("e2e")
    port = support.free_port()
    server.add_tunnel(client.id or 1, port, target)
    server.start()
    npc = npc_client(*client.npc_args)
    support.wait_for_log(npc, "connected to server")
    support.wait_for_port("127.0.0.1", port, proc=server.proc)
    return server, npc, port


def config_tunnel_conf(server: Any, vkey: str, target: str, port: int, **common: object) -> str:
    return support.render_npc_conf(
        server.bridge_addr, vkey,
        {"tcp1": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": port, "target_addr": target}},
        **common,
    )


def config_mode_tunnel(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], target: str
) -> tuple[Any, Proc, int]:
    """
    nps with C{public_vkey} and an npc in config-file mode whose npc.conf has
    one tcp section to C{target}. Returns (server, npc, port).
    """
    server = nps_server(public_vkey="e2e-public-key")
    port = support.free_port()
    npc = npc_client(conf=config_tunnel_conf(server, "e2e-public-key", target, port))
    support.wait_for_log(npc, "connected to server")
    support.wait_for_log(npc, "is open on the server")
    support.wait_for_port("127.0.0.1", port, proc=npc)
    return server, npc, port


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """
    100 MiB of random bytes in a file, and its sha256 (generated once).
    """
    path = tmp_path_factory.mktemp("big") / "random.bin"
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(BIG_SIZE // (1 << 20)):
            block = os.urandom(1 << 20)
            h.update(block)
            f.write(block)
    yield path, h.hexdigest()
    path.unlink(missing_ok=True)


# --------------------------------------------------------------- tests ---


def test_ssh_through_server_side_tunnel(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], sshd: Any
) -> None:
    """
    A client and a tcp tunnel added with the admin CLI (C{client add},
    C{tunnel add}) and an npc started with the printed C{-server -vkey -type}
    arguments carry a real ssh session: a remote command's output comes back.
    """
    _, _, port = server_side_tunnel(nps_server, npc_client, f"127.0.0.1:{sshd.port}")
    res = ssh_echo(sshd, port)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "hello-through-tunnel"


def test_ssh_through_config_mode_tunnel(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], sshd: Any
) -> None:
    """
    In config-file mode (npc.conf with a [tcp] section, server with a matching
    public_vkey) the tunnel is registered on connect and carries ssh.
    """
    _, npc, port = config_mode_tunnel(nps_server, npc_client, f"127.0.0.1:{sshd.port}")
    assert "tunnel tcp1 is open on the server" in npc.log_text()
    res = ssh_echo(sshd, port)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "hello-through-tunnel"


@pytest.mark.parametrize("mode", ["server", "config"])
def test_curl_http_backend_through_tunnel(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], http_backend: Any, mode: str
) -> None:
    """
    curl fetches the http backend's small and 1 MiB files byte for byte
    through a tcp tunnel (server-side tunnel and config-file tunnel).
    """
    need("curl")
    make = server_side_tunnel if mode == "server" else config_mode_tunnel
    _, _, port = make(nps_server, npc_client, f"127.0.0.1:{http_backend.port}")
    for name in ("hello.txt", "big.bin"):
        res = curl(http_backend.url(name, port=port))
        assert res.returncode == 0, res.stderr
        assert res.stdout == http_backend.files[name]


def test_100mib_upload_and_download_sha256(
    nps_server: Callable[..., Any],
    npc_client: Callable[..., Proc],
    spawn: Callable[..., Proc],
    big_file: tuple[Path, str],
) -> None:
    """
    100 MiB of random data crosses a tunnel intact in both directions: uploaded
    to a hashing sink (sha256 and length match) and downloaded from a file
    source (sha256 and length match).
    """
    path, digest = big_file
    sink = start_tool_server(spawn, "sink")
    source = start_tool_server(spawn, "source", str(path))
    server = nps_server(start=False)
    client = server.add_client("bulk")
    up, down = support.free_port(), support.free_port()
    server.add_tunnel(client.id or 1, up, f"127.0.0.1:{sink}")
    server.add_tunnel(client.id or 1, down, f"127.0.0.1:{source}")
    server.start()
    npc = npc_client(*client.npc_args)
    support.wait_for_log(npc, "connected to server")

    # Upload: send everything, half-close, read the sink's verdict.
    with socket.create_connection(("127.0.0.1", up), timeout=120) as s:
        with open(path, "rb") as f:
            s.sendfile(f)
        s.shutdown(socket.SHUT_WR)
        reply = bytearray()
        for _ in range(1000):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.decode().strip() == f"sink {BIG_SIZE} {digest}"

    # Download: read until EOF and hash.
    h = hashlib.sha256()
    n = 0
    with socket.create_connection(("127.0.0.1", down), timeout=120) as s:
        for _ in range(BIG_SIZE):  # bounded: at least one byte per iteration
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            n += len(chunk)
            h.update(chunk)
    assert n == BIG_SIZE
    assert h.hexdigest() == digest


def test_200_concurrent_connections_echo(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc]
) -> None:
    """
    200 connections open at the same time through one tunnel, each sending a
    distinct payload, all get exactly their own payload echoed back.
    """
    echo = start_tool_server(spawn, "echo")
    _, _, port = server_side_tunnel(nps_server, npc_client, f"127.0.0.1:{echo}")
    count = 200
    rng = random.Random(20240601)
    payloads = [f"conn-{i:03d}:".encode() + rng.randbytes(rng.randint(1, 16384)) for i in range(count)]

    async def one(i: int, barrier: asyncio.Barrier) -> bytes:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 60)
        try:
            await asyncio.wait_for(barrier.wait(), 90)  # all 200 are open now
            writer.write(payloads[i])
            await writer.drain()
            return await asyncio.wait_for(reader.readexactly(len(payloads[i])), 90)
        finally:
            writer.close()

    async def main() -> list[Any]:
        barrier = asyncio.Barrier(count)
        return await asyncio.wait_for(
            asyncio.gather(*(one(i, barrier) for i in range(count)), return_exceptions=True), 150
        )

    results = asyncio.run(main())
    errors = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} connections failed, e.g. {errors[:3]}"
    wrong = [i for i, r in enumerate(results) if r != payloads[i]]
    assert not wrong, f"{len(wrong)} connections got a wrong echo: {wrong[:10]}"


@pytest.mark.parametrize("mode", ["server", "config"])
def test_npc_sigkill_and_restart(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc], mode: str
) -> None:
    """
    After npc is killed with SIGKILL the server notices (client offline /
    tunnel unusable), and a restarted npc with the same arguments makes the
    tunnel work again.
    """
    echo = start_tool_server(spawn, "echo")
    make = server_side_tunnel if mode == "server" else config_mode_tunnel
    server, npc, port = make(nps_server, npc_client, f"127.0.0.1:{echo}")
    assert echo_works(port)
    npc.kill(9)
    npc.wait(30)
    wait_for_log_count(server.proc, "offline", 1, timeout=60)
    with pytest.raises((OSError, AssertionError)):
        assert echo_works(port)
    again = npc_client(*npc.argv[1:], name="npc-again")
    support.wait_for_log(again, "connected to server")
    until(lambda: echo_works(port), 60, "echo through the tunnel after npc restart")


def test_nps_restart_npc_reconnects_server_side_tunnel(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc]
) -> None:
    """
    nps is stopped and started again (same conf and data dir) while npc keeps
    running: npc reconnects by itself and the stored tunnel works again.
    """
    echo = start_tool_server(spawn, "echo")
    server, npc, port = server_side_tunnel(nps_server, npc_client, f"127.0.0.1:{echo}")
    assert echo_works(port)
    server.restart()
    wait_for_log_count(npc, "connected to server", 2, timeout=90)
    assert npc.alive
    until(lambda: echo_works(port), 60, "echo through the tunnel after nps restart")


def test_nps_restart_config_mode_tunnel_comes_back(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc]
) -> None:
    """
    A config-file (npc.conf) tunnel is not stored on the server, yet after an
    nps restart the reconnecting npc registers it again and it works.
    """
    echo = start_tool_server(spawn, "echo")
    server, npc, port = config_mode_tunnel(nps_server, npc_client, f"127.0.0.1:{echo}")
    assert echo_works(port)
    server.restart()
    wait_for_log_count(npc, "connected to server", 2, timeout=90)
    wait_for_log_count(npc, "is open on the server", 2, timeout=60)
    until(lambda: echo_works(port), 60, "echo through the config-mode tunnel after nps restart")


#: The npc.conf of the seed guide's "Windows RDP" section, verbatim apart from
#: the three placeholders (server address, RDP target, public port).
SEED_RDP_NPC_CONF = """\
[common]
server_addr=XX.XX.XX.XX:8024
conn_type=tcp
vkey=123
auto_reconnection=true
max_conn=1000
flow_limit=1000
rate_limit=1000
basic_username=11
basic_password=3
web_username=admin
web_password=123456
crypt=true
compress=true
#pprof_addr=0.0.0.0:9999
disconnect_timeout=60


[tcp]
mode=tcp
target_addr=127.0.0.1:3389
server_port=8002

"""


def test_seed_guide_rdp_npc_conf(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], http_backend: Any
) -> None:
    """
    The seed guide's whole npc.conf (every [common] key, including crypt,
    compress, limits, basic/web credentials and a commented #pprof_addr, and
    its [tcp] section) works unchanged except for the server address, the
    target and the port: curl reaches the http backend through it.
    """
    need("curl")
    server = nps_server(public_vkey="123")
    port = support.free_port("0.0.0.0")
    conf = (
        SEED_RDP_NPC_CONF.replace("XX.XX.XX.XX:8024", server.bridge_addr)
        .replace("127.0.0.1:3389", f"127.0.0.1:{http_backend.port}")
        .replace("server_port=8002", f"server_port={port}")
    )
    npc = npc_client(conf=conf)
    support.wait_for_log(npc, "connected to server")
    support.wait_for_log(npc, "tunnel tcp is open on the server")
    for name in ("hello.txt", "big.bin"):
        res = curl(http_backend.url(name, port=port))
        assert res.returncode == 0, res.stderr
        assert res.stdout == http_backend.files[name]
    assert "Traceback" not in npc.log_text()
    assert "Traceback" not in server.log_text()


def test_twistd_nps_and_npc(
    nps_server: Callable[..., Any],
    spawn: Callable[..., Proc],
    http_backend: Any,
    tmp_path: Path,
) -> None:
    """
    The twistd dropins work: C{twistd -n --pidfile= nps --config} serves a
    stored tunnel for C{twistd -n --pidfile= npc --server --vkey} and a
    config-file tunnel for C{twistd -n --pidfile= npc --config}; curl works
    through both.
    """
    need("curl")
    twistd = str(support.VENV_BIN / "twistd")
    server = nps_server(public_vkey="twistd-public", use_twistd=True, start=False)
    client = server.add_client("twistd")
    stored_port = support.free_port()
    server.add_tunnel(client.id or 1, stored_port, f"127.0.0.1:{http_backend.port}")
    server.start()
    support.wait_for_log(server.proc, "bridge listening on")

    npc1 = spawn([twistd, "-n", "--pidfile=", "npc", f"--server={server.bridge_addr}",
                  f"--vkey={client.vkey}"], name="twistd-npc-server", cwd=tmp_path)
    conf_port = support.free_port()
    conf_path = tmp_path / "npc.conf"
    conf_path.write_text(config_tunnel_conf(server, "twistd-public", f"127.0.0.1:{http_backend.port}", conf_port))
    npc2 = spawn([twistd, "-n", "--pidfile=", "npc", "--config", str(conf_path)],
                 name="twistd-npc-config", cwd=tmp_path)
    support.wait_for_log(npc1, "connected to server")
    support.wait_for_log(npc2, "tunnel tcp1 is open on the server")
    for port in (stored_port, conf_port):
        res = until(lambda: (r := curl(http_backend.url("hello.txt", port=port), 10)).returncode == 0 and r,
                    60, f"curl through port {port}")
        assert res.stdout == support.HTTPBackend.HELLO


def test_half_close_through_tunnel(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc]
) -> None:
    """
    Half-close is carried: a client sends data and shuts down its write side;
    the target sees EOF, and the client still receives the target's reply
    (sent only after that EOF) and then EOF.
    """
    target = start_tool_server(spawn, "echo-after-eof")
    _, _, port = server_side_tunnel(nps_server, npc_client, f"127.0.0.1:{target}")
    for size in (5, 1 << 20):
        payload = os.urandom(size)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = bytearray()
            for _ in range(100_000):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        assert bytes(got) == b"got %d:" % size + payload
