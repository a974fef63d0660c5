"""
Domain-proxy (vhost) rows of the benchmark, all in the same run on 127.0.0.1:

- HTTP: ``wrk -c50`` requests/s of a small static file from nginx, direct,
  through nginx reverse-proxying the same backend (keep-alive upstream), and
  through our HTTP vhost (nps + npc); ratios to direct and to nginx.  The
  three run in turn for several rounds (the machine is shared and noisy):
  the table shows each path's median and the median of the per-round ratios.
- HTTPS: ``h2load`` (HTTP/2 over TLS) requests/s against nginx direct and
  through our SNI pass-through; ratio to direct.

    bench/run --vhost-only [--quick]     (bench/run also runs these after the main table)

Every measurement is bounded in time; a missing tool shows "n/a".
"""
from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "test"))

import support  # noqa: E402
import vhost_support as vs  # noqa: E402
from support import free_port, wait_for_port  # noqa: E402

VKEY = "bench-vhost-public-key-0123456789"
HOST = "bench.example.com"
H2HOST = "h2.example.com"


def wrk_rps(port: int, seconds: float, host: str | None = None) -> float:
    """Requests/s of GET / with 50 connections for C{seconds}."""
    argv = ["wrk", "-c50", "-t2", f"-d{max(int(seconds), 1)}s", "--latency"]
    if host:
        argv += ["-H", f"Host: {host}"]
    out = subprocess.run(argv + [f"http://127.0.0.1:{port}/index.html"], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None or "Non-2xx" in out:
        raise RuntimeError(f"wrk failed: {out[-300:]}")
    return float(match.group(1))


def h2load_rps(port: int, seconds: float, cert_dir: Path) -> float:
    """HTTP/2 requests/s (10 connections x 10 streams) to https://h2.example.com/ at 127.0.0.1:port."""
    argv = ["h2load", "-c10", "-m10", "-t1", "-D", str(max(int(seconds), 1)),
            f"--connect-to=127.0.0.1:{port}", f"https://{H2HOST}/index.html"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, cwd=cert_dir).stdout
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
    # In -D mode the requests still in flight at the deadline count as failed.
    if match is None or ok is None or int(ok.group(2)) > int(ok.group(1)) // 20:
        raise RuntimeError(f"h2load failed: {out[-400:]}")
    if "Application protocol: h2" not in out:
        raise RuntimeError("h2load did not negotiate h2")
    return float(match.group(1))


def run_vhost(logdir: Path, quick: bool) -> str:
    """Run the vhost rows; returns a markdown section."""
    seconds = 3.0 if quick else 5.0
    rounds = 1 if quick else 5
    logdir.mkdir(parents=True, exist_ok=True)
    lines = ["## Domain proxy (vhost)", ""]
    missing = [name for name, found in (("wrk", shutil.which("wrk")), ("nginx", vs.nginx_binary())) if not found]
    if missing:
        return "\n".join(lines + [f"skipped: missing {', '.join(missing)} (see .ci/apt-packages.txt)", ""])
    procs: list[support.Proc] = []
    try:
        www = logdir / "www"
        www.mkdir(exist_ok=True)
        (www / "index.html").write_bytes(b"<html><body>" + b"nps vhost bench " * 32 + b"</body></html>\n")
        cert, key = vs.self_signed(logdir, "example.com")
        direct, proxy, tls = free_port(), free_port(), free_port()
        nginx = vs.start_nginx(logdir / "nginx", f"""
  upstream backend {{ server 127.0.0.1:{direct}; keepalive 64; }}
  server {{ listen 127.0.0.1:{direct}; root {www}; keepalive_requests 10000000; }}
  server {{ listen 127.0.0.1:{proxy};
           location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
  server {{ listen 127.0.0.1:{tls} ssl http2; root {www}; keepalive_requests 10000000;
           ssl_certificate {cert}; ssl_certificate_key {key}; }}""")
        procs.append(nginx)
        for port in (direct, proxy, tls):
            wait_for_port("127.0.0.1", port, 30, proc=nginx)
        http_port, https_port = free_port(), free_port()
        server = support.NpsServer(logdir / "nps-vhost", VKEY, {
            "http_proxy_ip": "127.0.0.1", "http_proxy_port": http_port, "https_proxy_port": https_port})
        server.start()
        assert server.proc is not None
        procs.append(server.proc)
        npc = support.start_npc(logdir / "npc-vhost", conf=support.render_npc_conf(server.bridge_addr, VKEY, {
            "web": {"host": HOST, "target_addr": f"127.0.0.1:{direct}"},
            "h2": {"host": H2HOST, "target_addr": f"127.0.0.1:{tls}"},
        }))
        procs.append(npc)
        support.until(lambda: support.count_in_log(npc, "is open on the server") >= 2, timeout=30,
                      what="vhost hosts registered")
        time.sleep(0.5)

        def measure(label: str, fn: "object") -> float | None:
            try:
                return fn()  # type: ignore[operator,no-any-return]
            except Exception as e:  # a tool or path missing or broken: report, go on
                print(f"[bench] {label}: {e}", file=sys.stderr)
                return None

        samples: dict[str, list[float]] = {"direct": [], "nginx": [], "vhost": []}
        ratios: dict[str, list[float]] = {"nginx": [], "vhost": [], "vhost/nginx": []}
        for _ in range(rounds):
            got = {"direct": measure("wrk direct", lambda: wrk_rps(direct, seconds)),
                   "nginx": measure("wrk nginx proxy", lambda: wrk_rps(proxy, seconds)),
                   "vhost": measure("wrk vhost", lambda: wrk_rps(http_port, seconds, HOST))}
            for key, value in got.items():
                if value is not None:
                    samples[key].append(value)
            if got["direct"] and got["nginx"]:
                ratios["nginx"].append(got["nginx"] / got["direct"])
            if got["direct"] and got["vhost"]:
                ratios["vhost"].append(got["vhost"] / got["direct"])
            if got["nginx"] and got["vhost"]:
                ratios["vhost/nginx"].append(got["vhost"] / got["nginx"])

        def median(values: list[float]) -> float | None:
            return statistics.median(values) if values else None

        rps_direct, rps_nginx, rps_vhost = (median(samples[k]) for k in ("direct", "nginx", "vhost"))
        has_h2load = shutil.which("h2load") is not None
        h2_direct = measure("h2load direct", lambda: h2load_rps(tls, seconds, logdir)) if has_h2load else None
        h2_vhost = measure("h2load sni", lambda: h2load_rps(https_port, seconds, logdir)) if has_h2load else None

        def num(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.0f}"

        def ratio(a: float | None, b: float | None) -> str:
            return "n/a" if a is None or not b else f"{a / b:.2f}×"

        def mratio(key: str) -> str:
            value = median(ratios[key])
            return "n/a" if value is None else f"{value:.2f}×"

        lines += [
            f"Small static file (~0.5 KiB) from nginx; wrk -c50 -t2 for {seconds:g} s (keep-alive), "
            f"{rounds} round(s) of the three in turn; medians (ratios: median of the per-round ratios).",
            "",
            "| path | requests/s | ratio to direct (target ≥ 0.4×) | ratio to nginx proxy |",
            "|---|---:|---:|---:|",
            f"| direct (nginx) | {num(rps_direct)} | 1.00× | {ratio(rps_direct, rps_nginx)} |",
            f"| nginx reverse proxy | {num(rps_nginx)} | {mratio('nginx')} | 1.00× |",
            f"| nps HTTP vhost | {num(rps_vhost)} | {mratio('vhost')} | {mratio('vhost/nginx')} |",
            "",
            "Per round (direct / nginx proxy / vhost requests/s): " + "; ".join(
                " / ".join(f"{v:.0f}" for v in row) for row in zip(samples["direct"], samples["nginx"],
                                                                    samples["vhost"])),
            "",
            f"HTTP/2 over TLS, h2load -c10 -m10 for {seconds:g} s.",
            "",
            "| path | requests/s | ratio to direct |",
            "|---|---:|---:|",
            f"| direct (nginx h2) | {num(h2_direct)} | 1.00× |",
            f"| nps SNI pass-through | {num(h2_vhost)} | {ratio(h2_vhost, h2_direct)} |",
            "",
        ]
    except Exception as e:
        lines += [f"vhost bench failed: {e} (logs in {logdir})", ""]
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=5)
    return "\n".join(lines)


if __name__ == "__main__":
    print(run_vhost(HERE / "results" / "logs" / "vhost", "--quick" in sys.argv))
