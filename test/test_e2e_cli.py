"""
End-to-end tests of the command lines and operational behaviour of the real
C{nps} and C{npc} processes: authentication failures, session replacement,
the admin CLI against a running server, configuration errors, hostile bytes
on the bridge port, keepalive timeouts and a read-only plugin install.

Everything runs on loopback; conditions are waited for with bounded polls,
never timed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

Proc = support.Proc
NPS = str(support.VENV_BIN / "nps")
NPC = str(support.VENV_BIN / "npc")
TWISTD = str(support.VENV_BIN / "twistd")

#: First bytes an npc sends (see nps/protocols/handshake.py): the bridge magic.
BRIDGE_MAGIC = b"\x89NPSPY\r\n"


# ------------------------------------------------------------- helpers ---


until = support.until
count_in_log = support.count_in_log


def fetch(port: int, timeout: float = 10.0) -> bytes:
    """
    C{GET /hello.txt} on 127.0.0.1:C{port} with a raw socket (HTTP/1.0); the body.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /hello.txt HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        data = bytearray()
        for _ in range(10_000):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head[:200]
    return body


def tunnel_works(port: int) -> bool:
    return fetch(port, timeout=5) == support.HTTPBackend.HELLO


def wait_tunnel_works(port: int, timeout: float = 60.0) -> None:
    until(lambda: tunnel_works(port), timeout, f"HTTP through tunnel port {port}")


def port_closed(port: int) -> bool:
    return not support.port_open("127.0.0.1", port, timeout=1.0)


def client_status(server: Any, vkey: str) -> dict[str, Any]:
    res = server.admin("client", "list", "--json")
    assert res.returncode == 0, res.stderr
    for entry in json.loads(res.stdout):
        if entry.get("vkey") == vkey:
            return entry
    raise AssertionError(f"client with vkey {vkey} not in {res.stdout}")


def stored_tunnel(
    nps_server: Callable[..., Any], target: str, extra: dict[str, object] | None = None
) -> tuple[Any, Any, int]:
    """
    A started nps with one stored client and a tcp tunnel to C{target}.
    Returns (server, client, tunnel port).
    """
    server = nps_server(extra=extra, start=False)
    client = server.add_client("cli-e2e")
    port = support.free_port()
    server.add_tunnel(client.id or 1, port, target)
    server.start()
    return server, client, port


def run(argv: list[str], timeout: float = 60.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, cwd=None if cwd is None else str(cwd))


def line_of(path: Path, prefix: str) -> int:
    """
    1-based number of the first line of C{path} starting with C{prefix}.
    """
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith(prefix):
            return number
    raise AssertionError(f"{prefix!r} not in {path}")


def recv_until_closed(sock: socket.socket, limit: int = 1000) -> bytes:
    """
    Read until the peer closes (EOF or reset); bounded by C{limit} reads and
    the socket's timeout (a timeout propagates as an error).
    """
    data = bytearray()
    for _ in range(limit):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk
    raise AssertionError("peer kept sending")


# --------------------------------------------------------------- tests ---


def test_wrong_vkey_exits_1_and_server_keeps_serving(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], http_backend: Any
) -> None:
    """
    An npc with a wrong vkey (no-config mode and config-file mode) exits with
    code 1 and says "wrong vkey"; the server logs the failed handshake and
    keeps serving a good client's tunnel, also for a good npc started after.
    """
    server, client, port = stored_tunnel(nps_server, f"127.0.0.1:{http_backend.port}")
    good = npc_client(*client.npc_args, name="good")
    support.wait_for_log(good, "connected to server")
    wait_tunnel_works(port)

    bad = npc_client(f"-server={server.bridge_addr}", "-vkey=definitely-wrong", "-type=tcp", name="bad")
    assert bad.wait(60) == 1
    assert "wrong vkey" in bad.log_text()
    assert "connected to server" not in bad.log_text()
    bad_conf = npc_client(conf=support.render_npc_conf(server.bridge_addr, "also-wrong"), name="bad-conf")
    assert bad_conf.wait(60) == 1
    assert "wrong vkey" in bad_conf.log_text()

    line = support.wait_for_log(server.proc, "failed: wrong vkey")
    assert "handshake from 127.0.0.1:" in line
    assert server.proc.alive and good.alive
    assert tunnel_works(port)

    good.stop()
    again = npc_client(*client.npc_args, name="good-again")
    support.wait_for_log(again, "connected to server")
    wait_tunnel_works(port)


