# -*- test-case-name: test.test_metrics -*-
"""
The debug listener of C{nps} (C{pprof_ip}/C{pprof_port}) and C{npc} (C{pprof_addr}).

It serves two pages over plain HTTP, on a loopback address only:

  - C{/metrics}: the service's Prometheus registry (L{nps.metrics});
  - C{/debug}: JSON with the sessions, their streams (buffered bytes and flow
    control windows), the tunnels and their counters, and the reactor's lag.

Other addresses are refused with an error in the log: these pages show
client addresses and traffic and have no authentication.  Reach them from
elsewhere through an SSH tunnel.
"""
from __future__ import annotations

import ipaddress
import json
import time
from typing import TYPE_CHECKING, Any, Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from nps import __version__
from nps.config import format_host_port, parse_host_port
from nps.model import describe_link

if TYPE_CHECKING:
    from nps.client import NpcService
    from nps.server import NpsServer

__all__ = ["LAG_INTERVAL", "ReactorLag", "DebugService", "loopback_endpoint", "attach_server_debug",
           "attach_client_debug"]

#: Seconds between the reactor-lag probe's calls.
LAG_INTERVAL = 0.5

log = Logger(namespace="nps.debug")


def loopback_endpoint(host: str, port: int) -> str | None:
    """
    The endpoint string to listen on C{host:port}, if C{host} is a loopback address.

    @param host: an IP literal (IPv6 without brackets) or C{localhost}.
    @param port: the TCP port.
    @return: e.g. C{"tcp:9999:interface=127.0.0.1"}, or C{None} if C{host}
        is not a loopback address.
    """
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not address.is_loopback:
        return None
    if address.version == 6:
        return f"tcp6:{port}:interface={str(address).replace(':', chr(92) + ':')}"
    return f"tcp:{port}:interface={address}"


class ReactorLag(Service):
    """
    How late the reactor runs timed calls: a L{LoopingCall} every
    L{LAG_INTERVAL} seconds compares when it was due with when it ran.

    @ivar last: lag of the latest call, in seconds.
    @ivar max: the largest lag seen since start.
    @ivar samples: calls measured.
    """

    def __init__(self, clock: Any, interval: float = LAG_INTERVAL) -> None:
        self._clock = clock
        self.interval = interval
        self.last = 0.0
        self.max = 0.0
        self.samples = 0
        self._due: float | None = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)
        self._due = self._loop.starttime + self.interval if self._loop.starttime is not None else None

    def stopService(self) -> Any:
        if self._loop.running:
            self._loop.stop()
        return super().stopService()

    def _tick(self) -> None:
        now = self._clock.seconds()
        if self._due is not None:
            self.last = max(0.0, now - self._due)
            self.max = max(self.max, self.last)
            self.samples += 1
        # LoopingCall schedules its next call on its start time's grid (skipping
        # missed ones), from the time at which this call returns.
        start = self._loop.starttime
        if start is not None:
            self._due = now + self.interval - ((now - start) % self.interval)

    def as_dict(self) -> dict[str, Any]:
        return {"last_seconds": round(self.last, 6), "max_seconds": round(self.max, 6),
                "interval_seconds": self.interval, "samples": self.samples}


