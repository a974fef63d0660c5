# -*- test-case-name: test.test_service -*-
"""
Run C{nps} and C{npc} as systemd services: C{nps install|uninstall|start|stop|restart|status|reload}.

Plain functions, no Twisted.  L{install} only writes files (a config, a data
directory and a hardened unit) below a root directory, so it works in a
container or a temporary directory; it asks systemd to load and start the
unit only when systemd runs here and the root is C{/}.  The verbs that need
a running systemd (L{control}) say so clearly when there is none.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from typing import Callable, Sequence, TextIO

__all__ = [
    "CONTROL_VERBS",
    "DATA_DIR",
    "KINDS",
    "NPS_CONF",
    "SERVICE_USER",
    "ServiceError",
    "control",
    "default_command",
    "exec_line",
    "install",
    "no_systemd_message",
    "systemd_running",
    "uninstall",
    "unit_path",
    "unit_text",
]

KINDS = ("nps", "npc")
#: Where C{nps install} puts the server's config (NPS's own place for it).
NPS_CONF = "/etc/nps/conf/nps.conf"
#: The only directory the services may write to.
DATA_DIR = "/var/lib/nps"
UNIT_DIR = "/etc/systemd/system"
#: The system user both services run as.
SERVICE_USER = "nps"
#: The verbs handed to C{systemctl} as they are.
CONTROL_VERBS = ("start", "stop", "restart", "status", "reload")
#: Present when systemd is the running init (what C{sd_booted()} checks).
SYSTEMD_MARKER = "/run/systemd/system"

_DESCRIPTIONS = {
    "nps": "nps reverse tunnel server (NPS compatible)",
    "npc": "npc reverse tunnel client (NPS compatible)",
}
#: Directories that C{ProtectHome=yes} hides from the service.
_HOME_DIRS = ("/home", "/root", "/run/user")


class ServiceError(Exception):
    """
    A service command cannot go on; the message says why and what to do.

    @ivar code: the exit code for the command line.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def systemd_running(marker: str = SYSTEMD_MARKER) -> bool:
    """
    Whether systemd is the init system here (as C{sd_booted()} decides it).

    @param marker: the directory systemd creates at boot.
    """
    return os.path.isdir(marker)


def unit_path(kind: str, root: str = "/") -> str:
    """The unit file of C{kind} (C{"nps"} or C{"npc"}) below C{root}."""
    _check_kind(kind)
    return _below(root, f"{UNIT_DIR}/{kind}.service")


def default_command(kind: str, argv0: str | None = None) -> list[str]:
    """
    The command that starts C{kind}: the running console script when it is one,
    else C{kind} on C{$PATH}, else this Python with C{-m nps.cli.<kind>_main}.

    @param argv0: the running program (C{sys.argv[0]} by default).
    @return: an absolute command line.
    """
    _check_kind(kind)
    argv0 = sys.argv[0] if argv0 is None else argv0
    if argv0 and os.path.basename(argv0) == kind:
        candidate = os.path.abspath(argv0)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return [candidate]
    found = shutil.which(kind)
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", f"nps.cli.{kind}_main"]


def _quote(arg: str) -> str:
    """One word of a systemd command line, quoted and escaped as systemd reads it."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if escaped and not re.search(r"[\s\"'\\;]", escaped):
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def exec_line(argv: Sequence[str]) -> str:
    """C{argv} as the value of C{ExecStart=}."""
    return " ".join(_quote(arg) for arg in argv)


def unit_text(kind: str, command: Sequence[str], user: str = SERVICE_USER, data_dir: str = DATA_DIR,
              header: str | None = None) -> str:
    """
    The hardened systemd unit for C{kind}.

    The service runs as C{user} with no way to gain privileges, sees the
    file system read-only except C{data_dir}, has no access to home
    directories, its own C{/tmp}, and only the capability to bind ports
    below 1024.  C{systemctl reload} sends SIGHUP.

    @param kind: C{"nps"} or C{"npc"}.
    @param command: the full C{ExecStart} command line (absolute program path first).
    @param header: the comment at the top (default: who wrote it).
    @return: the unit file's text.
    """
    _check_kind(kind)
    if not command or not os.path.isabs(command[0]):
        raise ValueError(f"ExecStart needs an absolute program path, got {list(command)!r}")
    if header is None:
        header = f"# {kind}.service: written by `{kind} install`; `{kind} uninstall` removes it.\n"
    return header + f"""\