def test_same_vkey_replaces_previous_npc(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], http_backend: Any
) -> None:
    """
    A second npc with the same stored-client vkey takes over the session: the
    first logs "another npc logged in with the same vkey" and exits 1, the
    second stays up, the client is online and the tunnel works through it.
    """
    server, client, port = stored_tunnel(nps_server, f"127.0.0.1:{http_backend.port}")
    first = npc_client(*client.npc_args, name="first")
    support.wait_for_log(first, "connected to server")
    second = npc_client(*client.npc_args, name="second")
    support.wait_for_log(second, "connected to server")
    assert first.wait(60) == 1
    assert "another npc logged in with the same vkey" in first.log_text()
    assert second.alive
    assert client_status(server, client.vkey)["online"] is True
    wait_tunnel_works(port)
    # The replaced npc is gone for good: it did not reconnect and evict the second.
    assert count_in_log(second, "connected to server") == 1
    assert "another npc" not in second.log_text()


def test_client_list_online_then_offline(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc]
) -> None:
    """
    C{nps client list} shows a stored client offline before its npc runs,
    online while it runs, and offline again after it stops (table and JSON).
    """
    server = nps_server()
    client = server.add_client("lister")
    assert client_status(server, client.vkey)["online"] is False
    npc = npc_client(*client.npc_args)
    support.wait_for_log(npc, "connected to server")
    until(lambda: client_status(server, client.vkey)["online"] is True, 30, "client online in list")
    table = server.admin("client", "list").stdout
    row = next(l for l in table.splitlines() if client.vkey in l)
    assert "online" in row and "offline" not in row
    npc.stop()
    until(lambda: client_status(server, client.vkey)["online"] is False, 30, "client offline in list")
    row = next(l for l in server.admin("client", "list").stdout.splitlines() if client.vkey in l)
    assert "offline" in row


def test_tunnel_add_and_del_on_running_server(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], http_backend: Any
) -> None:
    """
    C{tunnel add} against a running server opens the port without a restart
    (within a bounded wait) and the tunnel works; C{tunnel del} closes it.
    """
    server = nps_server()
    client = server.add_client("live")
    npc = npc_client(*client.npc_args)
    support.wait_for_log(npc, "connected to server")
    port = support.free_port()
    assert port_closed(port)
    res = server.add_tunnel(client.id or 1, port, f"127.0.0.1:{http_backend.port}", "--json")
    tunnel_id = json.loads(res.stdout)["id"]
    support.wait_for_port("127.0.0.1", port, timeout=30, proc=server.proc)
    wait_tunnel_works(port)
    res = server.admin("tunnel", "del", str(tunnel_id))
    assert res.returncode == 0, res.stderr
    until(lambda: port_closed(port), 30, f"port {port} closed after tunnel del")
    assert server.proc.alive


def test_tunnel_on_busy_port_logs_error_and_server_keeps_running(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], http_backend: Any
) -> None:
    """
    A tunnel whose port is already taken by another program makes the server
    log an error naming the port; the server keeps running, the other
    program keeps its port, and a tunnel added afterwards works.
    """
    server = nps_server()
    client = server.add_client("busy")
    npc = npc_client(*client.npc_args)
    support.wait_for_log(npc, "connected to server")
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        busy = occupant.getsockname()[1]
        server.add_tunnel(client.id or 1, busy, f"127.0.0.1:{http_backend.port}")
        line = support.wait_for_log(server.proc, f"cannot open tcp port 127.0.0.1:{busy}", timeout=30)
        assert "in use" in line
        assert server.proc.alive
        good = support.free_port()
        server.add_tunnel(client.id or 1, good, f"127.0.0.1:{http_backend.port}")
        wait_tunnel_works(good)
        # The occupant still owns its port.
        with socket.create_connection(("127.0.0.1", busy), timeout=5):
            conn, _ = occupant.accept()
            conn.close()
    assert server.proc.alive
    assert "Traceback" not in server.log_text()


@pytest.mark.parametrize("how", ["nps --config", "nps -conf_path", "twistd nps --config"])
def test_bad_nps_conf_value(tmp_path: Path, how: str) -> None:
    """
    C{bridge_port=abc} in nps.conf: the server exits non-zero and stderr
    names the file, the line and the key (plain console script, the NPS-style
    C{-conf_path=DIR}, and the twistd dropin, where twistd prints it on stdout).
    """
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    conf = conf_dir / "nps.conf"
    conf.write_text(f"bridge_type=tcp\nbridge_ip=127.0.0.1\nbridge_port=abc\ndata_dir={tmp_path / 'data'}\n")
    argv = {
        "nps --config": [NPS, "--config", str(conf)],
        "nps -conf_path": [NPS, f"-conf_path={tmp_path}"],
        "twistd nps --config": [TWISTD, "-n", "--pidfile=", "nps", "--config", str(conf)],
    }[how]
    res = run(argv, cwd=tmp_path)
    assert res.returncode != 0
    # twistd itself prints option errors (after its usage text) on stdout.
    out = res.stdout + res.stderr if how.startswith("twistd") else res.stderr
    assert f"{conf}:3: bridge_port:" in out, out
    assert "Traceback" not in res.stderr + res.stdout


