# -*- test-case-name: test.test_service -*-
"""
Tests for L{nps.service} and the C{nps|npc install|uninstall|start|...} verbs.

Installs go into temporary roots (C{--root}); the CLI tests run the real
C{.venv/bin/nps} and C{.venv/bin/npc}.  C{systemd-analyze verify} checks the
units written; this container has no running systemd, which is exactly the
case the start/stop verbs must explain.
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from nps import service
from support import REPO, VENV_BIN, Proc, free_port, wait_for_log, wait_for_port

NPS = str(VENV_BIN / "nps")
NPC = str(VENV_BIN / "npc")
HARDENING = (
    "User=nps",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "ReadWritePaths=/var/lib/nps",
    "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    "Restart=on-failure",
    "RestartSec=2",
    "ExecReload=/bin/kill -HUP $MAINPID",
)
NO_SYSTEMD = os.path.isdir(service.SYSTEMD_MARKER)
needs_no_systemd = pytest.mark.skipif(NO_SYSTEMD, reason="systemd is running here: start would really start nps")


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a console script to completion."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, cwd=cwd)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def exec_start(unit: Path) -> str:
    return next(line for line in lines(unit) if line.startswith("ExecStart="))[len("ExecStart="):]


def verify(unit: Path) -> None:
    """C{systemd-analyze verify} reports nothing at all (errors fail, warnings are printed too)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------ unit text ---


@pytest.mark.parametrize("kind", service.KINDS)
def test_unit_text_is_hardened(kind: str) -> None:
    """Both units run as the nps user, read-only but for /var/lib/nps, restart on failure, reload with SIGHUP."""
    text = service.unit_text(kind, [f"/usr/bin/{kind}", "-x"])
    for line in HARDENING:
        assert line in text.splitlines(), line
    assert f"ExecStart=/usr/bin/{kind} -x" in text.splitlines()
    assert "WantedBy=multi-user.target" in text.splitlines()
    assert text.index("[Unit]") < text.index("[Service]") < text.index("[Install]")


def test_exec_line_quotes_for_systemd() -> None:
    """Spaces, quotes, C{$} and C{%} survive systemd's command-line parsing and specifier expansion."""
    assert service.exec_line(["/usr/bin/npc", "-vkey=a b"]) == '/usr/bin/npc "-vkey=a b"'
    assert service.exec_line(["/x", "-vkey=$HOME%i"]) == "/x -vkey=$$HOME%%i"
    assert service.exec_line(["/x", 'say "hi"\\']) == '/x "say \\"hi\\"\\\\"'


def test_unit_needs_absolute_program() -> None:
    """systemd wants an absolute ExecStart program; a relative one is refused."""
    with pytest.raises(ValueError):
        service.unit_text("nps", ["nps"])
    with pytest.raises(ValueError):
        service.unit_text("nps", [])


@pytest.mark.parametrize("kind", service.KINDS)
def test_shipped_units_match(kind: str) -> None:
    """etc/nps.service and etc/npc.service are the units C{install} writes, with the default paths."""
    shipped = (REPO / "etc" / f"{kind}.service").read_text()
    body = shipped[shipped.index("[Unit]"):]
    command = exec_start(REPO / "etc" / f"{kind}.service").split()
    assert command[0] == f"/usr/local/bin/{kind}"
    assert body == service.unit_text(kind, command, header="")
    if kind == "nps":
        assert command[1:] == ["--config", "/etc/nps/conf/nps.conf"]


@pytest.mark.parametrize("kind", service.KINDS)
def test_shipped_units_verify(kind: str, tmp_path: Path) -> None:
    """The shipped units pass C{systemd-analyze verify} once ExecStart names a program that exists here."""
    text = (REPO / "etc" / f"{kind}.service").read_text().replace(f"/usr/local/bin/{kind}", str(VENV_BIN / kind))
    unit = tmp_path / f"{kind}.service"
    unit.write_text(text)
    verify(unit)


# ------------------------------------------------------ install (library) ---


def test_install_nps_into_root(tmp_path: Path) -> None:
    """install copies the config (adding data_dir), makes the data dir 0750 and writes the unit."""
    source = tmp_path / "src.conf"
    source.write_text("bridge_port=9024\n")
    root = tmp_path / "root"
    out = io.StringIO()
    path = service.install("nps", root=str(root), config=str(source), command=[NPS], out=out)
    assert Path(path) == root / "etc/systemd/system/nps.service"
    conf = root / "etc/nps/conf/nps.conf"
    assert lines(conf)[0] == "bridge_port=9024"
    assert "data_dir=/var/lib/nps" in lines(conf)
    assert mode(conf) == 0o640
    assert mode(root / "var/lib/nps") == 0o750
    assert exec_start(Path(path)) == f"{NPS} --config /etc/nps/conf/nps.conf"
    assert mode(Path(path)) == 0o644
    assert "systemctl daemon-reload && systemctl enable --now nps" in out.getvalue()


