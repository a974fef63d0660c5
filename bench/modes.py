"""
Proxy-mode rows of the benchmark: bulk download through socks5 and httpProxy
(CONNECT) as a ratio to the tcp mode, and DNS-style queries per second through
the udp mode as a ratio to direct, all in the same run on 127.0.0.1.

    bench/run --modes-only [--quick]     (bench/run also runs these after the main table)

One nps + one npc (config-file mode) carry all the tunnels. Every measurement
is bounded in time; a mode the build does not have yet shows "n/a".
"""
from __future__ import annotations

import shutil
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "test"))

import support  # noqa: E402
from support import Proc, free_port, wait_for_port  # noqa: E402

PY = sys.executable
VKEY = "bench-modes-public-key-0123456789"


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def socks5_connect(proxy_port: int, host: str, port: int) -> socket.socket:
    """A CONNECT through a SOCKS5 proxy without authentication."""
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    s.sendall(b"\x05\x01\x00")
    if _recv_exact(s, 2) != b"\x05\x00":
        raise ConnectionError("socks5: no acceptable method")
    name = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port))
    head = _recv_exact(s, 4)
    if head[1] != 0:
        raise ConnectionError(f"socks5: reply {head[1]}")
    atyp = head[3]
    _recv_exact(s, {1: 4, 4: 16}.get(atyp, 0) or _recv_exact(s, 1)[0])
    _recv_exact(s, 2)
    return s


def http_connect(proxy_port: int, host: str, port: int) -> socket.socket:
    """A CONNECT through an HTTP proxy."""
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("http proxy closed during CONNECT")
        head += chunk
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(f"http proxy: {head.splitlines()[0]!r}")
    return s


def download_gbps(open_conn: Callable[[], socket.socket], seconds: float) -> float:
    """Read from a source target through a path for `seconds`; Gbit/s."""
    s = open_conn()
    s.settimeout(10)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    s.sendall(b"go")
    total = 0
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        n = s.recv_into(view)
        if not n:
            break
        total += n
    elapsed = time.monotonic() - start
    s.close()
    return total * 8 / elapsed / 1e9


def dns_query(qid: int) -> bytes:
    """A standard A query for example.test."""
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p for p in b"example.test".split(b".")) + b"\x00"
    return header + qname + struct.pack("!HH", 1, 1)


def queries_per_second(port: int, seconds: float, window: int = 32) -> tuple[float, int]:
    """Keep `window` queries in flight for `seconds`; answers/s and lost count."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.settimeout(1.0)
    answered = lost = 0
    next_id = 1
    in_flight: set[int] = set()
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        while len(in_flight) < window:
            s.send(dns_query(next_id))
            in_flight.add(next_id)
            next_id = next_id % 65535 + 1
        try:
            reply = s.recv(4096)
        except socket.timeout:
            lost += len(in_flight)
            in_flight.clear()
            continue
        qid = struct.unpack("!H", reply[:2])[0]
        if qid in in_flight:
            in_flight.discard(qid)
            answered += 1
    s.close()
    return answered / (time.monotonic() - start), lost


def start_dns(logdir: Path) -> tuple[int, Proc | None, str]:
    """dnsmasq answering only its own name, or a tiny Python responder when dnsmasq is absent."""
    port = free_port()
    dnsmasq = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
    if dnsmasq:
        argv = [dnsmasq, "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--address=/example.test/10.9.8.7", "--conf-file=/dev/null",
                "--user=root", "--cache-size=0"]
        kind = "dnsmasq"
    else:
        argv = [PY, "-c", RESPONDER, str(port)]
        kind = "python responder"
    proc = Proc(argv, logdir / "dns-target.log", name="dns-target")
    time.sleep(0.5)
    return port, proc, kind


RESPONDER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", int(sys.argv[1])))
answer = bytes([0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0])
while True:
    q, peer = s.recvfrom(4096)
    s.sendto(q[:2] + answer + q[12:] + bytes([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 9, 8, 7]), peer)
"""