@pytest.mark.parametrize("how", ["npc -config", "twistd npc --config"])
def test_bad_npc_conf_value(tmp_path: Path, how: str) -> None:
    """
    A bad value in npc.conf (C{server_port=abc} in a tunnel section, and
    C{auto_reconnection=maybe}): npc exits non-zero and stderr names file,
    line and key (stdout under twistd, which prints option errors there).
    """
    conf = tmp_path / "npc.conf"
    port = support.free_port()
    for text, key in [
        (support.render_npc_conf(f"127.0.0.1:{port}", "k",
                                 {"t": {"mode": "tcp", "server_port": "abc", "target_addr": "127.0.0.1:1"}}),
         "server_port"),
        (support.render_npc_conf(f"127.0.0.1:{port}", "k", auto_reconnection="maybe"), "auto_reconnection"),
    ]:
        conf.write_text(text)
        number = line_of(conf, f"{key}=")
        argv = [NPC, f"-config={conf}"] if how == "npc -config" else [
            TWISTD, "-n", "--pidfile=", "npc", "--config", str(conf)]
        res = run(argv, cwd=tmp_path)
        assert res.returncode != 0
        # twistd itself prints option errors (after its usage text) on stdout.
        out = res.stdout + res.stderr if how.startswith("twistd") else res.stderr
        assert f"{conf}:{number}: {key}:" in out, out
        assert "Traceback" not in res.stderr + res.stdout


def test_bridge_port_in_use(tmp_path: Path) -> None:
    """
    When the bridge port is taken, nps exits non-zero at once with a message
    naming the address and the cause (no traceback).
    """
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        conf = tmp_path / "nps.conf"
        conf.write_text(support.render_nps_conf({
            "bridge_type": "tcp", "bridge_ip": "127.0.0.1", "bridge_port": port,
            "data_dir": tmp_path / "data"}))
        res = run([NPS, "--config", str(conf)], cwd=tmp_path)
    assert res.returncode != 0
    assert f"127.0.0.1:{port}" in res.stderr, res.stderr
    assert "in use" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_bridge_port_in_use_twistd(tmp_path: Path) -> None:
    """
    Under twistd too, a taken bridge port ends the server with a non-zero
    exit code and a message naming the address, without a traceback.
    """
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        conf = tmp_path / "nps.conf"
        conf.write_text(support.render_nps_conf({
            "bridge_type": "tcp", "bridge_ip": "127.0.0.1", "bridge_port": port,
            "data_dir": tmp_path / "data"}))
        res = run([TWISTD, "-n", "--pidfile=", "nps", "--config", str(conf)], cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"127.0.0.1:{port}" in out and "in use" in out, out
    assert "Traceback" not in out, out


@pytest.mark.parametrize("argv", [[NPS, "-version"], [NPS, "--version"], [NPC, "-version"], [NPC, "--version"]],
                         ids=["nps -version", "nps --version", "npc -version", "npc --version"])
def test_version_flags(argv: list[str]) -> None:
    """
    C{-version} (NPS spelling) and C{--version} print the program name and a
    version number and exit 0.
    """
    res = run(argv)
    assert res.returncode == 0, res.stderr
    name = Path(argv[0]).name
    assert re.search(rf"^{name} \d+\.\d+", res.stdout.strip()), res.stdout


def test_garbage_on_bridge_port(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], http_backend: Any
) -> None:
    """
    Hostile or broken bytes on the bridge port (10 KB of random data, an
    HTTP request, a truncated hello followed by EOF, a truncated hello left
    hanging) each get the connection closed and a warning in the server log;
    the server stays up and a good npc connects and works afterwards.
    """
    server, client, port = stored_tunnel(nps_server, f"127.0.0.1:{http_backend.port}")
    host = ("127.0.0.1", server.bridge_port)
    # The hanging one first: it is closed by the handshake timeout.
    hanging = socket.create_connection(host, timeout=60)
    try:
        hanging.sendall(BRIDGE_MAGIC + b"\x00")
        before = count_in_log(server.proc, "not an nps bridge client")
        for payload in (os.urandom(10 * 1024), b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"):
            with socket.create_connection(host, timeout=30) as s:
                try:
                    s.sendall(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                assert b"HTTP/" not in recv_until_closed(s)
        until(lambda: count_in_log(server.proc, "not an nps bridge client") >= before + 2, 30,
              "two 'not an nps bridge client' warnings")
        with socket.create_connection(host, timeout=30) as s:
            s.sendall(BRIDGE_MAGIC[:5])
            s.shutdown(socket.SHUT_WR)
            recv_until_closed(s)
        recv_until_closed(hanging)  # bounded by the socket timeout
        support.wait_for_log(server.proc, "did not finish the handshake", timeout=30)
    finally:
        hanging.close()
    assert server.proc.alive
    npc = npc_client(*client.npc_args)
    support.wait_for_log(npc, "connected to server")
    wait_tunnel_works(port)
    assert "Traceback" not in server.log_text()


def test_truncated_hello_then_eof_is_logged(nps_server: Callable[..., Any]) -> None:
    """
    A peer that sends only the start of the bridge hello and then closes its
    side gets the connection closed and leaves a warning in the server log.
    """
    server = nps_server()
    before = len(server.log_text().splitlines())
    with socket.create_connection(("127.0.0.1", server.bridge_port), timeout=30) as s:
        s.sendall(BRIDGE_MAGIC[:5])
        s.shutdown(socket.SHUT_WR)
        recv_until_closed(s)
    until(lambda: any("bridge" in l and "127.0.0.1:" in l
                      for l in server.log_text().splitlines()[before:]),
          10, "a server log line about the aborted handshake")


def test_auto_reconnection_false_exits_when_server_stops(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], http_backend: Any
) -> None:
    """
    With C{auto_reconnection=false} in npc.conf, npc exits with code 1 (and
    says why) when the server goes away, instead of reconnecting.
    """
    server = nps_server(public_vkey="no-reconnect-key")
    port = support.free_port()
    conf = support.render_npc_conf(
        server.bridge_addr, "no-reconnect-key",
        {"web": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": port,
                 "target_addr": f"127.0.0.1:{http_backend.port}"}},
        auto_reconnection=False,
    )
    npc = npc_client(conf=conf)
    support.wait_for_log(npc, "tunnel web is open on the server")
    wait_tunnel_works(port)
    server.stop()
    assert npc.wait(60) == 1
    assert "auto_reconnection=false" in npc.log_text()
    assert count_in_log(npc, "connected to server") == 1


