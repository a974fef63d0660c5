"""
TCP forwarding benchmark: nps against direct connections, socat, ssh -R and
(when its binary is around) rathole, all measured in the same run on loopback.

    bench/run [--only direct,socat,ssh,nps,rathole] [--quick]

For every path it measures
  - iperf3 single-stream throughput (Gbit/s),
  - 1-byte round trip on one connection with TCP_NODELAY (median and p99, µs),
  - sequential new connections per second (connect, 1 byte, echo, close),
  - HTTP requests per second with wrk (-t2 -c50) against a tiny keep-alive server,
  - RSS per idle tunneled connection (KiB), for the tunnels (nps, ssh, rathole):
    VmRSS of the forwarder's processes before and after opening many idle
    connections through it,
then prints ratios against direct and against ssh -R from the same run.
The table goes to stdout and to bench/results/latest.md (logs under
bench/results/logs/). Every measurement is bounded in count and in time.
Traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "test"))

import support  # noqa: E402  (test/support.py: Proc, SSHD, NpsServer, ...)
from support import Proc, free_port, wait_for_port  # noqa: E402

RESULTS = HERE / "results"
LOGS = RESULTS / "logs"
PY = sys.executable
ALL_PATHS = ["direct", "socat", "ssh", "nps", "rathole"]
LABELS = {
    "direct": "direct",
    "socat": "socat",
    "ssh": "ssh -R",
    "nps": "nps tcp tunnel",
    "rathole": "rathole",
}
RATHOLE_CANDIDATES = [
    os.environ.get("RATHOLE", ""),
    str(REPO.parent / "shared" / "peers" / "rathole"),
    "/work/shared/peers/rathole",
]


@dataclass
class Settings:
    iperf_seconds: int = 5
    rtt_count: int = 2000
    rtt_seconds: float = 15.0
    conn_count: int = 2000
    conn_seconds: float = 10.0
    wrk_seconds: int = 5
    idle_conns: int = 1000
    idle_seconds: float = 30.0

    @classmethod
    def quick(cls) -> "Settings":
        return cls(iperf_seconds=2, rtt_count=300, rtt_seconds=5, conn_count=300,
                   conn_seconds=3, wrk_seconds=2, idle_conns=200, idle_seconds=10)


@dataclass
class Path_:
    """
    One forwarding path: the ports it exposes for each target, the processes
    it runs, and the pids whose process trees count for RSS.
    """
    name: str
    ports: dict[str, int] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    rss_pids: list[int] = field(default_factory=list)
    error: str | None = None
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop(timeout=5)


# ------------------------------------------------------------- targets ---


@dataclass
class Targets:
    ports: dict[str, int]
    procs: list[Proc]


def start_targets(logdir: Path) -> Targets:
    ports = {"iperf": free_port(), "echo": free_port(), "http": free_port()}
    procs = [
        Proc(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(ports["iperf"])],
             logdir / "iperf3-server.log", name="iperf3-server"),
        Proc([PY, str(HERE / "targets.py"), "echo", str(ports["echo"])],
             logdir / "echo-target.log", name="echo-target"),
        Proc([PY, str(HERE / "targets.py"), "http", str(ports["http"])],
             logdir / "http-target.log", name="http-target"),
    ]
    for (_, port), proc in zip(ports.items(), procs):
        wait_for_port("127.0.0.1", port, 20, proc=proc)
    return Targets(ports, procs)


# --------------------------------------------------------------- paths ---


def path_direct(t: Targets, logdir: Path) -> Path_:
    return Path_("direct", ports=dict(t.ports))


def path_socat(t: Targets, logdir: Path) -> Path_:
    p = Path_("socat")
    if shutil.which("socat") is None:
        p.error = "socat: not installed"
        return p
    for name, target in t.ports.items():
        port = free_port()
        proc = Proc(
            ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,nodelay",
             f"TCP:127.0.0.1:{target},nodelay"],
            logdir / f"socat-{name}.log", name=f"socat-{name}")
        p.procs.append(proc)
        p.ports[name] = port
    for name, port in p.ports.items():
        wait_for_port("127.0.0.1", port, 20, proc=p.procs[list(p.ports).index(name)])
    return p


def path_ssh(t: Targets, logdir: Path) -> Path_:
    p = Path_("ssh")
    try:
        sshd = support.SSHD(logdir / "sshd")
    except support.Unavailable as e:
        p.error = f"ssh: unavailable ({e})"
        return p
    sshd.start()
    assert sshd.proc is not None
    p.procs.append(sshd.proc)
    argv = sshd.ssh_cmd() + ["-N", "-o", "ExitOnForwardFailure=yes",
                             "-o", "ServerAliveInterval=0"]
    for name, target in t.ports.items():
        port = free_port()
        p.ports[name] = port
        argv += ["-R", f"127.0.0.1:{port}:127.0.0.1:{target}"]
    client = Proc(argv, logdir / "ssh-client.log", name="ssh -R")
    p.procs.append(client)
    for port in p.ports.values():
        try:
            wait_for_port("127.0.0.1", port, 30, proc=client)
        except Exception:
            p.error = f"ssh: forward did not open (see log {client.log_path}, {sshd.log_path})"
            return p
    # sshd's tree holds the per-session processes that own the listeners.
    p.rss_pids = [sshd.proc.pid, client.pid]
    p.notes.append("ssh -R: default cipher; RSS counts the sshd process tree and the ssh client; "
                   "OpenSSH sets TCP_NODELAY only for interactive sessions, so with -N the first "
                   "byte of each new connection waits for Nagle/delayed ACK (~40 ms)")
    return p


def path_nps(t: Targets, logdir: Path) -> Path_:
    p = Path_("nps")
    vkey = "benchvkey"
    server = support.NpsServer(logdir / "nps", public_vkey=vkey)
    try:
        server.start(timeout=30)
    except Exception:
        if server.proc is not None:
            p.procs.append(server.proc)
        p.error = f"nps: failed to start (see log {server.log_path})"
        return p
    assert server.proc is not None
    p.procs.append(server.proc)
    tunnels = {}
    for name, target in t.ports.items():
        port = free_port()
        p.ports[name] = port
        tunnels[f"bench_{name}"] = {"mode": "tcp", "target_addr": f"127.0.0.1:{target}",
                                    "server_port": port}
    conf = support.render_npc_conf(server.bridge_addr, vkey, tunnels)
    npc = support.start_npc(logdir / "npc", conf=conf)
    p.procs.append(npc)
    for port in p.ports.values():
        try:
            wait_for_port("127.0.0.1", port, 30, proc=npc)
        except Exception:
            p.error = (f"nps: tunnel port did not open (see logs {server.log_path}, "
                       f"{npc.log_path})")
            return p
    p.rss_pids = [server.proc.pid, npc.pid]
    return p


def find_rathole() -> str | None:
    for cand in RATHOLE_CANDIDATES:
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def path_rathole(t: Targets, logdir: Path) -> Path_:
    p = Path_("rathole")
    binary = find_rathole()
    if binary is None:
        p.error = "rathole: binary not found (shared/peers/rathole)"
        return p
    logdir.mkdir(parents=True, exist_ok=True)
    bind = free_port()
    server = ["[server]", f'bind_addr = "127.0.0.1:{bind}"',
              "[server.transport]", 'type = "tcp"',
              "[server.transport.tcp]", "nodelay = true"]
    client = ["[client]", f'remote_addr = "127.0.0.1:{bind}"',
              "[client.transport]", 'type = "tcp"',
              "[client.transport.tcp]", "nodelay = true"]
    for name, target in t.ports.items():
        port = free_port()
        p.ports[name] = port
        server += [f"[server.services.{name}]", 'token = "benchtoken"',
                   f'bind_addr = "127.0.0.1:{port}"', "nodelay = true"]
        client += [f"[client.services.{name}]", 'token = "benchtoken"',
                   f'local_addr = "127.0.0.1:{target}"', "nodelay = true"]
    (logdir / "server.toml").write_text("\n".join(server) + "\n")
    (logdir / "client.toml").write_text("\n".join(client) + "\n")
    srv = Proc([binary, "--server", str(logdir / "server.toml")], logdir / "rathole-server.log",
               name="rathole-server")
    p.procs.append(srv)
    try:
        wait_for_port("127.0.0.1", bind, 20, proc=srv)
    except Exception:
        p.error = f"rathole: server failed to start (see log {srv.log_path})"
        return p
    cli = Proc([binary, "--client", str(logdir / "client.toml")], logdir / "rathole-client.log",
               name="rathole-client")
    p.procs.append(cli)
    # rathole's public port listens before the client is there: readiness is
    # an echo that makes it through (checked by the caller's sanity probe).
    for port in p.ports.values():
        wait_for_port("127.0.0.1", port, 20, proc=srv)
    p.rss_pids = [srv.pid, cli.pid]
    p.notes.append("rathole: tcp transport, nodelay=true")
    return p


PATHS: dict[str, Callable[[Targets, Path], Path_]] = {
    "direct": path_direct,
    "socat": path_socat,
    "ssh": path_ssh,
    "nps": path_nps,
    "rathole": path_rathole,
}


# ------------------------------------------------------------- metrics ---


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


def echo_probe(port: int, seconds: float = 20.0) -> None:
    """
    Wait until one byte makes it through the path and back (tunnels may open
    their public port before the far side is ready).
    """
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


def ping(s: socket.socket, n: int, deadline: float) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        s.sendall(b"x")
        recv_exact(s, 1)
        samples.append((time.perf_counter_ns() - t0) / 1000)
        if time.monotonic() > deadline:
            break
    return samples


def conn_batch(port: int, n: int, deadline: float) -> tuple[int, int, float]:
    """
    Up to C{n} sequential connect/echo/close cycles; returns (done, errors, seconds).
    """
    done = errors = 0
    t0 = time.monotonic()
    while done < n and time.monotonic() < deadline and errors <= 20:
        try:
            with connect(port) as s:
                s.sendall(b"c")
                recv_exact(s, 1)
            done += 1
        except OSError:
            errors += 1
    return done, errors, time.monotonic() - t0


def interleaved_rtt(paths: list[Path_], st: Settings) -> None:
    """
    1-byte ping-pongs on one connection per path, in rounds that alternate
    between the paths, so that a change in the machine's state (CPU
    placement, idle states, a neighbour's load) hits every path alike.
    """
    rounds = 10
    per_round = max(1, st.rtt_count // rounds)
    conns: dict[str, socket.socket] = {}
    samples: dict[str, list[float]] = {p.name: [] for p in paths}
    deadline = time.monotonic() + st.rtt_seconds * len(paths)
    try:
        for p in paths:
            try:
                conns[p.name] = connect(p.ports["echo"])
                ping(conns[p.name], min(100, st.rtt_count), deadline)  # warm-up
            except Exception as e:
                p.results["rtt_error"] = f"{e}"
        for _ in range(rounds):
            for p in paths:
                if p.name not in conns or "rtt_error" in p.results:
                    continue
                try:
                    samples[p.name] += ping(conns[p.name], per_round, deadline)
                except Exception as e:
                    p.results["rtt_error"] = f"{e}"
    finally:
        for c in conns.values():
            c.close()
    for p in paths:
        xs = sorted(samples[p.name])
        if xs and "rtt_error" not in p.results:
            p.results.update(rtt_p50=statistics.median(xs),
                             rtt_p99=xs[min(len(xs) - 1, int(len(xs) * 0.99))], rtt_n=len(xs))


def interleaved_conns(paths: list[Path_], st: Settings) -> None:
    """
    Sequential new connections (connect, 1 byte, echo, close), in rounds that
    alternate between the paths; each path gets at most C{conn_count}
    connections and C{conn_seconds} seconds in all.
    """
    rounds = 5
    per_round = max(1, st.conn_count // rounds)
    totals = {p.name: [0, 0, 0.0] for p in paths}
    for _ in range(rounds):
        for p in paths:
            if "conns_error" in p.results:
                continue
            t = totals[p.name]
            left = st.conn_seconds - t[2]
            if left <= 0:
                continue
            done, errors, secs = conn_batch(p.ports["echo"], per_round,
                                            time.monotonic() + min(left, st.conn_seconds / rounds))
            t[0] += done
            t[1] += errors
            t[2] += secs
            if errors > 20:
                p.results["conns_error"] = f"{errors} failed connections"
    for p in paths:
        done, errors, secs = totals[p.name]
        if "conns_error" not in p.results:
            p.results.update(conn_rate=done / secs if secs else 0.0, conn_n=done,
                             conn_errors=errors)


def measure_iperf(port: int, st: Settings) -> dict[str, float]:
    last = ""
    for attempt in range(2):
        res = subprocess.run(
            ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(st.iperf_seconds), "-J"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=st.iperf_seconds + 30)
        try:
            data = json.loads(res.stdout)
        except ValueError:
            data = {"error": (res.stdout + res.stderr)[-300:]}
        if "error" not in data:
            bps = data["end"]["sum_received"]["bits_per_second"]
            return {"iperf_gbps": bps / 1e9}
        last = str(data["error"])
        time.sleep(1)  # "the server is busy": the previous test is still closing
    raise RuntimeError(f"iperf3: {last}")


def measure_wrk(port: int, st: Settings) -> dict[str, float]:
    res = subprocess.run(
        ["wrk", "-t2", "-c50", f"-d{st.wrk_seconds}s", "--timeout", "5s",
         f"http://127.0.0.1:{port}/"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=st.wrk_seconds + 30)
    m = re.search(r"Requests/sec:\s+([\d.]+)", res.stdout)
    if res.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed: {(res.stdout + res.stderr)[-300:]}")
    out: dict[str, Any] = {"http_rps": float(m.group(1))}
    problems = [line.strip() for line in res.stdout.splitlines()
                if "Non-2xx" in line or "Socket errors" in line]
    if problems:
        out["http_problems"] = "; ".join(problems)
    return out


def measure_idle_rss(path: Path_, st: Settings) -> dict[str, float]:
    port = path.ports["echo"]
    before = sum(support.rss_kib(pid) for pid in path.rss_pids)
    socks: list[socket.socket] = []
    deadline = time.monotonic() + st.idle_seconds
    try:
        for _ in range(st.idle_conns):
            if time.monotonic() > deadline:
                break
            s = connect(port)
            socks.append(s)
            s.sendall(b"i")  # make sure the stream reached the target
            recv_exact(s, 1)
        time.sleep(1.0)  # let lazily allocated buffers settle
        after = sum(support.rss_kib(pid) for pid in path.rss_pids)
    finally:
        for s in socks:
            s.close()
    n = len(socks)
    return {"rss_per_conn_kib": (after - before) / n if n else float("nan"),
            "rss_conns": n, "rss_before_kib": before, "rss_after_kib": after}


def setup_path(name: str, t: Targets) -> Path_:
    logdir = LOGS / name
    if logdir.exists():
        shutil.rmtree(logdir)
    logdir.mkdir(parents=True)
    try:
        path = PATHS[name](t, logdir)
    except Exception as e:
        path = Path_(name, error=f"{name}: setup failed: {e}".splitlines()[0])
        (logdir / "bench-error.txt").write_text(traceback.format_exc())
    if path.error is None:
        try:
            echo_probe(path.ports["echo"])
        except Exception as e:
            path.error = f"{name}: no data through the path ({e}; logs in {logdir})"
    if path.error is not None:
        path.stop()
    return path


def check_alive(paths: list[Path_]) -> list[Path_]:
    """
    Paths whose processes all still run; a dead one gets a note and is dropped
    from later metrics (they would only fail one by one).
    """
    ok = []
    for p in paths:
        dead = [proc for proc in p.procs if proc.poll() is not None]
        if dead and not p.error:
            p.notes.append(f"{LABELS[p.name]}: {dead[0].name} exited with {dead[0].returncode} "
                           f"(see log {dead[0].log_path}); later metrics skipped")
            p.results["dead"] = True
        if not p.results.get("dead"):
            ok.append(p)
    return ok


def per_path(paths: list[Path_], label: str, fn: Callable[[Path_], dict[str, Any]]) -> None:
    for p in check_alive(paths):
        print(f"[bench]   {label}: {LABELS[p.name]}", file=sys.stderr, flush=True)
        try:
            p.results.update(fn(p))
        except Exception as e:
            msg = (str(e) or repr(e)).splitlines()[0][:200]
            p.results[f"{label}_error"] = msg
            p.notes.append(f"{LABELS[p.name]} {label}: {msg}")


def run_all(names: list[str], t: Targets, st: Settings) -> list[Path_]:
    paths = []
    for name in names:
        print(f"[bench] setting up {LABELS[name]}", file=sys.stderr, flush=True)
        p = setup_path(name, t)
        if p.error:
            print(f"[bench]   {p.error}", file=sys.stderr, flush=True)
        paths.append(p)
    live = [p for p in paths if not p.error]
    try:
        # Memory first, on fresh processes: after iperf3 and wrk, allocators
        # keep freed memory around and the delta would look smaller than it is.
        per_path([p for p in live if p.rss_pids], "rss", lambda p: measure_idle_rss(p, st))
        print("[bench] round trips (interleaved)", file=sys.stderr, flush=True)
        interleaved_rtt(check_alive(live), st)
        print("[bench] new connections (interleaved)", file=sys.stderr, flush=True)
        interleaved_conns(check_alive(live), st)
        for p in live:
            for key in ("rtt_error", "conns_error"):
                if key in p.results:
                    p.notes.append(f"{LABELS[p.name]} {key[:-6]}: {p.results[key]}")
        per_path(live, "iperf", lambda p: measure_iperf(p.ports["iperf"], st))
        per_path(live, "wrk", lambda p: measure_wrk(p.ports["http"], st))
        check_alive(live)
    finally:
        for p in paths:
            p.stop()
    return paths


# -------------------------------------------------------------- report ---

COLUMNS = [
    # key, header, format, header in ratio tables
    ("iperf_gbps", "iperf3 Gbit/s", "{:.2f}", "iperf3"),
    ("rtt_p50", "RTT p50 µs", "{:.0f}", "RTT p50"),
    ("rtt_p99", "RTT p99 µs", "{:.0f}", "RTT p99"),
    ("conn_rate", "new conn/s", "{:.0f}", "new conn/s"),
    ("http_rps", "HTTP req/s", "{:.0f}", "HTTP req/s"),
    ("rss_per_conn_kib", "RSS KiB/conn", "{:.1f}", "RSS/conn"),
]


METRIC_OF = {"iperf_gbps": "iperf", "rtt_p50": "rtt", "rtt_p99": "rtt", "conn_rate": "conns",
             "http_rps": "wrk", "rss_per_conn_kib": "rss"}


def cell(path: Path_, key: str, fmt: str) -> str:
    v = path.results.get(key)
    if v is None:
        return "error" if f"{METRIC_OF[key]}_error" in path.results else "–"
    return fmt.format(v)


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


def ratio_table(paths: list[Path_], base: Path_, title: str, keys: list[str]) -> list[str]:
    cols = [c for c in COLUMNS if c[0] in keys]
    out = [f"### {title}", "",
           "| path | " + " | ".join(c[3] for c in cols) + " |",
           "|---|" + "---:|" * len(cols)]
    for p in paths:
        if p.error or p is base:
            continue
        row = []
        for key, _, _, _ in cols:
            a, b = p.results.get(key), base.results.get(key)
            row.append(fmt_ratio(a / b) if a is not None and b not in (None, 0) else "–")
        out.append(f"| {LABELS[p.name]} | " + " | ".join(row) + " |")
    return out + [""]


def tool_versions() -> str:
    def first_line(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                               stdin=subprocess.DEVNULL)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception:
            return "n/a"
    return ", ".join([
        f"Python {platform.python_version()}",
        first_line(["ssh", "-V"]),
        first_line(["socat", "-V"]).replace("socat by Gerhard Rieger and contributors - see www.dest-unreach.org", "socat").strip(),
        first_line(["iperf3", "--version"]),
        first_line(["wrk", "--version"]).split(" Copyright")[0],
    ])


def render(paths: list[Path_], st: Settings, quick: bool, total: float) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## TCP forwarding bench — {now}{' (quick)' if quick else ''}",
        "",
        f"{os.cpu_count()} cores; {tool_versions()}.",
        f"iperf3 -t {st.iperf_seconds}; RTT over {st.rtt_count} 1-byte ping-pongs; "
        f"≤{st.conn_count} sequential connections or {st.conn_seconds:g} s; "
        f"wrk -t2 -c50 -d{st.wrk_seconds}s; RSS over {st.idle_conns} idle connections "
        f"(tunnels only). Whole run {total:.0f} s.",
        "",
        "| path | " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for p in paths:
        if p.error:
            lines.append(f"| {LABELS[p.name]} | {p.error} |" + " |" * (len(COLUMNS) - 1))
        else:
            lines.append(f"| {LABELS[p.name]} | "
                         + " | ".join(cell(p, k, f) for k, _, f, _ in COLUMNS) + " |")
    lines.append("")
    by_name = {p.name: p for p in paths}
    perf_keys = ["iperf_gbps", "rtt_p50", "rtt_p99", "conn_rate", "http_rps"]
    direct = by_name.get("direct")
    if direct is not None and not direct.error:
        lines += ratio_table(paths, direct, "Ratios vs direct (throughput: higher is better; RTT: lower is better)", perf_keys)
    ssh = by_name.get("ssh")
    if ssh is not None and not ssh.error:
        lines += ratio_table(paths, ssh, "Ratios vs ssh -R (RTT and RSS: lower is better)", perf_keys + ["rss_per_conn_kib"])
    notes = [n for p in paths for n in p.notes]
    for p in paths:
        if "http_problems" in p.results:
            notes.append(f"{LABELS[p.name]} wrk: {p.results['http_problems']}")
        if "rss_conns" in p.results:
            notes.append(f"{LABELS[p.name]} RSS: {p.results['rss_before_kib']} → "
                         f"{p.results['rss_after_kib']} KiB over {p.results['rss_conns']} connections")
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(ALL_PATHS),
                    help="comma-separated paths among " + ",".join(ALL_PATHS)
                         + " (default: all; rathole only when its binary is found)")
    ap.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    ap.add_argument("--no-modes", action="store_true", help="skip the proxy-mode rows (bench/modes.py)")
    ap.add_argument("--modes-only", action="store_true", help="only the proxy-mode rows")
    ap.add_argument("--no-vhost", action="store_true", help="skip the domain-proxy rows (bench/vhost.py)")
    ap.add_argument("--vhost-only", action="store_true", help="only the domain-proxy rows (bench/vhost.py)")
    ap.add_argument("--no-transport", action="store_true",
                    help="skip the crypt/TLS/compress rows (bench/transport.py)")
    ap.add_argument("--transport-only", action="store_true", help="only the crypt/TLS/compress rows")
    ap.add_argument("--no-udp", action="store_true",
                    help="skip the kcp (QUIC) bridge / p2p / kcptun rows (bench/udp.py)")
    ap.add_argument("--udp-only", action="store_true", help="only the kcp (QUIC) bridge / p2p / kcptun rows")
    ap.add_argument("--no-legacy", action="store_true", help="skip the Go npc rows (bench/legacy.py)")
    ap.add_argument("--legacy-only", action="store_true",
                    help="only the Go npc via our nps vs via the Go nps rows (bench/legacy.py)")
    args = ap.parse_args(argv)
    if args.legacy_only:
        from legacy import run_legacy

        RESULTS.mkdir(parents=True, exist_ok=True)
        text = run_legacy(LOGS / "legacy", args.quick)
        print(text)
        (RESULTS / "legacy.md").write_text(text)
        return 0
    if args.udp_only:
        from udp import run_udp

        RESULTS.mkdir(parents=True, exist_ok=True)
        text = run_udp(LOGS / "udp", args.quick)
        print(text)
        (RESULTS / "udp.md").write_text(text)
        return 0
    if args.transport_only:
        from transport import run_transport

        RESULTS.mkdir(parents=True, exist_ok=True)
        text = run_transport(LOGS / "transport", args.quick)
        print(text)
        (RESULTS / "transport.md").write_text(text)
        return 0
    if args.vhost_only:
        from vhost import run_vhost

        RESULTS.mkdir(parents=True, exist_ok=True)
        text = run_vhost(LOGS / "vhost", args.quick)
        print(text)
        (RESULTS / "vhost.md").write_text(text)
        return 0
    if args.modes_only:
        from modes import run_modes

        RESULTS.mkdir(parents=True, exist_ok=True)
        text = run_modes(LOGS / "modes", args.quick)
        print(text)
        (RESULTS / "modes.md").write_text(text)
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATHS]
    if unknown:
        ap.error(f"unknown path(s): {', '.join(unknown)}")
    if args.only == ap.get_default("only") and find_rathole() is None:
        names.remove("rathole")
    missing = [tool for tool in ("iperf3", "wrk") if shutil.which(tool) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (see .ci/apt-packages.txt)", file=sys.stderr)
        return 2
    st = Settings.quick() if args.quick else Settings()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    RESULTS.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    targets = start_targets(LOGS)
    try:
        paths = run_all(names, targets, st)
    finally:
        for proc in targets.procs:
            proc.stop(timeout=5)
        support.stop_all()
    text = render(paths, st, args.quick, time.monotonic() - t0)
    if not args.no_modes:
        from modes import run_modes

        text += "\n" + run_modes(LOGS / "modes", args.quick)
    if not args.no_transport:
        from transport import run_transport

        text += "\n" + run_transport(LOGS / "transport", args.quick)
    if not args.no_udp:
        from udp import run_udp

        text += "\n" + run_udp(LOGS / "udp", args.quick)
    if not args.no_vhost:
        from vhost import run_vhost

        text += "\n" + run_vhost(LOGS / "vhost", args.quick)
    if not args.no_legacy:
        from legacy import run_legacy

        text += "\n" + run_legacy(LOGS / "legacy", args.quick)
    print(text)
    (RESULTS / "latest.md").write_text(text)
    (RESULTS / "latest.json").write_text(json.dumps(
        {p.name: {"error": p.error, **p.results} for p in paths}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