def test_install_keeps_data_dir_of_config(tmp_path: Path) -> None:
    """A config that sets data_dir is copied as it is; an existing config with another one gets a warning."""
    source = tmp_path / "src.conf"
    source.write_text("data_dir=/var/lib/nps\n")
    root = tmp_path / "root"
    service.install("nps", root=str(root), config=str(source), command=[NPS], out=io.StringIO())
    assert (root / "etc/nps/conf/nps.conf").read_text() == "data_dir=/var/lib/nps\n"
    (root / "etc/nps/conf/nps.conf").write_text("data_dir=db\n")
    out = io.StringIO()
    service.install("nps", root=str(root), config=str(source), command=[NPS], out=out)
    assert "its data_dir is /etc/nps/conf/db" in out.getvalue()


def test_install_without_config(tmp_path: Path) -> None:
    """With no config to copy, install writes a minimal one that uses /var/lib/nps."""
    service.install("nps", root=str(tmp_path), command=[NPS], out=io.StringIO())
    text = (tmp_path / "etc/nps/conf/nps.conf").read_text()
    assert "bridge_port=8024" in text and "data_dir=/var/lib/nps" in text


def test_install_npc_needs_flags(tmp_path: Path) -> None:
    """npc install without flags says what to give it."""
    with pytest.raises(service.ServiceError) as e:
        service.install("npc", root=str(tmp_path), command=[NPC], out=io.StringIO())
    assert e.value.code == 2
    assert "-server=" in str(e.value)


