"""
Legacy rows of the benchmark: the Go npc 0.26.10 through our nps (legacy_bridge=true)
against the same Go npc through the Go nps 0.26.10, in the same run on 127.0.0.1:

- iperf3 throughput through a tcp tunnel (ratio ours / Go nps);
- new connections per second (connect, 1-byte echo, close; 4 in parallel).

    bench/run --legacy-only [--quick]     (bench/run also runs these after the main table)

The paths are measured in turns (best of the rounds) so a noisy moment hurts both alike.
Skipped with a note when the Go binaries are not in /work/shared/peers.
"""
from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "test"))

import support  # noqa: E402
from legacy_peers import GO_NPC, GO_NPS, GoNps, missing  # noqa: E402
from support import Proc, free_port, wait_for_port  # noqa: E402
from transport import iperf_gbps  # noqa: E402

PY = sys.executable
VKEY = "bench-legacy-vkey-0123456789"


def conns_per_second(port: int, seconds: float, parallel: int = 4) -> float:
    """Connect/echo one byte/close cycles per second over C{parallel} threads, for C{seconds}."""
    deadline = time.monotonic() + seconds
    counts = [0] * parallel
    errors = [0] * parallel

    def worker(i: int) -> None:
        while time.monotonic() < deadline and errors[i] <= 20:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.sendall(b"c")
                    if sock.recv(1) != b"c":
                        raise OSError("no echo")
                counts[i] += 1
            except OSError:
                errors[i] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return sum(counts) / (time.monotonic() - t0)


def _echo_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(b"x")
            return sock.recv(1) == b"x"
    except OSError:
        return False


def run_legacy(logdir: Path, quick: bool) -> str:
    """Go npc via our nps vs via the Go nps: markdown rows."""
    lines = ["## Legacy: the Go npc 0.26.10 through our nps vs through the Go nps 0.26.10 (same run)", ""]
    reason = missing(GO_NPC) or missing(GO_NPS)
    if reason:
        return "\n".join(lines + [f"Skipped: {reason}.", ""])
    shutil.rmtree(logdir, ignore_errors=True)  # a fresh data dir each run
    logdir.mkdir(parents=True, exist_ok=True)
    seconds = 2.0 if quick else 4.0
    rounds = 2 if quick else 3
    procs: list[Proc] = []
    servers: list[object] = []
    try:
        iperf_port = free_port()
        procs.append(Proc(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)], logdir / "iperf3.log",
                          name="iperf3-server"))
        echo_port = free_port()
        procs.append(Proc([PY, str(HERE / "targets.py"), "echo", str(echo_port)], logdir / "echo.log", name="echo"))
        wait_for_port("127.0.0.1", iperf_port, 20, proc=procs[0])
        wait_for_port("127.0.0.1", echo_port, 20, proc=procs[1])

        ours = support.NpsServer(logdir / "nps", extra={"legacy_bridge": True})
        servers.append(ours)
        client = ours.add_client("bench", "--vkey", VKEY)
        ports = {"ours": (free_port(), free_port()), "go": (free_port(), free_port())}
        ours.add_tunnel(client.id or 1, ports["ours"][0], f"127.0.0.1:{iperf_port}")
        ours.add_tunnel(client.id or 1, ports["ours"][1], f"127.0.0.1:{echo_port}")
        ours.start()

        go = GoNps(logdir / "gonps")
        servers.append(go)
        go_client = go.add_client(VKEY)
        go.add_tunnel(go_client, ports["go"][0], f"127.0.0.1:{iperf_port}")
        go.add_tunnel(go_client, ports["go"][1], f"127.0.0.1:{echo_port}")
        # A second client whose rate_limit is lifted, so the Go nps's own speed shows too.
        ports["go-unlimited"] = (free_port(), free_port())
        fast_client = go.add_client(VKEY + "-fast", rate_limit=100_000_000)
        go.add_tunnel(fast_client, ports["go-unlimited"][0], f"127.0.0.1:{iperf_port}")
        go.add_tunnel(fast_client, ports["go-unlimited"][1], f"127.0.0.1:{echo_port}")
        go.start()

        for name, server, vkey in (("ours", ours, VKEY), ("go", go, VKEY), ("go-unlimited", go, VKEY + "-fast")):
            procs.append(Proc([str(GO_NPC), f"-server={server.bridge_addr}", f"-vkey={vkey}", "-type=tcp",
                               "-log_level=3"], logdir / f"npc-{name}.log", name=f"go-npc-{name}"))
        for name in ports:
            support.until(lambda: _echo_ok(ports[name][1]), timeout=60, what=f"echo via {name}")

        gbps = {name: 0.0 for name in ports}
        cps = {name: 0.0 for name in ports}
        for _ in range(rounds):
            for name, (iperf_p, echo_p) in ports.items():
                gbps[name] = max(gbps[name], iperf_gbps(iperf_p, seconds))
                cps[name] = max(cps[name], conns_per_second(echo_p, seconds))
        def ratio(values: dict[str, float], other: str) -> str:
            return f"{values['ours'] / values[other]:.2f}x" if values[other] else "n/a"

        lines += [
            "| metric | Go npc → our nps | Go npc → Go nps (default) | ratio | Go npc → Go nps (rate limit lifted) "
            "| ratio |",
            "|---|---|---|---|---|---|",
            f"| iperf3 throughput, Gbit/s | {gbps['ours']:.2f} | {gbps['go']:.2f} | {ratio(gbps, 'go')} "
            f"| {gbps['go-unlimited']:.2f} | {ratio(gbps, 'go-unlimited')} |",
            f"| new connections/s (4 parallel) | {cps['ours']:.0f} | {cps['go']:.0f} | {ratio(cps, 'go')} "
            f"| {cps['go-unlimited']:.0f} | {ratio(cps, 'go-unlimited')} |",
            "",
            f"Best of {rounds} alternating rounds of {seconds:g} s; ratio = ours / Go. A Go nps client with "
            "rate_limit 0 still gets a 16 MiB/s bucket (NPS #891); the last columns use a client whose "
            "rate_limit is set very high.",
            "",
        ]
    except Exception as e:  # a broken peer must not sink the rest of the benchmark
        lines += [f"Failed: {e}", ""]
    finally:
        for proc in procs:
            proc.stop(timeout=5)
        for server in servers:
            server.stop()  # type: ignore[attr-defined]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run_legacy(HERE / "results" / "logs" / "legacy", "--quick" in sys.argv))