[Unit]
Description={_DESCRIPTIONS[kind]}
Documentation=https://github.com/ehang-io/nps
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={user}
WorkingDirectory={data_dir}
ExecStart={exec_line(command)}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
LimitNOFILE=1048576
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={data_dir}
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE

[Install]
WantedBy=multi-user.target
"""


def no_systemd_message(kind: str, root: str = "/") -> str:
    """What to do instead of C{systemctl} when systemd is not running."""
    if kind == "nps":
        foreground = f"nps --config {NPS_CONF}"
    else:
        foreground = _installed_command(root) or "npc -server=HOST:PORT -vkey=KEY"
    return (f"systemd is not running here (container?): run `{foreground}` "
            "in the foreground or under your supervisor")


def _installed_command(root: str) -> str | None:
    """The C{ExecStart} of an installed npc unit, for messages."""
    try:
        with open(unit_path("npc", root), encoding="utf-8") as f:
            for line in f:
                if line.startswith("ExecStart="):
                    return line[len("ExecStart="):].strip().replace("$$", "$").replace("%%", "%")
    except OSError:
        pass
    return None


def control(kind: str, verb: str, err: TextIO = sys.stderr,
            running: Callable[[], bool] = systemd_running) -> int:
    """
    C{systemctl <verb> <kind>}, or a clear message and exit code 1 without systemd.

    @return: the exit code.
    """
    _check_kind(kind)
    if verb not in CONTROL_VERBS:
        raise ValueError(f"unknown service verb {verb!r}")
    if not running():
        print(f"{kind}: {no_systemd_message(kind)}", file=err)
        return 1
    return _systemctl(verb, kind, err=err)


def install(kind: str, root: str = "/", argv: Sequence[str] = (), config: str | None = None,
            command: Sequence[str] | None = None, out: TextIO = sys.stdout,
            running: Callable[[], bool] = systemd_running) -> str:
    """
    Install C{kind} as a systemd service below C{root}.

    For nps, C{config} is copied to C{<root>/etc/nps/conf/nps.conf} unless
    a file is there already (it is never overwritten); when it sets no
    C{data_dir}, the copy gets C{data_dir=/var/lib/nps}, the one place the
    service may write.  For npc, C{argv} are the flags to run it with
    (C{-server=H:P -vkey=K -type=tcp} or C{-config=/etc/nps/npc.conf}).
    The data directory C{<root>/var/lib/nps} is created with mode 0750, owned
    by the C{nps} system user (created with C{useradd --system} if needed)
    when C{root} is C{/}.  The unit is written (replacing an older one) and,
    only when C{root} is C{/} and systemd runs here, loaded, enabled and started.

    @param config: the nps.conf to copy (nps only); C{None} writes a minimal one.
    @param command: the program to run (default: L{default_command}).
    @return: the unit file's path.
    @raise ServiceError: when something cannot be written or run.
    """
    _check_kind(kind)
    real_root = os.path.abspath(root) == "/"
    command = list(command) if command is not None else default_command(kind)
    if kind == "nps":
        if argv:
            raise ServiceError(f"nps install takes no server flags, got {' '.join(argv)!r}", code=2)
        command += ["--config", NPS_CONF]
    else:
        flags = _npc_flags(argv, out)
        command += flags
        if not flags:
            raise ServiceError("npc install needs the flags npc runs with, e.g. "
                               "`npc install -server=1.2.3.4:8024 -vkey=KEY -type=tcp` "
                               "or `npc install -config=/etc/nps/npc.conf`", code=2)
    for path in command[:1]:
        _warn_if_hidden(path, "the program", out)
    try:
        uid = _service_user(out) if real_root else None
        _make_data_dir(root, uid, out)
        if kind == "nps":
            _install_config(root, config, uid, out)
        path = _write_unit(kind, root, command, out)
    except OSError as e:
        raise ServiceError(f"{kind} install: {e}") from None
    enable = f"systemctl daemon-reload && systemctl enable --now {kind}"
    if not real_root:
        print(f"Installed into {root}; on the system that boots from it, run `{enable}`.", file=out)
    elif not running():
        print(f"systemd is not running here (container?): the files are in place; run `{enable}` "
              f"where systemd runs, or run `{kind}` in the foreground under your supervisor.", file=out)
    else:
        for verb in (["daemon-reload"], ["enable", "--now", kind]):
            code = _systemctl(*verb, err=out)
            if code:
                raise ServiceError(f"`systemctl {' '.join(verb)}` failed (exit {code}); "
                                   f"see `systemctl status {kind}` and `journalctl -u {kind}`")
        print(f"{kind} is enabled and started: `systemctl status {kind}`, `journalctl -u {kind}`.", file=out)
    return path


def uninstall(kind: str, root: str = "/", out: TextIO = sys.stdout,
              running: Callable[[], bool] = systemd_running) -> bool:
    """
    Remove C{kind}'s unit (stopping and disabling it first where systemd runs);
    the config and the data directory stay.

    @return: whether a unit was there to remove.
    """
    _check_kind(kind)
    path = unit_path(kind, root)
    live = os.path.abspath(root) == "/" and running()
    if live:
        _systemctl("disable", "--now", kind, err=out)
    removed = False
    for stale in (path, _below(root, f"{UNIT_DIR}/multi-user.target.wants/{kind}.service")):
        if os.path.lexists(stale):
            try:
                os.unlink(stale)
            except OSError as e:
                raise ServiceError(f"{kind} uninstall: {e}") from None
            removed = removed or stale == path
    if live:
        _systemctl("daemon-reload", err=out)
    kept = (f"{_below(root, NPS_CONF)} and {_below(root, DATA_DIR)}: delete them yourself if you no longer need them"
            if kind == "nps" else f"{_below(root, DATA_DIR)}: delete it yourself if you no longer need it")
    if removed:
        print(f"Removed {path}.", file=out)
    else:
        print(f"{kind} is not installed as a service ({path} does not exist).", file=out)
    print(f"Kept {kept}.", file=out)
    return removed


# ----------------------------------------------------------------- helpers ---


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _below(root: str, path: str) -> str:
    """C{path} (absolute on the target system) inside C{root}."""
    return os.path.join(os.path.abspath(root), path.lstrip("/"))


def _warn_if_hidden(path: str, what: str, out: TextIO) -> None:
    real = os.path.realpath(path)
    if any(real == d or real.startswith(d + "/") for d in _HOME_DIRS):
        print(f"warning: {what} {path} is under a home directory, which the service cannot see "
              "(ProtectHome=yes); move it, e.g. to /opt or /etc/nps", file=out)
    elif any(real.startswith(d + "/") for d in ("/tmp", "/var/tmp")):
        print(f"warning: {what} {path} is in a temporary directory; the service has its own "
              "(PrivateTmp=yes) and will not see it: move it, e.g. to /etc/nps", file=out)


def _npc_flags(argv: Sequence[str], out: TextIO) -> list[str]:
    """The npc flags for C{ExecStart}: as given, with C{-config} made absolute."""
    flags = []
    words = iter(argv)
    for arg in words:
        dashes = "--" if arg.startswith("--") else "-"
        name, equals, value = arg.lstrip("-").partition("=")
        if name in ("config", "c") and not equals:  # Go's `-config FILE`
            equals, value = "=", next(words, "")
        if name in ("config", "c") and equals and value:
            value = os.path.abspath(value)
            if not os.path.isfile(value):
                print(f"warning: {value} does not exist yet; npc will not start without it", file=out)
            _warn_if_hidden(value, "the config", out)
            arg = f"{dashes}{name}={value}"
        elif name == "vkey":
            print("note: the vkey is in the unit file (mode 0600) and in `systemctl show npc`; "
                  "put it in an npc.conf readable only by root and the nps group and use "
                  "-config= to keep it private", file=out)
        flags.append(arg)
    return flags


def _service_user(out: TextIO) -> int | None:
    """The uid of the C{nps} system user, creating it if needed (C{None} if that fails)."""
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        print(f"warning: no useradd here: create the system user {SERVICE_USER!r} yourself, "
              "the service runs as it", file=out)
        return None
    shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)), "/bin/false")
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", DATA_DIR,
         "--shell", shell, "--comment", "nps reverse tunnel", SERVICE_USER],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        print(f"warning: `useradd --system {SERVICE_USER}` failed: {result.stderr.strip()}; "
              f"create the user yourself, the service runs as it", file=out)
        return None
    print(f"Created the system user {SERVICE_USER!r}.", file=out)
    return pwd.getpwnam(SERVICE_USER).pw_uid


def _make_data_dir(root: str, uid: int | None, out: TextIO) -> None:
    path = _below(root, DATA_DIR)
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o750)
    if uid is not None:
        gid = pwd.getpwuid(uid).pw_gid
        os.chown(path, uid, gid)
        for name in os.listdir(path):  # a database left by an older install
            os.chown(os.path.join(path, name), uid, gid, follow_symlinks=False)
        print(f"Data directory {path} (mode 0750, owner {SERVICE_USER}).", file=out)
    else:
        print(f"Data directory {path} (mode 0750; the service runs as user {SERVICE_USER}).", file=out)


_DATA_DIR_LINE = re.compile(r"^\s*data_dir\s*=\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)


def _install_config(root: str, source: str | None, uid: int | None, out: TextIO) -> None:
    dest = _below(root, NPS_CONF)
    if os.path.exists(dest):
        print(f"Kept the existing {dest} (never overwritten).", file=out)
        with open(dest, encoding="utf-8", errors="replace") as f:
            found = _DATA_DIR_LINE.findall(f.read())
        data_dir = os.path.normpath(os.path.join(os.path.dirname(NPS_CONF), found[-1])) if found else None
        if data_dir != DATA_DIR:
            print(f"warning: its data_dir is {data_dir or 'not set (the config directory)'}, but the "
                  f"service can only write to {DATA_DIR}: set data_dir={DATA_DIR} in it", file=out)
        return
    if source is not None:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    else:
        text = "# nps.conf written by `nps install`; every key is described in docs/config.md\nbridge_port=8024\n"
    if not _DATA_DIR_LINE.search(text):
        if not text.endswith("\n"):
            text += "\n"
        text += f"\n# added by `nps install`: the service can write only here\ndata_dir={DATA_DIR}\n"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(dest, 0o640)
    if uid is not None:
        os.chown(dest, 0, pwd.getpwuid(uid).pw_gid)
    print(f"Copied {source or 'a minimal config'} to {dest} (mode 0640).", file=out)


def _write_unit(kind: str, root: str, command: Sequence[str], out: TextIO) -> str:
    path = unit_path(kind, root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    existed = os.path.exists(path)
    private = kind == "npc" and any(a.lstrip("-").startswith("vkey") for a in command[1:])
    mode = 0o600 if private else 0o644
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(unit_text(kind, command))
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    print(f"{'Replaced' if existed else 'Wrote'} {path} (mode {stat.S_IMODE(mode):04o}).", file=out)
    return path


def _systemctl(*args: str, err: TextIO) -> int:
    try:
        return subprocess.call(["systemctl", *args])
    except OSError as e:
        print(f"cannot run systemctl: {e}", file=err)
        return 1
