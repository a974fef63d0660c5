"""
End-to-end tests of the limits nps enforces, with real nps/npc processes on loopback:
rate_limit (per client, both directions, other clients unaffected), flow_limit
(open connections end, the reason is shown in /debug), npc.conf [common]
self-limits, deny_ips (server-wide, per tunnel, npc.conf, UDP) and ip_limit
with C{npc register}.

No upper time bounds are asserted: a rate limit is checked by a lower bound
on the time a transfer takes, and "not slowed" by comparing bytes.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import support  # noqa: E402
from test_e2e_tcp import start_tool_server  # noqa: E402
from test_e2e_udp import start_udp_echo  # noqa: E402

pytestmark = pytest.mark.e2e

Proc = support.Proc
MiB = 1024 * 1024


def download(port: int, progress: list[int], source: str = "127.0.0.1", timeout: float = 120.0) -> bytes:
    """Read everything 127.0.0.1:C{port} sends (a C{source} tool server); C{progress[0]} counts bytes."""
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
            progress[0] = len(got)
    return bytes(got)


def upload(port: int, size: int, timeout: float = 120.0) -> bytes:
    """Send C{size} bytes to a C{sink} tool server through 127.0.0.1:C{port}; return its reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        block = b"u" * 65536
        left = size
        while left:
            n = min(left, len(block))
            s.sendall(block[:n])
            left -= n
        s.shutdown(socket.SHUT_WR)
        reply = bytearray()
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return bytes(reply)


