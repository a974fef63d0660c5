# -*- test-case-name: test.test_support -*-
"""
Helpers for end-to-end tests (and benchmarks) that run real processes on loopback.

Nothing here imports pytest: the fixtures built on these helpers live in
C{test/conftest.py}, and C{bench/bench.py} reuses the same classes.

Every process started through L{Proc} is recorded in a registry and is stopped
by L{stop_all} (called by the session fixture in conftest and at interpreter
exit); on Linux each child also gets C{PR_SET_PDEATHSIG} so that it dies with
the test runner even when the runner itself is killed.
"""
from __future__ import annotations

import atexit
import ctypes
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

__all__ = [
    "REPO",
    "VENV_BIN",
    "Unavailable",
    "free_port",
    "wait_for_port",
    "wait_for_log",
    "Proc",
    "stop_all",
    "SSHD",
    "HTTPBackend",
    "NpsServer",
    "NewClient",
    "render_nps_conf",
    "render_npc_conf",
    "start_npc",
]

REPO = Path(__file__).resolve().parent.parent
#: Directory of the interpreter running the tests: the venv's bin/, where the
#: C{nps}, C{npc} and C{twistd} console scripts are installed.
VENV_BIN = Path(sys.executable).parent

#: Generous default for readiness waits: CI machines are small and noisy.
#: These are upper bounds for waiting, never assertions about speed.
DEFAULT_TIMEOUT = 30.0


class Unavailable(Exception):
    """
    A system tool the helper needs is not installed (the fixture turns this
    into a skip with the message as reason).
    """


# ---------------------------------------------------------------- ports ---


def free_port(host: str = "127.0.0.1") -> int:
    """
    Return a TCP port that was free on C{host} a moment ago (bind to port 0).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """
    C{True} if a TCP connection to C{host:port} is accepted right now.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    timeout: float = DEFAULT_TIMEOUT,
    proc: "Proc | None" = None,
) -> None:
    """
    Wait until C{host:port} accepts a TCP connection.

    @param proc: if given and it exits while we wait, fail at once with the
        tail of its log instead of waiting for the timeout.
    @raise TimeoutError: the port did not open within C{timeout} seconds.
    @raise RuntimeError: C{proc} exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_open(host, port, timeout=min(1.0, max(0.05, deadline - time.monotonic()))):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.returncode} before {host}:{port} opened; "
                f"log {proc.log_path}:\n{proc.log_tail()}"
            )
        if time.monotonic() >= deadline:
            extra = f"; log {proc.log_path}:\n{proc.log_tail()}" if proc is not None else ""
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout:g}s{extra}")
        time.sleep(0.05)


def wait_for_log(proc: "Proc", substring: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """
    Wait until C{substring} appears in C{proc}'s combined stdout/stderr log.

    @return: the first log line that contains it.
    @raise TimeoutError: not seen within C{timeout} seconds.
    @raise RuntimeError: the process exited without logging it.
    """
    deadline = time.monotonic() + timeout
    while True:
        # Read the exit status before the log so that a line written just
        # before exiting is not missed.
        exited = proc.poll() is not None
        text = proc.log_text()
        for line in text.splitlines():
            if substring in line:
                return line
        if exited:
            raise RuntimeError(
                f"{proc.name} exited with {proc.returncode} without logging {substring!r}; "
                f"log {proc.log_path}:\n{proc.log_tail()}"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{proc.name} did not log {substring!r} within {timeout:g}s; "
                f"log {proc.log_path}:\n{proc.log_tail()}"
            )
        time.sleep(0.05)


# ------------------------------------------------------------ processes ---

_PR_SET_PDEATHSIG = 1
_LIVE: "set[Proc]" = set()


def _child_setup() -> None:
    """
    Runs in the child between fork and exec: ask the kernel to SIGTERM it when
    its parent dies, so that nothing outlives a killed test runner.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # pragma: no cover - not Linux
        pass


