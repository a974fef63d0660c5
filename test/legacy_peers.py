"""The Go NPS 0.26.10 binaries from /work/shared/peers, for the legacy tests and the benchmark.

The Go nps has no config-path flag: it reads C{<dir of argv[0]>/conf/nps.conf}
and its C{clients.json}/C{tasks.json}/C{hosts.json} (records separated by
C{"\\n*#*"}).  L{GoNps} lays out such a directory with a symlink to the
binary and starts it from there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]

def _peers_dir() -> Path:
    """$NPS_PEERS_DIR, else shared/peers beside the checkout (as CI lays it out), else /work/shared/peers."""
    if os.environ.get("NPS_PEERS_DIR"):
        return Path(os.environ["NPS_PEERS_DIR"])
    beside = Path(__file__).resolve().parent.parent.parent / "shared" / "peers"
    return beside if beside.is_dir() else Path("/work/shared/peers")


PEERS = _peers_dir()
GO_NPC = PEERS / "npc-0.26.10"
GO_NPS = PEERS / "nps-0.26.10"


def missing(binary: Path) -> str | None:
    """Why C{binary} cannot be used (None if it can)."""
    if not os.access(binary, os.X_OK):
        return f"the Go NPS binary {binary.name} is not at {binary} (see /work/shared/peers/README.md)"
    if Path("/etc/nps").exists() and binary == GO_NPS:
        return "/etc/nps exists: the Go nps would read its config from there instead of the test's"
    return None


def _client(client_id: int, vkey: str, crypt: bool = False, compress: bool = False,
            rate_limit: int = 0) -> dict[str, Any]:
    return {"Cnf": {"U": "", "P": "", "Compress": compress, "Crypt": crypt}, "Id": client_id, "VerifyKey": vkey,
            "Addr": "", "Remark": f"c{client_id}", "Status": True, "IsConnect": False, "RateLimit": rate_limit,
            "Flow": {"ExportFlow": 0, "InletFlow": 0, "FlowLimit": 0}, "NoStore": False, "NoDisplay": False,
            "MaxConn": 0, "NowConn": 0, "WebUserName": "", "WebPassword": "", "ConfigConnAllow": True,
            "MaxTunnelNum": 0, "Version": ""}


class GoNps:
    """A Go nps 0.26.10 in its own directory: C{add_client}, C{add_tunnel}, then C{start}."""

    def __init__(self, workdir: Path, public_vkey: str = "") -> None:
        self.dir = Path(workdir)
        (self.dir / "conf").mkdir(parents=True, exist_ok=True)
        link = self.dir / "nps"
        if not link.exists():
            link.symlink_to(GO_NPS)
        self.bridge_port = support.free_port()
        self.public_vkey = public_vkey
        self.clients: dict[int, dict[str, Any]] = {}
        self.tasks: list[dict[str, Any]] = []
        #: More nps.conf lines (e.g. C{{"ip_limit": "true"}}).
        self.extra: dict[str, str] = {}
        self.proc: Any = None

    @property
    def bridge_addr(self) -> str:
        return f"127.0.0.1:{self.bridge_port}"

    def add_client(self, vkey: str, *, crypt: bool = False, compress: bool = False, rate_limit: int = 0) -> int:
        """A client record; C{rate_limit} in KB/s (0 means NPS's default 16 MiB/s bucket)."""
        client_id = len(self.clients) + 1
        self.clients[client_id] = _client(client_id, vkey, crypt, compress, rate_limit)
        return client_id

    def add_tunnel(self, client_id: int, port: int, target: str, mode: str = "tcp", password: str = "") -> None:
        self.tasks.append({
            "Id": len(self.tasks) + 1, "Port": port, "ServerIp": "127.0.0.1", "Mode": mode, "Status": True,
            "RunStatus": False, "Client": self.clients[client_id], "Ports": str(port),
            "Flow": {"ExportFlow": 0, "InletFlow": 0, "FlowLimit": 0}, "Password": password,
            "Remark": f"t{len(self.tasks) + 1}", "TargetAddr": "", "NoStore": False, "LocalPath": "",
            "StripPre": "", "Target": {"TargetStr": target, "TargetArr": None, "LocalProxy": False},
            "MultiAccount": None})

    def write(self) -> None:
        conf = self.dir / "conf"
        (conf / "nps.conf").write_text(
            "appname = nps\nrunmode = dev\nbridge_type=tcp\n"
            f"bridge_port={self.bridge_port}\nbridge_ip=127.0.0.1\npublic_vkey={self.public_vkey}\n"
            "log_level=7\nhttp_proxy_port=\nhttps_proxy_port=\nweb_port=\ndisconnect_timeout=60\n"
            + "".join(f"{key}={value}\n" for key, value in self.extra.items()))
        (conf / "clients.json").write_text("".join(json.dumps(c) + "\n*#*" for c in self.clients.values()))
        (conf / "tasks.json").write_text("".join(json.dumps(t) + "\n*#*" for t in self.tasks))
        (conf / "hosts.json").write_text("")

    def start(self) -> "GoNps":
        self.write()
        self.proc = support.Proc([str(self.dir / "nps")], self.dir / "nps.log", cwd=self.dir, name="go-nps")
        support.wait_for_port("127.0.0.1", self.bridge_port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def restart(self) -> None:
        self.stop()
        self.start()