def refused(port: int, source: str = "127.0.0.1") -> bool:
    """True if a connection from C{source} is closed by nps without any echo of our bytes."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
            s.sendall(b"hello?")
            return s.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def echo_from(port: int, source: str = "127.0.0.1") -> bool:
    payload = b"ping-" + os.urandom(6).hex().encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(100)
            if not chunk:
                break
            got += chunk
    return got == payload


def debug_json(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug", timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def stored_tunnel(server: Any, npc_client: Callable[..., Proc], target: str, *client_args: str,
                  tunnel_args: tuple[str, ...] = (), mode: str = "tcp", remark: str = "e2e") -> tuple[Proc, int]:
    """A stored client (C{client_args} for its limits) with one tunnel to C{target}, and its npc."""
    client = server.add_client(remark, *client_args)
    port = support.free_port() if mode != "udp" else free_udp_port()
    server.add_tunnel(client.id, port, target, *tunnel_args, mode=mode)
    npc = npc_client(*client.npc_args, name=f"npc-{remark}")
    support.wait_for_log(npc, "connected to server")
    if mode != "udp":
        support.wait_for_port("127.0.0.1", port, proc=server.proc)
    else:
        support.wait_for_log(server.proc, f"udp 127.0.0.1:{port}")
    return npc, port


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- rate_limit ---


def test_rate_limit_slows_its_client_both_ways_and_no_one_else(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """
    A client with rate_limit=512 (KB/s) needs at least 4 s for 4 MiB either way
    (2 s of burst, then 512 KB/s); a client without a limit downloading at the
    same time is not held back: it has all its 4 MiB while the limited one is
    still far from done.
    """
    data = tmp_path / "4mib.bin"
    data.write_bytes(os.urandom(4 * MiB))
    source = start_tool_server(spawn, "source", str(data))
    sink = start_tool_server(spawn, "sink")
    server = nps_server()
    _, slow_port = stored_tunnel(server, npc_client, f"127.0.0.1:{source}", "--rate-limit", "512", remark="slow")
    _, fast_port = stored_tunnel(server, npc_client, f"127.0.0.1:{source}", remark="fast")
    _, slow_sink = stored_tunnel(server, npc_client, f"127.0.0.1:{sink}", "--rate-limit", "512", remark="slowup")

    slow_progress, fast_progress = [0], [0]
    slow_at_fast_done: list[int] = []
    results: dict[str, bytes] = {}

    def run_slow() -> None:
        results["slow"] = download(slow_port, slow_progress)

    def run_fast() -> None:
        results["fast"] = download(fast_port, fast_progress)
        slow_at_fast_done.append(slow_progress[0])

    started = time.monotonic()
    slow = threading.Thread(target=run_slow)
    slow.start()
    support.until(lambda: slow_progress[0] > 0, 30, "the limited download to start")
    fast = threading.Thread(target=run_fast)
    fast.start()
    fast.join(120)
    slow.join(120)
    took = time.monotonic() - started
    assert results["slow"] == data.read_bytes()
    assert results["fast"] == data.read_bytes()
    assert took >= 4.0, f"4 MiB at 512 KB/s took only {took:.2f}s"
    assert slow_at_fast_done and slow_at_fast_done[0] < 4 * MiB, "the unlimited client was held back"

    started = time.monotonic()
    reply = upload(slow_sink, 4 * MiB)
    took = time.monotonic() - started
    assert reply.startswith(b"sink %d " % (4 * MiB)), reply
    assert took >= 4.0, f"a 4 MiB upload at 512 KB/s took only {took:.2f}s"


# ---------------------------------------------------------------- flow_limit ---


def test_flow_limit_ends_open_connections_and_debug_says_why(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc]
) -> None:
    """
    With flow_limit=1 (MB) a connection that keeps echoing is cut once the
    quota is used up, new ones are refused, the log says so, and nps's /debug
    and `nps client show` give the reason.
    """
    echo = start_tool_server(spawn, "echo")
    debug_port = support.free_port()
    server = nps_server(extra={"pprof_ip": "127.0.0.1", "pprof_port": debug_port})
    _, port = stored_tunnel(server, npc_client, f"127.0.0.1:{echo}", "--flow-limit", "1")
    echoed = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        block = b"f" * 16384
        for _ in range(400):  # up to 6.5 MB each way, far past the quota
            try:
                s.sendall(block)
                got = s.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                break
            if not got:
                break
            echoed += len(got)
        else:
            pytest.fail("the connection outlived the flow_limit")
    assert echoed < 2 * MiB
    assert refused(port)
    support.wait_for_log(server.proc, "flow_limit of 1 MB used up")
    snapshot = support.until(lambda: debug_json(debug_port), 30, "/debug")
    sessions = [s for s in snapshot["sessions"] if not s["public"]]
    assert sessions and "flow_limit of 1 MB used up" in sessions[0]["limit_reached"]
    assert sessions[0]["limits"]["flow_limit"] == 1
    # `nps client show` reads the saved traffic counters (saved every 10 s by default).
    client_id = sessions[0]["client_id"]
    support.until(lambda: "flow_limit of 1 MB used up" in server.admin("client", "show", str(client_id)).stdout,
                  60, "nps client show to report the used-up flow")


# ------------------------------------------------------ npc.conf [common] limits ---


def test_npc_conf_self_limits_apply_to_its_tunnels(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """
    A config-file npc's [common] rate_limit and max_conn limit its own tunnels,
    and a tunnel section's deny_ips= refuses that source address.
    """
    data = tmp_path / "1536k.bin"
    data.write_bytes(os.urandom(1536 * 1024))
    source = start_tool_server(spawn, "source", str(data))
    echo = start_tool_server(spawn, "echo")
    vkey = "limits-" + os.urandom(12).hex()
    server = nps_server(public_vkey=vkey)
    slow_port, echo_port = support.free_port(), support.free_port()
    conf = support.render_npc_conf(server.bridge_addr, vkey, {
        "slow": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": slow_port,
                 "target_addr": f"127.0.0.1:{source}"},
        "echo": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": echo_port,
                 "target_addr": f"127.0.0.1:{echo}", "deny_ips": "127.0.0.2"},
    }, rate_limit=256, max_conn=1)
    npc = npc_client(conf=conf)
    support.wait_for_log(npc, "tunnel echo is open on the server")
    support.wait_for_log(server.proc, "npc.conf limits max_conn=1, rate_limit=256")
    support.wait_for_port("127.0.0.1", echo_port, proc=server.proc)

    support.until(lambda: echo_from(echo_port), 30, "the echo tunnel (max_conn=1: once the port probe is gone)")
    assert refused(echo_port, source="127.0.0.2")
    support.wait_for_log(server.proc, "source 127.0.0.2 is in the tunnel's deny_ips (127.0.0.2/32)")
    def hold() -> socket.socket | None:
        """A connection that got through (the last one may still count until its close has gone round)."""
        s = socket.create_connection(("127.0.0.1", echo_port), timeout=10)
        s.sendall(b"x")
        if s.recv(10) == b"x":
            return s
        s.close()
        return None

    with support.until(hold, 30, "a connection to hold"):
        assert refused(echo_port)  # max_conn=1: the held connection is the one
        support.wait_for_log(server.proc, "max_conn 1 reached")
    support.until(lambda: echo_from(echo_port), 30, "a connection once the held one closed")

    def timed_download() -> float | None:
        started = time.monotonic()
        got = download(slow_port, [0])  # b"" while max_conn still counts the last echo connection
        return time.monotonic() - started if got == data.read_bytes() else None

    took = support.until(timed_download, 60, "the limited download")
    # 512 KB of burst, then 1 MB at 256 KB/s: 4 s; assert a loose lower bound.
    assert took >= 2.5, f"1.5 MiB at 256 KB/s took only {took:.2f}s"


# ---------------------------------------------------------------- deny_ips ---


def test_deny_ips_server_wide_per_tunnel_and_udp(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc]
) -> None:
    """
    nps.conf deny_ips refuses a source on every tunnel; a tunnel's own
    --deny-ips refuses it on that tunnel only; a denied UDP peer gets no
    replies while others do.  Each refusal is logged with its reason.
    """
    echo = start_tool_server(spawn, "echo")
    udp_echo = start_udp_echo(spawn)
    server = nps_server(extra={"deny_ips": "127.0.0.3"})
    client = server.add_client("deny")
    open_port, guarded_port, udp_port = support.free_port(), support.free_port(), free_udp_port()
    server.add_tunnel(client.id, open_port, f"127.0.0.1:{echo}")
    server.add_tunnel(client.id, guarded_port, f"127.0.0.1:{echo}", "--deny-ips", "127.0.0.2, 10.0.0.0/8")
    server.add_tunnel(client.id, udp_port, f"127.0.0.1:{udp_echo}", "--deny-ips", "127.0.0.2", mode="udp")
    npc_client(*client.npc_args)
    support.wait_for_port("127.0.0.1", guarded_port, proc=server.proc)
    support.until(lambda: echo_from(open_port), 30, "the open tunnel")

    assert echo_from(guarded_port)
    assert echo_from(open_port, source="127.0.0.2")
    assert refused(guarded_port, source="127.0.0.2")
    assert refused(open_port, source="127.0.0.3")
    support.wait_for_log(server.proc, "refusing 127.0.0.2: source 127.0.0.2 is in the tunnel's deny_ips")
    support.wait_for_log(server.proc, "refusing 127.0.0.3: source 127.0.0.3 is in the server's deny_ips")

    def udp_echoes(source: str) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
            s.settimeout(1.0)
            for _ in range(3):
                s.sendto(b"udp?", ("127.0.0.1", udp_port))
                try:
                    if s.recvfrom(100)[0] == b"udp?":
                        return True
                except socket.timeout:
                    continue
        return False

    support.until(lambda: udp_echoes("127.0.0.1"), 30, "the udp tunnel")
    assert not udp_echoes("127.0.0.2")
    support.wait_for_log(server.proc, "refusing 127.0.0.2: source 127.0.0.2 is in the tunnel's deny_ips")


def test_bad_deny_list_is_refused_by_the_cli(nps_server: Callable[..., Any]) -> None:
    """nps tunnel add --deny-ips names the entry that is not an address or network."""
    server = nps_server()
    client = server.add_client("bad")
    res = server.admin("tunnel", "add", "--client", str(client.id), "--port", str(support.free_port()),
                       "--target", "127.0.0.1:1", "--deny-ips", "10.0.0.1,nonsense")
    assert res.returncode != 0
    assert "'nonsense' is not an IP address or CIDR network" in res.stderr + res.stdout


# ---------------------------------------------------------------- ip_limit ---


def npc_register(server: Any, vkey: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(support.VENV_BIN / "npc"), "register", f"-server={server.bridge_addr}",
                           f"-vkey={vkey}", *extra], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_ip_limit_needs_npc_register(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc]
) -> None:
    """
    With ip_limit=true nobody may use a tunnel until their address is
    registered with `npc register -time=HOURS`; the registration does not
    disturb the client's running npc, survives an nps restart, and a wrong
    vkey is refused with a clear message.
    """
    echo = start_tool_server(spawn, "echo")
    server = nps_server(extra={"ip_limit": True}, start=False)
    client = server.add_client("iplimit")
    port = support.free_port()
    server.add_tunnel(client.id, port, f"127.0.0.1:{echo}")
    server.start()
    npc = npc_client(*client.npc_args)
    support.wait_for_log(npc, "connected to server")
    support.wait_for_port("127.0.0.1", port, proc=server.proc)
    assert refused(port)
    support.wait_for_log(server.proc, "ip_limit: source 127.0.0.1 is not registered (npc register)")

    bad = npc_register(server, "not-the-key", "-time=1")
    assert bad.returncode == 1
    assert "register on" in bad.stderr and "failed" in bad.stderr

    good = npc_register(server, client.vkey, "-time=1")
    assert good.returncode == 0, good.stderr
    assert "127.0.0.1 registered on" in good.stdout and "for 1 hours" in good.stdout
    assert echo_from(port)
    assert "replaces" not in server.log_text()
    assert npc.alive

    server.restart()
    support.wait_for_log(npc, "connected to server", timeout=60)
    support.until(lambda: echo_from(port), 60, "the registration to survive a restart")

    usage = subprocess.run([str(support.VENV_BIN / "npc"), "register", "-time=2"], capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert usage.returncode == 2 and "needs -server" in usage.stderr


# ---------------------------------------------------------------- max_tunnels ---


def test_max_tunnels_counts_npc_conf_tunnels(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], spawn: Callable[..., Proc]
) -> None:
    """A stored client's max_tunnels also bounds the tunnels its npc.conf registers."""
    echo = start_tool_server(spawn, "echo")
    server = nps_server(start=False)
    client = server.add_client("quota", "--max-tunnels", "2")
    stored_port, first, second = support.free_port(), support.free_port(), support.free_port()
    server.add_tunnel(client.id, stored_port, f"127.0.0.1:{echo}")
    server.start()
    conf = support.render_npc_conf(server.bridge_addr, client.vkey, {
        "one": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": first, "target_addr": f"127.0.0.1:{echo}"},
        "two": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": second, "target_addr": f"127.0.0.1:{echo}"},
    })
    npc = npc_client(conf=conf)
    support.wait_for_log(npc, "tunnel one is open on the server")
    support.wait_for_log(npc, "tunnel two refused by the server: max_tunnels 2 reached (1 on the server, 1 from npc.conf)")
    assert support.until(lambda: echo_from(first), 30, "the first npc.conf tunnel")
    assert not support.port_open("127.0.0.1", second)
