"""Network namespaces for NAT tests: a server, two NAT routers (iptables MASQUERADE) and a peer behind each.

Everything is made with unique names per run and removed by L{Topology.destroy}
(call it in a finalizer). Addresses are private and exist only inside the
namespaces this module created.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from typing import Sequence


class Unavailable(Exception):
    """The machine cannot build namespaces (not root, no ip or iptables)."""


def check() -> None:
    """Raise L{Unavailable} with a reason when namespaces with NAT cannot be built here."""
    if os.geteuid() != 0:
        raise Unavailable("network namespaces need root")
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool!r} is not installed (apt-get install iproute2 iptables)")
    probe = f"npsprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        raise Unavailable(f"ip netns add failed: {made.stderr.strip()}")
    try:
        nat = subprocess.run(["ip", "netns", "exec", probe, "iptables", "-t", "nat", "-L", "-n"],
                             capture_output=True, text=True)
        if nat.returncode != 0:
            raise Unavailable(f"iptables nat table unusable: {nat.stderr.strip()}")
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)


def _run(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


class Topology:
    """
    srv (10.N.0.1 towards natA, 10.N.1.1 towards natB; routes between them)
    natA (wan 10.N.0.2, lan 192.168.N.1) -- peerA 192.168.N.2
    natB (wan 10.N.1.2, lan 192.168.M.1) -- peerB 192.168.M.2

    @param random_fully: MASQUERADE --random-fully on both NATs (a symmetric,
        endpoint-dependent mapping); otherwise Linux keeps the source port
        (endpoint-independent mapping).
    """

    def __init__(self, random_fully: bool = False) -> None:
        tag = secrets.token_hex(3)
        self.names = {role: f"n{tag}{role}" for role in ("srv", "natA", "natB", "peerA", "peerB")}
        net = 16 + secrets.randbelow(200)
        self.net = net
        self.server_ip = f"10.{net}.0.1"
        self.peer_a = f"192.168.{net}.2"
        self.peer_b = f"192.168.{net + 1}.2"
        self.random_fully = random_fully
        self._tag = tag
        self._made: list[str] = []

    def ns(self, role: str) -> str:
        return self.names[role]

    def exec(self, role: str, argv: Sequence[str]) -> list[str]:
        """argv run inside namespace C{role}."""
        return ["ip", "netns", "exec", self.names[role], *argv]

    def run(self, role: str, *argv: str) -> str:
        return _run(*self.exec(role, argv))

    def _link(self, a: str, ifa: str, b: str, ifb: str) -> None:
        _run("ip", "link", "add", ifa, "netns", self.names[a], "type", "veth", "peer", "name", ifb,
             "netns", self.names[b])

    def build(self) -> "Topology":
        for name in self.names.values():
            _run("ip", "netns", "add", name)
            self._made.append(name)
        n = self.net
        t = self._tag
        self._link("srv", f"sa{t}", "natA", f"aw{t}")
        self._link("srv", f"sb{t}", "natB", f"bw{t}")
        self._link("natA", f"al{t}", "peerA", f"pa{t}")
        self._link("natB", f"bl{t}", "peerB", f"pb{t}")
        plan = [
            ("srv", f"sa{t}", f"10.{n}.0.1/24"), ("srv", f"sb{t}", f"10.{n}.1.1/24"),
            ("natA", f"aw{t}", f"10.{n}.0.2/24"), ("natA", f"al{t}", f"192.168.{n}.1/24"),
            ("natB", f"bw{t}", f"10.{n}.1.2/24"), ("natB", f"bl{t}", f"192.168.{n + 1}.1/24"),
            ("peerA", f"pa{t}", f"192.168.{n}.2/24"), ("peerB", f"pb{t}", f"192.168.{n + 1}.2/24"),
        ]
        for role, ifname, address in plan:
            self.run(role, "ip", "addr", "add", address, "dev", ifname)
            self.run(role, "ip", "link", "set", ifname, "up")
        for role in self.names:
            self.run(role, "ip", "link", "set", "lo", "up")
        for role in ("srv", "natA", "natB"):
            self.run(role, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        self.run("natA", "ip", "route", "add", "default", "via", f"10.{n}.0.1")
        self.run("natB", "ip", "route", "add", "default", "via", f"10.{n}.1.1")
        self.run("peerA", "ip", "route", "add", "default", "via", f"192.168.{n}.1")
        self.run("peerB", "ip", "route", "add", "default", "via", f"192.168.{n + 1}.1")
        for role, wan in (("natA", f"aw{t}"), ("natB", f"bw{t}")):
            rule = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE"]
            if self.random_fully:
                rule.append("--random-fully")
            self.run(role, *rule)
        # Count what reaches the server's own sockets (not what it forwards between the NATs).
        self.run("srv", "iptables", "-A", "INPUT", "-j", "ACCEPT")
        return self

    def server_input_bytes(self) -> int:
        """Bytes delivered to sockets in the server namespace so far (iptables INPUT counter)."""
        out = self.run("srv", "iptables", "-nvx", "-L", "INPUT")
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "ACCEPT":
                return int(fields[1])
        raise RuntimeError(f"no INPUT counter in:\n{out}")

    def destroy(self) -> None:
        """Remove every namespace this topology made (their veths go with them)."""
        for name in reversed(self._made):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:  # only processes started inside our own namespace
                try:
                    os.kill(int(pid), 9)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._made.clear()