def test_disconnect_timeout_drops_stopped_npc(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc], http_backend: Any
) -> None:
    """
    With C{disconnect_timeout=2} (2 x 5 s) on nps, an npc frozen with SIGSTOP
    is dropped: the server logs the silent peer and lists the client offline.
    After SIGCONT the npc notices, reconnects, and the tunnel works again.
    """
    server, client, port = stored_tunnel(nps_server, f"127.0.0.1:{http_backend.port}",
                                         extra={"disconnect_timeout": 2})
    npc = npc_client(*client.npc_args)
    support.wait_for_log(npc, "connected to server")
    wait_tunnel_works(port)
    npc.kill(signal.SIGSTOP)
    try:
        support.wait_for_log(server.proc, "silent for", timeout=60)
        until(lambda: client_status(server, client.vkey)["online"] is False, 30, "client offline")
    finally:
        npc.kill(signal.SIGCONT)
    until(lambda: count_in_log(npc, "connected to server") >= 2, 90, "npc reconnected after SIGCONT")
    wait_tunnel_works(port)
    assert client_status(server, client.vkey)["online"] is True


def test_disconnect_timeout_1_keeps_healthy_idle_npc(
    nps_server: Callable[..., Any], npc_client: Callable[..., Proc]
) -> None:
    """
    C{disconnect_timeout=1} (5 s) only drops silent peers: a healthy idle npc
    (which answers pings) stays connected across several keepalive ticks.
    """
    server = nps_server(extra={"disconnect_timeout": 1})
    client = server.add_client("idle")
    npc = npc_client(*client.npc_args)
    support.wait_for_log(npc, "connected to server")
    # Watch three 5 s ticks; fail at the first sign of a drop.
    deadline = time.monotonic() + 16
    for _ in range(200):
        assert "silent for" not in server.log_text(), server.proc.log_tail(10)
        assert count_in_log(npc, "disconnected from server") == 0, npc.log_tail(10)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    assert client_status(server, client.vkey)["online"] is True