class Proc:
    """
    A child process whose stdout and stderr both go to one log file.

    It runs in its own session (process group), so L{stop} also reaps the
    children it forked (sshd's per-connection processes, for instance).
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        log_path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.name = name or Path(self.argv[0]).name
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        # The log holds only what the process writes (no header line), so
        # that wait_for_log never matches our own command line.
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=None if cwd is None else str(cwd),
                start_new_session=True,
                # The kernel sends PDEATHSIG when the *thread* that forked
                # exits, so only children of the main thread get it.
                preexec_fn=_child_setup if threading.current_thread() is threading.main_thread() else None,
            )
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} rc={self.returncode}>"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        """
        Exit status, or C{None} while running.
        """
        return self.popen.poll()

    @property
    def alive(self) -> bool:
        return self.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """
        Wait for exit; raises C{subprocess.TimeoutExpired} on timeout.
        """
        return self.popen.wait(timeout)

    def log_text(self) -> str:
        """
        Everything the process wrote to stdout and stderr so far.
        """
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def kill(self, sig: int = signal.SIGKILL, group: bool = False) -> None:
        """
        Send C{sig} to the process (or to its whole process group).
        Does nothing if it already exited.
        """
        if self.poll() is not None and not group:
            return
        try:
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0) -> int | None:
        """
        SIGTERM, then SIGKILL after C{timeout} seconds; also kills whatever is
        left of its process group. Safe to call more than once.

        @return: the exit status.
        """
        if self.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                try:
                    self.popen.wait(10)
                except subprocess.TimeoutExpired:  # pragma: no cover - D state
                    pass
        # Leftover children in the group (e.g. sshd session processes).
        self.kill(signal.SIGKILL, group=True)
        _LIVE.discard(self)
        return self.returncode


def stop_all() -> None:
    """
    Stop every L{Proc} that is still registered.
    """
    for p in list(_LIVE):
        try:
            p.stop(timeout=5)
        except Exception:  # pragma: no cover - best effort at exit
            pass


atexit.register(stop_all)


def process_tree(pid: int) -> list[int]:
    """
    C{pid} and all its descendants (from /proc).
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after ')'.
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kib(pid: int, tree: bool = True) -> int:
    """
    Resident set size in KiB (VmRSS) of C{pid}, summed over its descendants
    when C{tree} is true. Processes that vanish meanwhile count as 0.
    """
    total = 0
    for p in process_tree(pid) if tree else [pid]:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


# ----------------------------------------------------------------- sshd ---

SSHD_BIN = "/usr/sbin/sshd"

#: Options that only newer OpenSSH releases know; each is kept only if
#: C{sshd -t} accepts it (an unknown keyword makes sshd refuse to start).
_SSHD_OPTIONAL = [
    "PerSourcePenalties no",
]


