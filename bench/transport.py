"""
Bridge-transport rows of the benchmark, all in the same run on 127.0.0.1:

- iperf3 throughput through a tunnel with C{crypt=true}, as a ratio to
  C{ssh -N -R} with OpenSSH's default cipher (target >= 1.2x);
- the TLS bridge (C{bridge_type}/C{conn_type=tls}) as a ratio to the plain one;
- C{compress=true} on a text stream: bytes on the bridge (counted by a
  recording tap between npc and nps) against the bytes carried.

    bench/run --transport-only [--quick]     (bench/run also runs these after the main table)

Paths are measured in turns (round robin, best of the rounds) so a noisy
moment hurts each of them alike.  Every measurement is bounded in time.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "test"))

import support  # noqa: E402
from bridgetap import BridgeTap  # noqa: E402
from support import Proc, free_port, wait_for_port  # noqa: E402

PY = sys.executable
VKEY = "bench-transport-public-key-0123456789"
TEXT = b"".join(b"%07d 127.0.0.1 - - [25/Nov/2026:17:00:00 +0000] \"GET /api/v1/items?page=%d HTTP/1.1\" 200 "
                b"5120 \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\"\n" % (i, i % 97) for i in range(60000))


def iperf_gbps(port: int, seconds: float) -> float:
    last = ""
    for _ in range(2):
        res = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", f"{seconds:g}", "-J"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=seconds + 30)
        try:
            data = json.loads(res.stdout)
        except ValueError:
            data = {"error": (res.stdout + res.stderr)[-300:]}
        if "error" not in data:
            return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
        last = str(data["error"])
        time.sleep(1)
    raise RuntimeError(f"iperf3: {last}")


def echo_through(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        got = bytearray()

        def reader() -> None:
            while True:
                data = sock.recv(1 << 18)
                if not data:
                    return
                got.extend(data)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        thread.join(timeout=120)
        return bytes(got)


def start_ssh(logdir: Path, target: int) -> tuple[int | None, list[Proc], str]:
    try:
        sshd = support.SSHD(logdir / "sshd")
    except support.Unavailable as e:
        return None, [], f"ssh unavailable ({e})"
    sshd.start()
    assert sshd.proc is not None
    port = free_port()
    client = Proc(sshd.ssh_cmd() + ["-N", "-o", "ExitOnForwardFailure=yes", "-R",
                                    f"127.0.0.1:{port}:127.0.0.1:{target}"],
                  logdir / "ssh-client.log", name="ssh -R")
    wait_for_port("127.0.0.1", port, 30, proc=client)
    cipher = ""
    try:
        out = subprocess.run(["ssh", "-G", "127.0.0.1"], capture_output=True, text=True, timeout=10).stdout
        first = next((line.split()[1].split(",")[0] for line in out.splitlines() if line.startswith("ciphers ")), "")
        cipher = f"ssh -R used OpenSSH's default cipher preference, which starts with {first}" if first else ""
    except (OSError, subprocess.SubprocessError):
        pass
    return port, [sshd.proc, client], cipher


def run_transport(logdir: Path, quick: bool) -> str:
    """Set up ssh -R and nps (plain, crypt, TLS, compress) and measure; returns markdown."""
    logdir.mkdir(parents=True, exist_ok=True)
    seconds = 2.0 if quick else 4.0
    rounds = 2 if quick else 3
    procs: list[Proc] = []
    taps: list[BridgeTap] = []
    lines = ["## Bridge transports: crypt, TLS, compress (same run)", ""]
    try:
        iperf_port = free_port()
        iperf = Proc(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)], logdir / "iperf3.log",
                     name="iperf3-server")
        procs.append(iperf)
        echo_port = free_port()
        echo = Proc([PY, str(HERE / "targets.py"), "echo", str(echo_port)], logdir / "echo.log", name="echo")
        procs.append(echo)
        wait_for_port("127.0.0.1", iperf_port, 20, proc=iperf)
        wait_for_port("127.0.0.1", echo_port, 20, proc=echo)

        ssh_port, ssh_procs, cipher_note = start_ssh(logdir, iperf_port)
        procs += ssh_procs

        tls_port = free_port()
        server = support.NpsServer(logdir / "nps", public_vkey=VKEY,
                                   extra={"tls_enable": True, "tls_bridge_port": tls_port})
        server.start(timeout=30)
        assert server.proc is not None
        procs.append(server.proc)
        wait_for_port("127.0.0.1", tls_port, 30, proc=server.proc)
        ports: dict[str, int] = {}

        def npc(name: str, target: int, bridge: str, **common: object) -> int:
            port = free_port()
            conf = support.render_npc_conf(bridge, VKEY, {f"b_{name}": {
                "mode": "tcp", "server_ip": "127.0.0.1", "server_port": port,
                "target_addr": f"127.0.0.1:{target}"}}, **common)
            if common.get("conn_type") == "tls":
                conf = conf.replace("conn_type=tcp\n", "")
            proc = support.start_npc(logdir / f"npc-{name}", conf=conf, name=f"npc-{name}")
            procs.append(proc)
            wait_for_port("127.0.0.1", port, 30, proc=proc)
            return port

        ports["plain"] = npc("plain", iperf_port, server.bridge_addr)
        ports["crypt"] = npc("crypt", iperf_port, server.bridge_addr, crypt=True)
        ports["tls"] = npc("tls", iperf_port, f"127.0.0.1:{tls_port}", conn_type="tls",
                           tls_known_servers=logdir / "known_servers")
        tap = BridgeTap(("127.0.0.1", server.bridge_port)).start()
        taps.append(tap)
        text_port = npc("compress", echo_port, f"127.0.0.1:{tap.port}", compress=True)
        plain_tap = BridgeTap(("127.0.0.1", server.bridge_port)).start()
        taps.append(plain_tap)
        plain_text_port = npc("text", echo_port, f"127.0.0.1:{plain_tap.port}")
        if ssh_port is not None:
            ports["ssh"] = ssh_port
        time.sleep(0.5)

        best: dict[str, float] = {}
        errors: dict[str, str] = {}
        for _ in range(rounds):
            for name, port in ports.items():
                try:
                    best[name] = max(best.get(name, 0.0), iperf_gbps(port, seconds))
                except Exception as e:  # report, go on
                    errors[name] = str(e)[:200]

        def gbps(name: str) -> str:
            return f"{best[name]:.2f}" if name in best else f"n/a ({errors.get(name, 'not run')})"

        def ratio(a: str, b: str) -> str:
            return f"{best[a] / best[b]:.2f}×" if a in best and best.get(b) else "n/a"

        lines += [
            f"iperf3 upload through each path, {seconds:g} s per run, best of {rounds} rounds taken in turns.",
            "",
            "| path | Gbit/s | ratio |",
            "|---|---:|---:|",
            f"| ssh -N -R (default cipher) | {gbps('ssh')} | 1.00× |",
            f"| nps crypt=true (AES-256-GCM per stream) | {gbps('crypt')} | "
            f"{ratio('crypt', 'ssh')} of ssh -R (target ≥ 1.2×) |",
            f"| nps plain bridge | {gbps('plain')} | 1.00× |",
            f"| nps TLS bridge (TLS 1.3) | {gbps('tls')} | {ratio('tls', 'plain')} of plain |",
            f"| nps crypt=true | {gbps('crypt')} | {ratio('crypt', 'plain')} of plain |",
            "",
        ]
        before, plain_before = tap.total, plain_tap.total
        ok = echo_through(text_port, TEXT) == TEXT
        ok_plain = echo_through(plain_text_port, TEXT) == TEXT
        support.until(lambda: tap.total - before >= 0, timeout=5)
        time.sleep(0.5)
        used, plain_used = tap.total - before, plain_tap.total - plain_before
        carried = 2 * len(TEXT)
        lines += [
            f"compress=true on a text stream (access-log lines, {len(TEXT) / 1e6:.1f} MB each way through an echo "
            "target); bytes counted on the bridge by a recording tap:",
            "",
            "| path | bytes carried | bytes on the bridge | saved |",
            "|---|---:|---:|---:|",
            f"| compress=true (zstd) | {carried} | {used} | {100 * (1 - used / carried):.1f}% |"
            + ("" if ok else " (data mismatch!)"),
            f"| plain | {carried} | {plain_used} | {100 * (1 - plain_used / carried):.1f}% |"
            + ("" if ok_plain else " (data mismatch!)"),
            "",
        ]
        if cipher_note:
            lines += [f"Note: {cipher_note}.", ""]
    except Exception as e:  # the rows are extra: report and let the rest of the bench stand
        lines += [f"transport rows failed: {e}", ""]
    finally:
        for tap_ in taps:
            tap_.stop()
        for proc in reversed(procs):
            proc.stop(timeout=5)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    text = run_transport(HERE / "results" / "logs" / "transport", quick)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "transport.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