class MetricsPage(Resource):
    """
    C{/metrics}: the registry in Prometheus' text format (OpenMetrics if asked).

    Unlike C{prometheus_client.twisted.MetricsResource}, which renders in the
    reactor's thread pool, this renders in the reactor thread: the collectors
    read the services' dicts, which only the reactor thread may touch.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Any) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return bytes(encoder(self._registry))


class DebugPage(Resource):
    """C{/debug}: the JSON from C{snapshot()}."""

    isLeaf = True

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._snapshot = snapshot

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._snapshot(), indent=2, default=str).encode("utf-8") + b"\n"


class _QuietSite(Site):
    """No access-log line per request (a scraper calls every few seconds)."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class DebugService(MultiService):
    """
    The debug listener: an HTTP site on C{endpoint} with C{/metrics} and
    C{/debug}, plus the L{ReactorLag} probe whose figures C{/debug} shows.

    @ivar lag: the probe.
    @ivar listener: the L{strports.service} (its C{_waitingForPort} fires
        with the port once listening).
    """

    def __init__(self, reactor: Any, endpoint: str, registry: CollectorRegistry,
                 snapshot: Callable[[], dict[str, Any]], what: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self._what = what
        self.lag = ReactorLag(reactor)
        self.lag.setServiceParent(self)
        root = Resource()
        root.putChild(b"metrics", MetricsPage(registry))
        root.putChild(b"debug", DebugPage(lambda: dict(snapshot(), reactor_lag=self.lag.as_dict())))
        self.listener = strports.service(endpoint, _QuietSite(root), reactor=reactor)
        self.listener.setServiceParent(self)

    def startService(self) -> None:
        super().startService()  # binds (if privilegedStartService has not); a busy port stops start-up
        log.info("{what}: /metrics and /debug on {endpoint}", what=self._what, endpoint=self.endpoint)


def attach_server_debug(server: "NpsServer") -> DebugService | None:
    """
    Add the debug listener to C{server} if nps.conf sets C{pprof_port}.

    C{pprof_ip} defaults to 127.0.0.1; a non-loopback one is refused with an
    error in the log, and the server runs without the listener.
    """
    config = server.config
    if not config.pprof_port:
        return None
    host = config.pprof_ip or "127.0.0.1"
    endpoint = loopback_endpoint(host, config.pprof_port)
    if endpoint is None:
        log.error("pprof_ip={ip}: the debug listener serves loopback addresses only (127.0.0.1, ::1); "
                  "not serving /metrics and /debug", ip=host)
        return None
    service = DebugService(server.reactor, endpoint, server.stats.registry,
                           lambda: server_snapshot(server), "nps debug listener")
    service.setServiceParent(server)
    return service


def attach_client_debug(client: "NpcService", address: str) -> DebugService | None:
    """
    Add the debug listener to C{client} if C{address} (npc.conf C{pprof_addr}) is set.

    @param address: C{host:port}; a non-loopback host is refused with an
        error in the log.
    """
    if not address:
        return None
    try:
        host, port = parse_host_port(address)
    except ValueError as e:
        log.error("pprof_addr={addr}: {error}; not serving /metrics and /debug", addr=address, error=str(e))
        return None
    endpoint = loopback_endpoint(host, port)
    if endpoint is None:
        log.error("pprof_addr={addr}: the debug listener serves loopback addresses only (127.0.0.1, ::1); "
                  "not serving /metrics and /debug", addr=address)
        return None
    service = DebugService(client.reactor, endpoint, client.stats.registry,
                           lambda: client_snapshot(client), "npc debug listener")
    service.setServiceParent(client)
    return service


# -- what /debug shows ------------------------------------------------------------


def stream_info(stream: Any) -> dict[str, Any]:
    """
    One mux stream: what it is for, bytes it holds each way and its windows.

    C{buffered_in}: received, not yet taken by its protocol; C{buffered_out}:
    written, waiting for send window.  Reads L{nps.mux.MuxStream} internals.
    """
    link = stream.link
    inbuf = getattr(stream, "_inbuf", None)
    return {
        "id": stream.stream_id,
        "mode": link.get("mode"),
        "target": describe_link(link),
        "remote": link.get("remote"),
        "buffered_in": sum(len(chunk) for chunk in inbuf) if inbuf else 0,
        "buffered_out": getattr(stream, "_outbuf_size", 0),
        "send_window": getattr(stream, "_send_window", None),
        "recv_window": getattr(stream, "_recv_window", None),
        "recv_credit_left": getattr(stream, "_recv_left", None),
        "reading_paused": getattr(stream, "_read_paused", None),
    }


def mux_info(mux: Any) -> dict[str, Any]:
    """A session's mux: round trip and open streams."""
    if mux is None:
        return {"rtt_seconds": None, "open_streams": 0, "streams": []}
    streams = [stream_info(s) for _, s in sorted(getattr(mux, "_streams", {}).items())]
    return {"rtt_seconds": mux.rtt, "open_streams": mux.stream_count, "streams": streams}


def server_snapshot(server: "NpsServer") -> dict[str, Any]:
    """The JSON of nps's C{/debug} (without the reactor lag, which L{DebugService} adds)."""
    now = time.time()
    sessions = []
    for client_id, session in sorted(server.sessions.items()):
        counter = server.client_counters.get(client_id)
        sessions.append(dict(
            {"client_id": client_id, "remark": session.remark, "remote": session.remote,
             "version": session.version, "public": session.public,
             "connected_seconds": round(now - session.started, 3),
             "config_tunnels": list(session.config_tunnels),
             "traffic": _counter(counter),
             # rate_limit/flow_limit/max_conn in force, and why new connections are refused now.
             "limits": server.client_limits(client_id),
             "limit_reached": server.limit_reached(client_id),
             "rate_limited_streams": server.limiters[client_id].waiting if client_id in server.limiters else 0},
            **mux_info(session.mux)))
    tunnels = []
    for tunnel_id, running in sorted(server.tunnels.items()):
        tunnel = running.tunnel
        tunnels.append({"id": tunnel_id, "client_id": tunnel.client_id, "mode": tunnel.mode,
                        "remark": tunnel.remark, "listen": format_host_port(tunnel.server_ip, tunnel.server_port),
                        "targets": list(tunnel.targets), "listening": running.port is not None,
                        "traffic": _counter(running.counter)})
    return {"service": "nps", "version": __version__, "sessions": sessions, "tunnels": tunnels}


def client_snapshot(client: "NpcService") -> dict[str, Any]:
    """The JSON of npc's C{/debug} (without the reactor lag)."""
    current = client.current
    session: dict[str, Any] | None = None
    if current is not None:
        welcome = current.welcome
        session = dict({"client_id": welcome.get("client_id"), "server_version": welcome.get("server_version")},
                       **mux_info(current.mux))
    return {"service": "npc", "version": __version__, "server": client.server,
            "connected": session is not None, "session": session,
            "tunnels": [t.remark for t in client.tunnels],
            "p2p": client.p2p.snapshot() if getattr(client, "p2p", None) is not None else []}


def _counter(counter: Any) -> dict[str, int]:
    if counter is None:
        return {"bytes_in": 0, "bytes_out": 0, "connections": 0}
    return {"bytes_in": counter.bytes_in, "bytes_out": counter.bytes_out, "connections": counter.connections}