class SSHD:
    """
    A real OpenSSH server on C{127.0.0.1:port}, run in the foreground
    (C{sshd -D -e}) with its own host key, config, pid file and an authorized
    client key for root; nothing in /etc/ssh is used or changed.
    """

    def __init__(self, workdir: str | os.PathLike[str], port: int | None = None) -> None:
        for tool in (SSHD_BIN, "ssh", "ssh-keygen"):
            if shutil.which(tool) is None:
                raise Unavailable(
                    f"{tool} is not installed (apt-get install openssh-server openssh-client)"
                )
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = self.dir / "id_ed25519"
        self.authorized_keys = self.dir / "authorized_keys"
        self.config = self.dir / "sshd_config"
        self.pid_file = self.dir / "sshd.pid"
        self.log_path = self.dir / "sshd.log"
        self.proc: Proc | None = None
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nps-test", "-f", str(key)],
                    check=True,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=60,
                )
        self.authorized_keys.write_text((self.client_key.with_suffix(".pub")).read_text())
        # sshd refuses to start without its privilege separation directory.
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        self._write_config()

    def _write_config(self) -> None:
        base = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "AllowTcpForwarding yes",
            "GatewayPorts no",
            "X11Forwarding no",
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "LogLevel INFO",
            "Subsystem sftp internal-sftp",
        ]
        lines = list(base)
        for opt in _SSHD_OPTIONAL:
            self.config.write_text("\n".join(base + [opt]) + "\n")
            test = subprocess.run(
                [SSHD_BIN, "-t", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
            )
            if test.returncode == 0:
                lines.append(opt)
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> "SSHD":
        self.proc = Proc(
            [SSHD_BIN, "-D", "-e", "-f", str(self.config)], self.log_path, name="sshd"
        )
        wait_for_port("127.0.0.1", self.port, timeout, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def ssh_cmd(self, port: int | None = None, host: str = "127.0.0.1") -> list[str]:
        """
        argv prefix for C{ssh} logging in as root with the test key to
        C{host:port} (default: this sshd); append a remote command or options
        such as C{-N -R ...}. Ignores ~/.ssh/config and known_hosts.
        """
        return [
            "ssh",
            "-F", "/dev/null",
            "-i", str(self.client_key),
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=20",
            "-p", str(self.port if port is None else port),
            f"root@{host}",
        ]


# ---------------------------------------------------------- http backend ---


class HTTPBackend:
    """
    C{python -m http.server} on 127.0.0.1 serving a directory with known files:
    C{hello.txt} (a short text) and C{big.bin} (1 MiB of deterministic bytes).
    """

    HELLO = b"hello from the nps test backend\n"

    def __init__(self, workdir: str | os.PathLike[str], port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.dir = self.workdir / "www"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.files: dict[str, bytes] = {
            "hello.txt": self.HELLO,
            "big.bin": bytes((i * 7 + (i >> 8)) & 0xFF for i in range(1 << 20)),
        }
        for name, data in self.files.items():
            (self.dir / name).write_bytes(data)
        self.proc: Proc | None = None

    def __iter__(self) -> Iterator[Any]:
        """
        Unpacks as C{port, dir}.
        """
        return iter((self.port, self.dir))

    def url(self, path: str = "hello.txt", port: int | None = None, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port if port is None else port}/{path.lstrip('/')}"

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> "HTTPBackend":
        self.proc = Proc(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port),
             "--directory", str(self.dir)],
            self.workdir / "http_backend.log",
            name="http.server",
        )
        wait_for_port("127.0.0.1", self.port, timeout, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


# ------------------------------------------------------------ nps / npc ---


def render_nps_conf(values: Mapping[str, object]) -> str:
    """
    nps.conf text (C{key=value} lines) from a mapping; C{None} values are
    left out, C{True}/C{False} become C{true}/C{false}.
    """
    out = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        out.append(f"{key}={value}")
    return "\n".join(out) + "\n"


def render_npc_conf(
    server_addr: str,
    vkey: str,
    tunnels: Mapping[str, Mapping[str, object]] | None = None,
    **common: object,
) -> str:
    """
    npc.conf text: a C{[common]} section (server_addr, conn_type=tcp, vkey,
    auto_reconnection=true, plus C{common}) and one section per tunnel::

        render_npc_conf("127.0.0.1:18024", "k",
                        {"ssh": {"mode": "tcp", "target_addr": "127.0.0.1:22",
                                 "server_port": 10022}})
    """
    head: dict[str, object] = {
        "server_addr": server_addr,
        "conn_type": "tcp",
        "vkey": vkey,
        "auto_reconnection": True,
    }
    head.update(common)
    parts = ["[common]\n" + render_nps_conf(head)]
    for name, section in (tunnels or {}).items():
        parts.append(f"[{name}]\n" + render_nps_conf(section))
    return "\n".join(parts)


_VKEY_RE = re.compile(r"-vkey=(\S+)")
_CLIENT_ID_RE = re.compile(r"\bclient (\d+)\b", re.IGNORECASE)


class NpsServer:
    """
    A real C{nps} server process with its own nps.conf and data dir.

    The conf has C{bridge_type=tcp}, C{bridge_ip=127.0.0.1}, a free
    C{bridge_port}, C{data_dir}, C{public_vkey} when given, and C{extra}
    keys (a C{None} value removes a key).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        public_vkey: str | None = None,
        extra: Mapping[str, object] | None = None,
        *,
        use_twistd: bool = False,
        env: Mapping[str, str] | None = None,
        name: str = "nps",
        on_proc: Callable[[Proc], object] | None = None,
    ) -> None:
        """
        @param on_proc: called with each server L{Proc} started (by L{start}
            and L{restart}); the fixtures use it to attach logs to failures.
        """
        self.workdir = Path(workdir)
        self.on_proc = on_proc
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.bridge_port = free_port()
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.conf_path = self.workdir / "nps.conf"
        self.log_path = self.workdir / f"{name}.log"
        self.use_twistd = use_twistd
        self.env = dict(env or {})
        self.values: dict[str, object] = {
            "bridge_type": "tcp",
            "bridge_ip": "127.0.0.1",
            "bridge_port": self.bridge_port,
            "data_dir": self.data_dir,
            "public_vkey": public_vkey,
        }
        self.values.update(extra or {})
        if isinstance(self.values.get("bridge_port"), int):
            self.bridge_port = int(self.values["bridge_port"])  # type: ignore[call-overload]
        self.public_vkey = public_vkey
        self.write_conf()
        self.proc: Proc | None = None

    @property
    def bridge_addr(self) -> str:
        return f"127.0.0.1:{self.bridge_port}"

    def write_conf(self) -> None:
        self.conf_path.write_text(render_nps_conf(self.values))

    def argv(self, *args: str) -> list[str]:
        """
        Command line for C{nps --config FILE *args}.
        """
        return [str(VENV_BIN / "nps"), "--config", str(self.conf_path), *args]

    def start(self, timeout: float = DEFAULT_TIMEOUT, wait: bool = True) -> "NpsServer":
        if self.use_twistd:
            argv = [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "nps", "--config", str(self.conf_path)]
        else:
            argv = self.argv()
        self.proc = Proc(argv, self.log_path, env=self.env, cwd=self.workdir, name=self.name)
        if self.on_proc is not None:
            self.on_proc(self.proc)
        if wait:
            wait_for_port("127.0.0.1", self.bridge_port, timeout, proc=self.proc)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        return self.proc.stop(timeout)

    def restart(self, timeout: float = DEFAULT_TIMEOUT) -> "NpsServer":
        """
        Stop (SIGTERM) and start again with the same conf and data dir.
        """
        self.stop()
        return self.start(timeout)

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc is not None else ""

    def admin(self, *args: str, check: bool = False, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """
        Run C{nps --config FILE *args} (e.g. C{"client", "add", "--remark", "x"})
        and return the completed process (text stdout/stderr).
        """
        return subprocess.run(
            self.argv(*args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            cwd=self.workdir,
            env={**os.environ, **self.env},
        )

    def add_client(self, remark: str = "test", *args: str) -> "NewClient":
        """
        C{client add --remark REMARK *args}; parses the printed
        C{npc -server=... -vkey=KEY -type=...} line.
        """
        res = self.admin("client", "add", "--remark", remark, *args)
        line = next((l for l in res.stdout.splitlines() if _VKEY_RE.search(l) and "-server=" in l), None)
        if res.returncode != 0 or line is None:
            raise RuntimeError(
                f"nps client add failed (rc={res.returncode}):\n{res.stdout}\n{res.stderr}"
            )
        m = _VKEY_RE.search(line)
        assert m is not None
        ident = _CLIENT_ID_RE.search(res.stdout)
        return NewClient(
            id=int(ident.group(1)) if ident else None,
            vkey=m.group(1),
            npc_args=[a for a in line.split() if a.startswith("-")],
        )

    def add_tunnel(
        self, client_id: int, port: int, target: str, *args: str, mode: str = "tcp",
        server_ip: str | None = "127.0.0.1",
    ) -> subprocess.CompletedProcess[str]:
        """
        C{tunnel add --client ID --mode MODE --port PORT --target TARGET
        [--server-ip IP] *args}; raises if it fails. Listens on loopback
        unless C{server_ip=None}.
        """
        argv = ["tunnel", "add", "--client", str(client_id), "--mode", mode,
                "--port", str(port), "--target", target]
        if server_ip is not None:
            argv += ["--server-ip", server_ip]
        res = self.admin(*argv, *args)
        if res.returncode != 0:
            raise RuntimeError(f"nps tunnel add failed (rc={res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res


@dataclasses.dataclass
class NewClient:
    """
    What C{nps client add} printed: the id (when shown), the vkey and the
    arguments of the ready-made npc command (C{-server=... -vkey=... -type=tcp}).
    """

    id: int | None
    vkey: str
    npc_args: list[str]


def start_npc(
    workdir: str | os.PathLike[str],
    *args: str,
    conf: str | None = None,
    env: Mapping[str, str] | None = None,
    name: str = "npc",
) -> Proc:
    """
    Start C{npc *args}; with C{conf} (npc.conf text), write it to
    C{workdir/NAME.conf} and add C{-config=PATH}.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [str(VENV_BIN / "npc"), *args]
    if conf is not None:
        conf_path = workdir / f"{name}.conf"
        conf_path.write_text(conf)
        argv.append(f"-config={conf_path}")
    return Proc(argv, workdir / f"{name}.log", env=env, cwd=workdir, name=name)


def until(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition", interval: float = 0.25) -> Any:
    """
    Call C{check} until it returns something truthy (exceptions count as
    "not yet"); bounded by C{timeout} seconds and a number of attempts.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    for _ in range(int(timeout / interval) + 10):
        try:
            result = check()
            if result:
                return result
            last = result
        except Exception as e:  # noqa: BLE001 - "not yet"
            last = e
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:g}s; last result: {last!r}")


def count_in_log(proc: Proc, substring: str) -> int:
    return sum(1 for line in proc.log_text().splitlines() if substring in line)


def start_config_tunnel(
    nps_server: Callable[..., Any], npc_client: Callable[..., Any], vkey: str, name: str,
    section: Mapping[str, object], **common: object,
) -> tuple[Any, Any, int]:
    """
    nps with C{public_vkey=vkey} and an npc whose npc.conf has one tunnel
    section C{name} (C{section} plus server_ip=127.0.0.1 and a free
    server_port); returns (server, npc, public port) once the port is open.
    """
    server = nps_server(public_vkey=vkey)
    port = free_port()
    conf = render_npc_conf(server.bridge_addr, vkey,
                           {name: {**section, "server_ip": "127.0.0.1", "server_port": port}}, **common)
    npc = npc_client(conf=conf)
    wait_for_log(npc, "is open on the server")
    wait_for_port("127.0.0.1", port, proc=server.proc)
    return server, npc, port
