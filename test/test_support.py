# -*- test-case-name: test.test_support -*-
"""
Tests of the end-to-end helpers themselves (no nps needed).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]


def test_free_port_is_bindable() -> None:
    """
    free_port returns a loopback port that can be bound right away.
    """
    port = support.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_for_port_sees_listener() -> None:
    """
    wait_for_port returns once something listens, and raises TimeoutError for
    a port nobody listens on.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        support.wait_for_port("127.0.0.1", s.getsockname()[1], timeout=5)
    with pytest.raises(TimeoutError):
        support.wait_for_port("127.0.0.1", support.free_port(), timeout=0.3)


def test_proc_log_and_stop(tmp_path: Path) -> None:
    """
    Proc captures stdout and stderr in one log, wait_for_log finds a line,
    and stop() ends a process that ignores nothing.
    """
    code = "import sys,time; print('out-ready'); print('err-line', file=sys.stderr); time.sleep(600)"
    proc = support.Proc([sys.executable, "-c", code], tmp_path / "p.log", name="sleeper")
    try:
        assert support.wait_for_log(proc, "err-line", timeout=30) == "err-line"
        assert "out-ready" in proc.log_text()
        assert proc.alive
    finally:
        rc = proc.stop()
    assert rc == -signal.SIGTERM
    assert not proc.alive


def test_proc_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    """
    A process that ignores SIGTERM is killed with SIGKILL, and its forked
    children (same process group) go with it.
    """
    code = (
        "import signal,subprocess,sys,time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('child', c.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = support.Proc([sys.executable, "-c", code], tmp_path / "p.log", name="stubborn")
    line = support.wait_for_log(proc, "child ", timeout=30)
    child = int(line.split()[1])
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    # The group kill reaches the grandchild; reap-or-vanish check via /proc.
    for _ in range(200):
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        import time

        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("grandchild survived Proc.stop()")


def test_wait_for_log_reports_early_exit(tmp_path: Path) -> None:
    """
    wait_for_log fails fast, with the log, when the process exits without the line.
    """
    proc = support.Proc([sys.executable, "-c", "print('bye')"], tmp_path / "p.log")
    with pytest.raises(RuntimeError, match="bye"):
        support.wait_for_log(proc, "never printed", timeout=60)


def test_spawn_fixture(spawn: Callable[..., support.Proc]) -> None:
    """
    The spawn fixture starts a process with a log in the test's tmp dir.
    """
    proc = spawn([sys.executable, "-c", "print('spawned'); import time; time.sleep(600)"], name="py")
    support.wait_for_log(proc, "spawned")
    assert proc.log_path.name.startswith("py-")


def test_render_confs() -> None:
    """
    nps.conf and npc.conf are rendered as NPS writes them.
    """
    assert support.render_nps_conf({"bridge_port": 1, "public_vkey": None, "x": True}) == (
        "bridge_port=1\nx=true\n"
    )
    text = support.render_npc_conf(
        "127.0.0.1:18024",
        "K",
        {"tcp": {"mode": "tcp", "target_addr": "127.0.0.1:22", "server_port": 10022}},
    )
    assert text == (
        "[common]\nserver_addr=127.0.0.1:18024\nconn_type=tcp\nvkey=K\nauto_reconnection=true\n"
        "\n[tcp]\nmode=tcp\ntarget_addr=127.0.0.1:22\nserver_port=10022\n"
    )


def test_nps_server_conf_written(tmp_path: Path) -> None:
    """
    NpsServer writes a loopback-only nps.conf with a free bridge port and its data dir.
    """
    server = support.NpsServer(tmp_path, public_vkey="pk", extra={"disconnect_timeout": 2})
    conf = server.conf_path.read_text().splitlines()
    assert "bridge_ip=127.0.0.1" in conf
    assert f"bridge_port={server.bridge_port}" in conf
    assert f"data_dir={server.data_dir}" in conf
    assert "public_vkey=pk" in conf
    assert "disconnect_timeout=2" in conf
    assert server.argv("client", "list")[-3:] == ["--config", str(server.conf_path), "client", "list"][-3:]


@pytest.mark.e2e
def test_sshd_accepts_key_login(sshd: Any) -> None:
    """
    The sshd fixture lets root log in with the test key and run a command.
    """
    res = subprocess.run(
        sshd.ssh_cmd() + ["true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=120
    )
    assert res.returncode == 0, res.stderr.decode(errors="replace") + "\n" + sshd.proc.log_tail()


@pytest.mark.e2e
def test_http_backend_serves_known_file(http_backend: Any) -> None:
    """
    The http_backend fixture serves its known files; curl fetches them byte for byte.
    """
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    port, directory = http_backend
    assert (directory / "hello.txt").read_bytes() == support.HTTPBackend.HELLO
    res = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "60", http_backend.url("hello.txt")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == support.HTTPBackend.HELLO
    res = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "60", f"http://127.0.0.1:{port}/big.bin"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )
    assert res.stdout == http_backend.files["big.bin"]


@pytest.mark.e2e
def test_nps_fixtures_ssh_through_admin_tunnel(
    nps_server: Callable[..., Any], npc_client: Callable[..., support.Proc], sshd: Any
) -> None:
    """
    The nps_server and npc_client fixtures run the real commands: a client and
    a tcp tunnel added with the admin CLI carry an ssh session to the sshd
    fixture (npc started as C{npc -server= -vkey= -type=tcp}).
    """
    server = nps_server(extra={"disconnect_timeout": 2}, start=False)
    client = server.add_client("e2e")
    assert client.vkey and any(a.startswith("-server=") for a in client.npc_args)
    port = support.free_port()
    server.add_tunnel(client.id or 1, port, f"127.0.0.1:{sshd.port}")
    server.start()
    npc = npc_client(*client.npc_args)
    support.wait_for_log(npc, "connected to server")
    support.wait_for_port("127.0.0.1", port, proc=npc)
    res = subprocess.run(
        sshd.ssh_cmd(port=port) + ["echo", "through-nps"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "through-nps"


@pytest.mark.e2e
def test_nps_fixtures_public_vkey_config_mode(
    nps_server: Callable[..., Any], npc_client: Callable[..., support.Proc], http_backend: Any
) -> None:
    """
    With public_vkey on the server, an npc.conf [tcp] section opens its
    server_port, and a 1 MiB file crosses the tunnel intact (curl).
    """
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    server = nps_server(public_vkey="fixture-public-key")
    port = support.free_port()
    conf = support.render_npc_conf(
        server.bridge_addr, "fixture-public-key",
        {"web": {"mode": "tcp", "server_ip": "127.0.0.1", "server_port": port,
                 "target_addr": f"127.0.0.1:{http_backend.port}"}},
    )
    npc = npc_client(conf=conf)
    support.wait_for_port("127.0.0.1", port, proc=npc)
    res = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "60", http_backend.url("big.bin", port=port)],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == http_backend.files["big.bin"]


@pytest.mark.e2e
def test_nps_server_restart_keeps_data_dir(nps_server: Callable[..., Any]) -> None:
    """
    restart() brings the server back on the same bridge port with the same
    store: a client added before the restart is still listed after it.
    """
    server = nps_server()
    server.add_client("survivor")
    first_pid = server.proc.pid
    server.restart()
    assert server.proc.pid != first_pid
    support.wait_for_port("127.0.0.1", server.bridge_port, proc=server.proc)
    listing = server.admin("client", "list")
    assert listing.returncode == 0, listing.stderr
    assert "survivor" in listing.stdout
