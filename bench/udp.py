"""
UDP-transport rows of the benchmark, all in the same run on 127.0.0.1:

- the UDP bridge (C{bridge_type=kcp}, npc C{conn_type=kcp}: QUIC through
  aioquic) against the TCP bridge and against kcptun (target >= 1.0x of kcptun);
- p2p: throughput and 1-byte round trip over the direct QUIC path between two
  npcs, against the same p2p tunnel relayed through the server (a server
  without C{p2p_port}) and against kcptun.

kcptun (github.com/xtaci/kcptun, Go) is found through C{$KCPTUN_DIR}, the
cache C{bench/kcptun.sh} builds into, or C{PATH}; without it its rows say
"n/a" with the reason and everything else is still measured.

    bench/run --udp-only [--quick]      (bench/run also runs these after the main table)

Paths are measured in turns (round robin, best of the rounds for
throughput, median of all round trips).  Every measurement is bounded.
"""
from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "test"))

import support  # noqa: E402
from support import Proc, free_port, wait_for_port  # noqa: E402
from transport import iperf_gbps  # noqa: E402

PY = sys.executable
VKEY = "bench-udp-public-key-0123456789abcdef"
KCPTUN_KEY = "bench-kcptun-key"
#: kcptun settings: its "fast" profile, windows raised to 1024 packets each way, no
#: compression, AES (our QUIC encrypts too), FEC at its default 10/3.
KCPTUN_FLAGS = ["--crypt", "aes", "--mode", "fast", "--nocomp", "--sndwnd", "1024", "--rcvwnd", "1024", "--quiet"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_kcptun() -> tuple[str, str] | str:
    """(client, server) binaries, or why there are none."""
    dirs = [os.environ.get("KCPTUN_DIR", ""),
            os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nps-bench", "kcptun")]
    for d in dirs:
        if d and os.access(os.path.join(d, "kcptun-client"), os.X_OK) and \
                os.access(os.path.join(d, "kcptun-server"), os.X_OK):
            return os.path.join(d, "kcptun-client"), os.path.join(d, "kcptun-server")
    client, server = shutil.which("kcptun-client") or shutil.which("client_linux_amd64"), \
        shutil.which("kcptun-server") or shutil.which("server_linux_amd64")
    if client and server:
        return client, server
    return "kcptun not found (run bench/kcptun.sh to build it into ~/.cache/nps-bench/kcptun, or set KCPTUN_DIR)"


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by peer")
        buf += chunk
    return buf


def echo_probe(port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with connect(port, timeout=3) as s:
                s.sendall(b"p")
                if recv_exact(s, 1) == b"p":
                    return
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"no echo through port {port} within {seconds:g}s: {last}")


def rtt_samples(port: int, count: int, seconds: float) -> list[float]:
    """1-byte round trips (µs) on one TCP_NODELAY connection through the path."""
    samples: list[float] = []
    deadline = time.monotonic() + seconds
    with connect(port, timeout=10) as s:
        for _ in range(20):  # warm-up
            s.sendall(b"w")
            recv_exact(s, 1)
        for _ in range(count):
            t0 = time.perf_counter_ns()
            s.sendall(b"x")
            recv_exact(s, 1)
            samples.append((time.perf_counter_ns() - t0) / 1000)
            if time.monotonic() > deadline:
                break
    return samples


class Bench:
    def __init__(self, logdir: Path, quick: bool) -> None:
        self.logdir = logdir
        self.quick = quick
        self.procs: list[Proc] = []
        #: path -> (iperf port, echo port)
        self.paths: dict[str, tuple[int, int]] = {}
        self.errors: dict[str, str] = {}
        self.notes: list[str] = []

    def spawn(self, argv: list[str], name: str) -> Proc:
        proc = Proc(argv, self.logdir / f"{name}.log", name=name)
        self.procs.append(proc)
        return proc

    def targets(self) -> tuple[int, int]:
        iperf_port = free_port()
        iperf = self.spawn(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)], "iperf3-server")
        echo_port = free_port()
        echo = self.spawn([PY, str(HERE / "targets.py"), "echo", str(echo_port)], "echo")
        wait_for_port("127.0.0.1", iperf_port, 20, proc=iperf)
        wait_for_port("127.0.0.1", echo_port, 20, proc=echo)
        return iperf_port, echo_port

    def npc(self, name: str, bridge: str, sections: dict[str, dict[str, object]], **common: object) -> Proc:
        conf = support.render_npc_conf(bridge, VKEY, sections, **common)
        proc = support.start_npc(self.logdir / f"npc-{name}", conf=conf, name=f"npc-{name}")
        self.procs.append(proc)
        return proc

    def bridges(self, iperf: int, echo: int) -> None:
        """nps with the TCP and the UDP bridge; one npc on each, tunnels to iperf3 and echo."""
        server = support.NpsServer(self.logdir / "nps-bridge", public_vkey=VKEY, extra={"bridge_type": "kcp"})
        server.start(timeout=30)
        assert server.proc is not None
        self.procs.append(server.proc)
        for kind in ("tcp", "kcp"):
            ports = free_port(), free_port()
            sections: dict[str, dict[str, object]] = {
                f"{kind}_iperf": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": ports[0],
                                  "target_addr": f"127.0.0.1:{iperf}"},
                f"{kind}_echo": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": ports[1],
                                 "target_addr": f"127.0.0.1:{echo}"}}
            proc = self.npc(f"bridge-{kind}", server.bridge_addr, sections, conn_type=kind,
                            tls_known_servers=self.logdir / "known_servers")
            for port in ports:
                wait_for_port("127.0.0.1", port, 30, proc=proc)
            self.paths[f"bridge_{kind}"] = ports

    def kcptun(self, iperf: int, echo: int) -> None:
        found = find_kcptun()
        if isinstance(found, str):
            self.errors["kcptun"] = found
            return
        client, server = found
        version = subprocess.run([client, "-v"], capture_output=True, text=True, timeout=10).stdout.strip()
        ports = []
        for label, target in (("iperf", iperf), ("echo", echo)):
            udp, local = free_udp_port(), free_port()
            self.spawn([server, "-l", f"127.0.0.1:{udp}", "-t", f"127.0.0.1:{target}", "--key", KCPTUN_KEY,
                        *KCPTUN_FLAGS], f"kcptun-server-{label}")
            proc = self.spawn([client, "-l", f"127.0.0.1:{local}", "-r", f"127.0.0.1:{udp}", "--key", KCPTUN_KEY,
                               "--conn", "1", *KCPTUN_FLAGS], f"kcptun-client-{label}")
            wait_for_port("127.0.0.1", local, 20, proc=proc)
            ports.append(local)
        self.paths["kcptun"] = (ports[0], ports[1])
        self.notes.append(f"kcptun: {version or client}, flags {' '.join(KCPTUN_FLAGS)} (FEC 10/3 default), "
                          "one KCP session per target")

    def p2p(self, iperf: int, echo: int, direct: bool) -> None:
        """A provider npc with p2p tunnels to iperf3 and echo, a visitor npc for each; direct needs p2p_port."""
        name = "p2p_direct" if direct else "p2p_relayed"
        extra: dict[str, object] = {"p2p_port": free_udp_port()} if direct else {}
        server = support.NpsServer(self.logdir / f"nps-{name}", public_vkey=VKEY, extra=extra)
        server.start(timeout=30)
        assert server.proc is not None
        self.procs.append(server.proc)
        pw = {"iperf": f"{name}-iperf-pw", "echo": f"{name}-echo-pw"}
        provider = self.npc(f"{name}-provider", server.bridge_addr, {
            f"{name}_iperf": {"mode": "p2p", "password": pw["iperf"], "target_addr": f"127.0.0.1:{iperf}"},
            f"{name}_echo": {"mode": "p2p", "password": pw["echo"], "target_addr": f"127.0.0.1:{echo}"}})
        support.wait_for_log(provider, f"tunnel {name}_echo is open on the server", 30)
        support.wait_for_log(provider, f"tunnel {name}_iperf is open on the server", 30)
        ports = free_port(), free_port()
        visitor = self.npc(f"{name}-visitor", server.bridge_addr, {
            f"{name}_v_iperf": {"password": pw["iperf"], "local_port": ports[0]},
            f"{name}_v_echo": {"password": pw["echo"], "local_port": ports[1]}})
        for port in ports:
            wait_for_port("127.0.0.1", port, 30, proc=visitor)
        echo_probe(ports[1])
        if direct:
            support.until(lambda: support.count_in_log(visitor, "direct path to the provider") >= 1, 30,
                          "the direct p2p path")
        self.paths[name] = ports

    def measure(self) -> str:
        seconds = 2.0 if self.quick else 4.0
        rounds = 2 if self.quick else 3
        rtt_count = 300 if self.quick else 2000
        for name, (_, echo) in list(self.paths.items()):
            try:
                echo_probe(echo)
            except Exception as e:
                self.errors[name] = str(e)[:200]
                del self.paths[name]
        best: dict[str, float] = {}
        rtts: dict[str, list[float]] = {}
        for _ in range(rounds):
            for name, (iperf, echo) in self.paths.items():
                try:
                    best[name] = max(best.get(name, 0.0), iperf_gbps(iperf, seconds))
                    rtts.setdefault(name, []).extend(rtt_samples(echo, rtt_count // rounds, 10.0))
                except Exception as e:  # report, go on
                    self.errors[name] = str(e)[:200]
        med = {name: statistics.median(s) for name, s in rtts.items() if s}

        def gbps(name: str) -> str:
            return f"{best[name]:.3f}" if name in best else f"n/a ({self.errors.get(name, 'not run')})"

        def us(name: str) -> str:
            return f"{med[name]:.0f}" if name in med else "n/a"

        def ratio(a: str, b: str) -> str:
            return f"{best[a] / best[b]:.2f}×" if a in best and best.get(b) else "n/a"

        def rtt_ratio(a: str, b: str) -> str:  # > 1 means a is faster (shorter round trip)
            return f"{med[b] / med[a]:.2f}×" if a in med and med.get(b) else "n/a"

        lines = [
            "## UDP transports: the kcp (QUIC) bridge and p2p, against kcptun (same run)",
            "",
            f"iperf3 upload, {seconds:g} s per run, best of {rounds} rounds taken in turns; 1-byte round trip on one "
            "TCP_NODELAY connection to an echo target (median µs; RTT ratios > 1 mean faster than the other).",
            "",
            "| path | Gbit/s | vs TCP bridge | vs kcptun | RTT µs | RTT vs kcptun |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        rows: list[tuple[str, str]] = [
            ("bridge_tcp", "nps tunnel, TCP bridge"),
            ("bridge_kcp", "nps tunnel, kcp bridge (QUIC/UDP)"),
            ("kcptun", "kcptun (KCP/UDP, Go)"),
        ]
        for key, label in rows:
            lines.append(f"| {label} | {gbps(key)} | {ratio(key, 'bridge_tcp')} | {ratio(key, 'kcptun')} | "
                         f"{us(key)} | {rtt_ratio(key, 'kcptun')} |")
        lines += [
            "",
            "| p2p path | Gbit/s | vs relayed | vs kcptun | RTT µs | RTT vs relayed | RTT vs kcptun |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for key, label in (("p2p_direct", "p2p direct (QUIC between the npcs)"),
                           ("p2p_relayed", "p2p relayed through nps (no p2p_port)"),
                           ("kcptun", "kcptun")):
            lines.append(f"| {label} | {gbps(key)} | {ratio(key, 'p2p_relayed')} | {ratio(key, 'kcptun')} | "
                         f"{us(key)} | {rtt_ratio(key, 'p2p_relayed')} | {rtt_ratio(key, 'kcptun')} |")
        lines += ["", f"kcp bridge vs kcptun: {ratio('bridge_kcp', 'kcptun')} (target ≥ 1.0×); "
                      f"p2p direct vs kcptun: {ratio('p2p_direct', 'kcptun')}.", ""]
        if self.notes or self.errors:
            lines += ["Notes:", ""] + [f"- {n}" for n in self.notes]
            lines += [f"- {k}: {v}" for k, v in self.errors.items() if k not in best]
            lines.append("")
        return "\n".join(lines)


def run_udp(logdir: Path, quick: bool) -> str:
    """Set everything up, measure, stop it all; returns markdown (never raises)."""
    logdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(logdir, quick)
    try:
        iperf, echo = bench.targets()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("bridges", lambda: bench.bridges(iperf, echo)),
            ("kcptun", lambda: bench.kcptun(iperf, echo)),
            ("p2p_direct", lambda: bench.p2p(iperf, echo, direct=True)),
            ("p2p_relayed", lambda: bench.p2p(iperf, echo, direct=False)),
        ]
        for name, step in steps:
            try:
                step()
            except Exception as e:  # one missing path must not sink the others
                bench.errors[name] = f"setup failed: {str(e)[:200]}"
        time.sleep(0.5)
        return bench.measure()
    except Exception as e:
        return f"## UDP transports\n\nUDP rows failed: {e}\n"
    finally:
        for proc in reversed(bench.procs):
            proc.stop(timeout=5)


def main(argv: list[str] | None = None) -> int:
    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    text = run_udp(HERE / "results" / "logs" / "udp", quick)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "udp.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