def test_control_calls_systemctl(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where systemd runs, the verbs are C{systemctl <verb> <kind>} and its exit code."""
    calls = []

    def fake_call(argv: list[str]) -> int:
        calls.append(argv)
        return 3

    monkeypatch.setattr(subprocess, "call", fake_call)
    assert service.control("npc", "status", running=lambda: True) == 3
    assert calls == [["systemctl", "status", "npc"]]


def test_control_without_systemd() -> None:
    """Without systemd the verbs print what to do instead and return 1."""
    err = io.StringIO()
    assert service.control("nps", "start", err=err, running=lambda: False) == 1
    assert ("systemd is not running here (container?): run `nps --config /etc/nps/conf/nps.conf` "
            "in the foreground or under your supervisor") in err.getvalue()


# ---------------------------------------------------------- CLI (processes) ---


def test_cli_install_nps(tmp_path: Path) -> None:
    """C{nps --config FILE install --root DIR} installs; a second install never overwrites the config."""
    source = tmp_path / "nps.conf"
    source.write_text("bridge_port=9024\n")
    root = tmp_path / "root"
    result = run(NPS, "--config", str(source), "install", "--root", str(root))
    assert result.returncode == 0, result.stderr
    conf = root / "etc/nps/conf/nps.conf"
    assert lines(conf)[0] == "bridge_port=9024"
    unit = root / "etc/systemd/system/nps.service"
    assert exec_start(unit) == f"{NPS} --config /etc/nps/conf/nps.conf"
    for line in HARDENING:
        assert line in lines(unit)
    assert mode(root / "var/lib/nps") == 0o750
    assert "systemctl daemon-reload && systemctl enable --now nps" in result.stdout

    conf.write_text("bridge_port=1234\ndata_dir=/var/lib/nps\n")
    again = run(NPS, "install", "--config", str(source), "--root", str(root))
    assert again.returncode == 0, again.stderr
    assert conf.read_text() == "bridge_port=1234\ndata_dir=/var/lib/nps\n"
    assert "never overwritten" in again.stdout
    verify(unit)


def test_cli_install_nps_shipped_config(tmp_path: Path) -> None:
    """Without --config (and no conf/nps.conf here), nps install copies the shipped etc/nps.conf."""
    result = run(NPS, "install", "--root", str(tmp_path / "root"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "root/etc/nps/conf/nps.conf").read_text()
    assert text.startswith((REPO / "etc/nps.conf").read_text())
    assert text.rstrip().endswith("data_dir=/var/lib/nps")


def test_cli_install_nps_bad_config(tmp_path: Path) -> None:
    """A config that nps could not start with is refused before anything is written."""
    source = tmp_path / "nps.conf"
    source.write_text("bridge_port=eighty\n")
    result = run(NPS, "--config", str(source), "install", "--root", str(tmp_path / "root"))
    assert result.returncode == 1
    assert "bridge_port" in result.stderr
    assert not (tmp_path / "root").exists()


def test_cli_install_npc_flags(tmp_path: Path) -> None:
    """C{npc install -server= -vkey= -type=} puts those flags in ExecStart, in a unit only root can read."""
    root = tmp_path / "root"
    result = run(NPC, "install", "--root", str(root), "-server=1.2.3.4:8024", "-vkey=K", "-type=tcp")
    assert result.returncode == 0, result.stderr
    unit = root / "etc/systemd/system/npc.service"
    assert exec_start(unit) == f"{NPC} -server=1.2.3.4:8024 -vkey=K -type=tcp"
    assert mode(unit) == 0o600
    for line in HARDENING:
        assert line in lines(unit)
    assert mode(root / "var/lib/nps") == 0o750
    assert not (root / "etc/nps/conf/nps.conf").exists()
    verify(unit)


def test_cli_install_npc_config(tmp_path: Path) -> None:
    """C{npc install -config=FILE} stores the config's absolute path."""
    conf = tmp_path / "npc.conf"
    conf.write_text("[common]\nserver_addr=1.2.3.4:8024\nvkey=K\n")
    root = tmp_path / "root"
    result = run(NPC, "install", "-config=npc.conf", f"-root={root}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    unit = root / "etc/systemd/system/npc.service"
    assert exec_start(unit) == f"{NPC} -config={conf}"
    assert mode(unit) == 0o644
    verify(unit)


def test_cli_install_npc_refuses_bad_flags(tmp_path: Path) -> None:
    """npc install checks its flags as npc will, and needs some."""
    bad = run(NPC, "install", "--root", str(tmp_path), "-server=1.2.3.4:8024", "-vkey=K", "-bogus=1")
    assert bad.returncode == 1 and "-bogus" in bad.stderr
    none = run(NPC, "install", "--root", str(tmp_path), cwd=tmp_path)
    assert none.returncode != 0
    assert not (tmp_path / "etc/systemd/system/npc.service").exists()


@pytest.mark.parametrize("kind", service.KINDS)
def test_cli_uninstall(kind: str, tmp_path: Path) -> None:
    """uninstall removes the unit (and its enable link) and keeps the config and data."""
    root = tmp_path / "root"
    flags = ["-server=1.2.3.4:8024", "-vkey=K"] if kind == "npc" else []
    exe = NPS if kind == "nps" else NPC
    assert run(exe, "install", "--root", str(root), *flags, cwd=tmp_path).returncode == 0
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / f"{kind}.service").symlink_to(f"/etc/systemd/system/{kind}.service")
    (root / "var/lib/nps/nps.db").write_text("x")
    result = run(exe, "uninstall", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert not (root / f"etc/systemd/system/{kind}.service").exists()
    assert not os.path.lexists(wants / f"{kind}.service")
    assert (root / "var/lib/nps/nps.db").exists()
    assert "Kept" in result.stdout
    if kind == "nps":
        assert (root / "etc/nps/conf/nps.conf").exists()
    again = run(exe, "uninstall", "--root", str(root))
    assert again.returncode == 0 and "not installed" in again.stdout


@needs_no_systemd
@pytest.mark.parametrize("argv", [(NPS, "start"), (NPS, "stop"), (NPS, "restart"), (NPS, "status"),
                                  (NPS, "reload"), (NPC, "start"), (NPC, "status")])
def test_cli_verbs_without_systemd(argv: tuple[str, ...]) -> None:
    """Without a running systemd the verbs exit 1 and say how to run the program instead."""
    result = run(*argv)
    assert result.returncode == 1
    assert "systemd is not running here (container?): run `" in result.stderr
    assert "in the foreground or under your supervisor" in result.stderr
    if argv[0] == NPS:
        assert "`nps --config /etc/nps/conf/nps.conf`" in result.stderr


def test_cli_update_not_supported() -> None:
    """Self-update stays unsupported (exit 2)."""
    assert run(NPS, "update").returncode == 2
    assert run(NPC, "update").returncode == 2


def test_sighup_does_not_stop_nps(tmp_path: Path) -> None:
    """C{systemctl reload nps} (SIGHUP) is logged, and nps keeps serving."""
    port = free_port()
    conf = tmp_path / "nps.conf"
    conf.write_text(f"bridge_ip=127.0.0.1\nbridge_port={port}\ndata_dir={tmp_path / 'data'}\n")
    proc = Proc([NPS, "--config", str(conf)], tmp_path / "nps.log")
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        proc.kill(signal.SIGHUP)
        wait_for_log(proc, "received SIGHUP")
        assert proc.alive
        wait_for_port("127.0.0.1", port, proc=proc)
    finally:
        assert proc.stop() == 0