# ------------------------------------------------ read-only plugin dirs ---

_RO_WRAPPER = r"""
set -e
mount --bind "$1" "$3"; mount -o remount,ro,bind "$3" "$3"
mount --bind "$2" "$4"; mount -o remount,ro,bind "$4" "$4"
shift 4
exec "$@"
"""


@pytest.fixture
def read_only_plugins(tmp_path: Path) -> Iterator[Callable[[list[str]], list[str]]]:
    """
    Wrap an argv so that it runs in a private mount namespace where the
    project's C{twisted/plugins} and C{nps/plugins} directories are read-only
    copies without C{dropin.cache} (as in a read-only install). The shared
    tree is not touched: the mounts exist only inside that namespace and vanish
    with its last process. Skips if namespaces or mounts are not permitted.
    """
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("unshare/mount not available")
    import nps.plugins
    import twisted.plugins

    nps_dir = Path(nps.plugins.__file__).resolve().parent
    tw_dir = support.REPO / "twisted" / "plugins"
    if not (tw_dir / "nps_plugins.py").exists() or str(tw_dir) not in [str(Path(p).resolve()) for p in twisted.plugins.__path__]:
        pytest.skip("the project's twisted/plugins dir is not on twisted.plugins.__path__")
    copies = []
    for src, name in ((tw_dir, "twisted-plugins"), (nps_dir, "nps-plugins")):
        dst = tmp_path / name
        dst.mkdir()
        for f in src.glob("*.py"):
            shutil.copy2(f, dst / f.name)
        copies.append(dst)

    def wrap(argv: list[str]) -> list[str]:
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", _RO_WRAPPER, "ro-wrapper",
                str(copies[0]), str(copies[1]), str(tw_dir), str(nps_dir), *argv]

    probe = run(wrap(["sh", "-c", f"test ! -e {nps_dir}/dropin.cache && ! touch {nps_dir}/x 2>/dev/null"]))
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount in a private namespace: {probe.stderr.strip()}")
    yield wrap


def _no_cache_complaints(text: str) -> None:
    assert "Unable to write to plugin cache" not in text
    assert "Traceback" not in text


def test_read_only_plugin_dirs_console_scripts(
    read_only_plugins: Callable[[list[str]], list[str]],
    spawn: Callable[..., Proc],
    http_backend: Any,
    tmp_path: Path,
) -> None:
    """
    In a read-only install (plugin dirs not writable, no dropin.cache),
    C{nps --version}, C{nps} and C{npc} run without "Unable to write to
    plugin cache" or a traceback, and a tunnel works.
    """
    res = run(read_only_plugins([NPS, "--version"]))
    assert res.returncode == 0, res.stderr
    _no_cache_complaints(res.stdout + res.stderr)

    server = support.NpsServer(tmp_path / "nps", public_vkey="read-only-key")
    stored = server.add_client("ro")
    stored_port = support.free_port()
    server.add_tunnel(stored.id or 1, stored_port, f"127.0.0.1:{http_backend.port}")
    nps = spawn(read_only_plugins(server.argv()), name="nps-ro")
    support.wait_for_port("127.0.0.1", server.bridge_port, proc=nps)
    npc1 = spawn(read_only_plugins([NPC, *stored.npc_args]), name="npc-ro-stored")
    conf_port = support.free_port()
    conf = tmp_path / "npc.conf"
    conf.write_text(support.render_npc_conf(
        server.bridge_addr, "read-only-key",
        {"web": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": conf_port,
                 "target_addr": f"127.0.0.1:{http_backend.port}"}}))
    npc2 = spawn(read_only_plugins([NPC, f"-config={conf}"]), name="npc-ro-config")
    support.wait_for_log(npc1, "connected to server")
    support.wait_for_log(npc2, "tunnel web is open on the server")
    wait_tunnel_works(stored_port)
    wait_tunnel_works(conf_port)
    for proc in (nps, npc1, npc2):
        _no_cache_complaints(proc.log_text())


def test_read_only_plugin_dirs_twistd(
    read_only_plugins: Callable[[list[str]], list[str]],
    spawn: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """
    In a read-only install, C{twistd -n --pidfile= nps --config} starts
    without "Unable to write to plugin cache" or a traceback.
    """
    server = support.NpsServer(tmp_path / "nps")
    nps = spawn(read_only_plugins([TWISTD, "-n", "--pidfile=", "nps", "--config", str(server.conf_path)]),
                name="twistd-nps-ro", cwd=tmp_path)
    support.wait_for_log(nps, "bridge listening on")
    _no_cache_complaints(nps.log_text())