def run_modes(logdir: Path, quick: bool) -> str:
    """Set up one nps+npc with tcp/socks5/httpProxy/udp tunnels and measure; returns markdown."""
    logdir.mkdir(parents=True, exist_ok=True)
    seconds = 2.0 if quick else 5.0
    procs: list[Proc] = []
    lines = ["## Proxy modes (same run)", ""]
    try:
        source_port = free_port()
        source = Proc([PY, str(HERE / "targets.py"), "source", str(source_port)],
                      logdir / "source-target.log", name="source-target")
        procs.append(source)
        wait_for_port("127.0.0.1", source_port, 20, proc=source)
        dns_port, dns_proc, dns_kind = start_dns(logdir)
        if dns_proc is not None:
            procs.append(dns_proc)
        server = support.NpsServer(logdir / "nps-modes", public_vkey=VKEY)
        server.start(timeout=30)
        assert server.proc is not None
        procs.append(server.proc)
        ports = {name: free_port() for name in ("tcp", "socks5", "http", "udp")}
        tunnels = {
            "bench_tcp": {"mode": "tcp", "server_port": ports["tcp"], "target_addr": f"127.0.0.1:{source_port}"},
            "bench_socks5": {"mode": "socks5", "server_port": ports["socks5"]},
            "bench_http": {"mode": "httpProxy", "server_port": ports["http"]},
            "bench_udp": {"mode": "udp", "server_port": ports["udp"], "target_addr": f"127.0.0.1:{dns_port}"},
        }
        npc = support.start_npc(logdir / "npc-modes", conf=support.render_npc_conf(server.bridge_addr, VKEY, tunnels))
        procs.append(npc)
        wait_for_port("127.0.0.1", ports["tcp"], 30, proc=npc)
        time.sleep(0.5)

        def measure(label: str, fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except Exception as e:  # a mode missing from this build, or broken: report, go on
                print(f"[bench] {label}: {e}", file=sys.stderr)
                return None

        tcp = measure("tcp", lambda: download_gbps(
            lambda: socket.create_connection(("127.0.0.1", ports["tcp"]), timeout=10), seconds))
        socks = measure("socks5", lambda: download_gbps(
            lambda: socks5_connect(ports["socks5"], "127.0.0.1", source_port), seconds))
        http = measure("httpProxy", lambda: download_gbps(
            lambda: http_connect(ports["http"], "127.0.0.1", source_port), seconds))
        direct_q = measure("dns direct", lambda: queries_per_second(dns_port, seconds))
        udp_q = measure("dns via udp mode", lambda: queries_per_second(ports["udp"], seconds))

        def gbps(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2f}"

        def ratio(a: float | None, b: float | None) -> str:
            return "n/a" if a is None or not b else f"{a / b:.2f}×"

        lines += [
            "| path | download Gbit/s | ratio to tcp mode (target ≥ 0.85×) |",
            "|---|---:|---:|",
            f"| tcp mode | {gbps(tcp)} | 1.00× |",
            f"| socks5 CONNECT | {gbps(socks)} | {ratio(socks, tcp)} |",
            f"| httpProxy CONNECT | {gbps(http)} | {ratio(http, tcp)} |",
            "",
            f"DNS target: {dns_kind}; 32 queries in flight for {seconds:g} s.",
            "",
            "| path | queries/s | lost | ratio to direct |",
            "|---|---:|---:|---:|",
            f"| direct | {'n/a' if direct_q is None else f'{direct_q[0]:.0f}'} | "
            f"{'n/a' if direct_q is None else direct_q[1]} | 1.00× |",
            f"| udp mode | {'n/a' if udp_q is None else f'{udp_q[0]:.0f}'} | "
            f"{'n/a' if udp_q is None else udp_q[1]} | "
            f"{ratio(udp_q[0] if udp_q else None, direct_q[0] if direct_q else None)} |",
            "",
        ]
    except Exception as e:
        lines += [f"proxy-mode bench failed: {e} (logs in {logdir})", ""]
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=5)
    return "\n".join(lines)


if __name__ == "__main__":
    print(run_modes(HERE / "results" / "logs", "--quick" in sys.argv))
