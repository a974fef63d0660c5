# -*- test-case-name: test.test_e2e_legacy_reverse,test.test_legacy_server -*-
"""Our npc against an NPS 0.26 server (C{npc -proto=0.26 -server= -vkey=}).

For users who cannot replace their Go nps yet.  L{LegacyNpcService} keeps
NPS's two connections up, the signal (C{main}) and the nps-mux tunnel
(C{chan}), reconnecting with a growing delay when either ends.  Each
stream the server opens starts with NPS's link header; we serve it with
our own mode plugins (C{tcp}, C{udp}; C{http} is served as C{tcp}),
under NPS's per-stream C{crypt} (TLS, certificate not checked, as the Go
npc does) or C{compress} (snappy).

With C{-config=npc.conf} (NPS's config-file mode) each login first runs
NPS's C{conf} conversation (L{conf_conversation}): the npc.conf's client
record (public key only), domains and tunnels go to the server, which
answers each with one byte; a public key gets a one-time vkey back, used
for the signal and tunnel connections.  Each C{file} tunnel gets its own
C{file} connection whose streams (no link header) are served from its
C{local_path}.

With C{-password=} it is a secret visitor instead: each connection to its
local port gets its own C{sert} bridge connection, relayed raw.  C{npc
register -proto=0.26} sends NPS's C{rgst}.
"""
from __future__ import annotations

import json
import random
import struct
from typing import TYPE_CHECKING, Any, Callable, Generator

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from nps.connect import connect_tcp
from nps.fatalstop import FatalStopService
from nps.legacy.crypt import SnappyCodec, TlsCodec, client_context
from nps.legacy.mux import LegacyMux, LegacyStream
from nps.protocols import legacy_handshake as lh
from nps.protocols.legacy_link import LinkError, LinkReader, from_legacy
from nps.relay import Relay, RelayFactory, tune_socket

if TYPE_CHECKING:
    from nps.config import ClientConfig

__all__ = ["LegacyNpcService", "LegacyRefused", "conf_conversation", "nps_host", "nps_task"]

HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0


class LegacyRefused(Exception):
    """The server refused us (wrong vkey) or is not an NPS 0.26 server; C{str()} says which."""


class LegacyClientProtocol(Protocol):
    """One connection to an NPS 0.26 server: handshake, work type, then signal or nps-mux."""

    log = Logger()
    transport: Any

    def __init__(self, service: "LegacyNpcService", work: bytes, vkey: str,
                 conversation: "Conversation | None" = None, on_stream: Any = None) -> None:
        self.service = service
        self.work = work
        self.vkey = vkey
        self._conversation = conversation
        self._need = 0
        self._on_stream = on_stream or service.stream_opened
        #: What the conversation returned (the vkey to use next), for C{conf}.
        self.result: Any = None
        self.ready: Deferred[LegacyClientProtocol] = Deferred()
        self.mux: LegacyMux | None = None
        self._buf = b""
        self._step = 0
        self._timer: IDelayedCall | None = None
        self._done = False
        self._finished = False

    def connectionMade(self) -> None:
        tune_socket(self.transport, keepalive=True)
        self._timer = self.service.reactor.callLater(HANDSHAKE_TIMEOUT, self._timeout)
        self.transport.write(lh.client_hello())

    def _timeout(self) -> None:
        self._timer = None
        self._fail(LegacyRefused(f"no answer to the NPS handshake in {HANDSHAKE_TIMEOUT:.0f}s"))

    def _fail(self, error: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(error)
        self.transport.loseConnection()

    #: C{sert}: the local visitor connection this bridge connection is relayed to.
    visitor: Relay | None = None
    _relay: Relay | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.mux is not None:
            self.mux.data_received(data)
            return
        if self._relay is not None:
            self._relay.dataReceived(data)
            return
        if self._done and self._conversation is None:
            return  # the signal connection: nothing we act on (p2p is not supported)
        self._buf += data
        if self._done:
            self._converse()
            return
        if self._step == 0 and len(self._buf) >= 32:
            proof, self._buf = self._buf[:32], self._buf[32:]
            if proof != lh.server_version_proof():
                self._fail(LegacyRefused("the server is not an NPS 0.26 server (version proof differs)"))
                return
            self.transport.write(lh.md5_hex(self.vkey))
            self._step = 1
        if self._step == 1 and len(self._buf) >= 4:
            answer, rest = self._buf[:4], self._buf[4:]
            self._buf = b""
            if answer != lh.ACCEPTED:
                self._fail(LegacyRefused("the server refused the vkey"))
                return
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self._done = True
            self.transport.write(self.work)
            if self.work == lh.WORK_SECRET and self.visitor is not None:
                # NPS's secret visit: the password's md5, then this connection is the raw relay.
                self.transport.write(lh.md5_hex(self.service.visitor_password))
                self._relay = RelayFactory(self.visitor).buildProtocol(None)
                self._relay.makeConnection(self.transport)
                if rest:
                    self._relay.dataReceived(rest)
                self.ready.callback(self)
                return
            if self.work in (lh.WORK_CHAN, lh.WORK_FILE):
                self.mux = LegacyMux(self.transport, self.service.reactor, name="NPS 0.26 server",
                                     on_stream=self._on_stream,
                                     ping_interval=5.0, idle_timeout=self.service.idle_timeout)
                if rest:
                    self.mux.data_received(rest)
            if self._conversation is not None:
                self._buf = rest
                self._advance(None)
                return
            self.ready.callback(self)

    def _advance(self, answer: bytes | None) -> None:
        """Run the conversation to its next read (or its end)."""
        conversation = self._conversation
        assert conversation is not None
        try:
            out, self._need = conversation.send(answer) if answer is not None else next(conversation)
        except StopIteration as stop:
            # Done: close, and report once the close (and so every byte we wrote) has gone out.
            self._conversation = None
            self.result = stop.value
            self._finished = True
            self.transport.loseConnection()
            return
        except LegacyRefused as e:
            self._conversation = None
            self._fail(e)
            return
        if out:
            self.transport.write(out)
        self._converse()

    def _converse(self) -> None:
        if self._conversation is not None and len(self._buf) >= self._need:
            answer, self._buf = self._buf[:self._need], self._buf[self._need:]
            self._advance(answer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.visitor is not None:
            if self._relay is not None:
                self._relay.connectionLost(reason)
            elif self.visitor.transport is not None:
                self.visitor.transport.loseConnection()
            if not self.ready.called:
                self.ready.errback(LegacyRefused(f"secret visit failed: {reason.getErrorMessage()}"))
            return
        if self._finished and not self.ready.called:
            self.ready.callback(self)
        if not self.ready.called:
            self.ready.errback(LegacyRefused(f"connection closed during the handshake: {reason.getErrorMessage()}"))
        if self.mux is not None:
            self.mux.connection_lost(reason.getErrorMessage())
        self.service.connection_closed(self)


class _Factory(Factory):
    noisy = False

    def __init__(self, service: "LegacyNpcService", work: bytes, vkey: str,
                 conversation: "Conversation | None" = None, on_stream: Any = None) -> None:
        self.service = service
        self.work = work
        self.vkey = vkey
        self.conversation = conversation
        self.on_stream = on_stream

    def buildProtocol(self, addr: Any) -> LegacyClientProtocol:
        return LegacyClientProtocol(self.service, self.work, self.vkey, self.conversation, self.on_stream)


class _VisitorSide(Relay):
    """A local connection of a secret visitor: one C{sert} bridge connection carries it."""

    factory: "_VisitorFactory"

    def connectionMade(self) -> None:
        super().connectionMade()
        service = self.factory.service
        bridge = _Factory(service, lh.WORK_SECRET, service.vkey)
        d = connect_tcp(service.reactor, service.host, service.port, bridge, timeout=CONNECT_TIMEOUT)

        def connected(protocol: LegacyClientProtocol) -> Deferred[LegacyClientProtocol]:
            protocol.visitor = self
            return protocol.ready

        def failed(failure: Failure) -> None:
            LegacyNpcService.log.warn("secret visit to {server} failed: {error}", server=service.server,
                                      error=failure.getErrorMessage())
            if self.transport is not None:
                self.transport.loseConnection()

        d.addCallback(connected).addErrback(failed)


class _VisitorFactory(Factory):
    noisy = False
    protocol = _VisitorSide  # type: ignore[assignment]

    def __init__(self, service: "LegacyNpcService") -> None:
        self.service = service


#: A config-file conversation: yields (bytes to send, bytes to read), gets the bytes read, returns the vkey.
Conversation = Generator[tuple[bytes, int], bytes, str]


def _nps_client(config: "ClientConfig") -> dict[str, Any]:
    common = config.common
    return {"Cnf": {"U": common.basic_username, "P": common.basic_password, "Compress": common.compress,
                    "Crypt": common.crypt},
            "Remark": common.remark, "Status": True, "RateLimit": common.rate_limit,
            "Flow": {"ExportFlow": 0, "InletFlow": 0, "FlowLimit": common.flow_limit},
            "MaxConn": common.max_conn, "WebUserName": common.web_username, "WebPassword": common.web_password,
            "ConfigConnAllow": True}


def nps_task(section: Any) -> dict[str, Any]:
    """NPS's C{file.Tunnel} record for one of our npc.conf tunnel sections."""
    from nps.accounts import parse_accounts

    accounts = None
    if section.multi_account:
        with open(section.multi_account, encoding="utf-8") as f:
            accounts = {"AccountMap": parse_accounts(f.read())}
    target = section.target_port if section.target_port else "\n".join(section.targets)
    return {"Mode": section.mode, "Ports": section.server_port, "ServerIp": section.server_ip,
            "Remark": section.name, "Password": section.password, "LocalPath": section.local_path,
            "StripPre": section.strip_pre, "TargetAddr": section.target_ip, "MultiAccount": accounts,
            "Target": {"TargetStr": target, "LocalProxy": False}, "Status": True}


def nps_host(section: Any) -> dict[str, Any]:
    """NPS's C{file.Host} record for one of our npc.conf domain sections."""
    return {"Host": section.host, "Target": {"TargetStr": "\n".join(section.targets), "LocalProxy": False},
            "HostChange": section.host_change, "Location": section.location, "Scheme": section.scheme,
            "HeaderChange": "".join(f"{name}:{value}\n" for name, value in section.headers),
            "Remark": section.name}


def _blob(flag: bytes, record: dict[str, Any]) -> bytes:
    return flag + lh.len_content(json.dumps(record, separators=(",", ":")).encode("utf-8"))


def conf_conversation(config: "ClientConfig") -> Conversation:
    """NPS's C{conf} conversation for C{config}; returns the vkey for the session that follows.

    @raise LegacyRefused: the server refused the client record, a domain or a tunnel.
    """
    is_public = (yield (b"", 1)) == b"\x01"
    vkey = config.common.vkey
    if is_public:
        if (yield (_blob(lh.CONF_CLIENT, _nps_client(config)), 1)) != b"\x01":
            raise LegacyRefused("the server refused our client record (its web_username may be taken)")
        vkey = (yield (b"", 16)).decode("ascii", "replace")
    for host in config.hosts:
        if (yield (_blob(lh.CONF_HOST, nps_host(host)), 1)) != b"\x01":
            raise LegacyRefused(f"the server refused domain [{host.name}] ({host.host}{host.location})")
    for tunnel in config.tunnels:
        if (yield (_blob(lh.CONF_TASK, nps_task(tunnel)), 1)) != b"\x01":
            raise LegacyRefused(f"the server refused tunnel [{tunnel.name}] (port {tunnel.server_port or '-'})")
    return vkey


class _LinkHeader(Protocol):
    """Reads the NPS link header at the start of a stream, then hands the stream to a mode."""

    log = Logger()

    def __init__(self, service: "LegacyNpcService", stream: LegacyStream) -> None:
        self.service = service
        self.stream = stream
        self.reader = LinkReader()

    def dataReceived(self, data: bytes) -> None:
        try:
            result = self.reader.feed(data)
            if result is None:
                return
            raw, rest = result
            link = from_legacy(raw)
        except LinkError as e:
            self.log.warn("stream {id}: bad link header from the server: {error}", id=self.stream.stream_id,
                          error=str(e))
            self.stream.reset(str(e))
            return
        self.stream.pauseProducing()
        self.stream.hold()
        self.stream.link = link
        self.service.serve(self.stream, link, rest)


class LegacyNpcService(FatalStopService):
    """Keep an NPS 0.26 session (signal + tunnel) to C{host:port} and serve its streams."""

    log = Logger()

    def __init__(self, reactor: Any, host: str, port: int, vkey: str, modes: dict[str, Any], *,
                 disconnect_timeout: int = 60, max_retry_delay: float = 30.0,
                 on_fatal: Callable[[int, str], None] | None = None,
                 config: "ClientConfig | None" = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.host = host
        self.port = port
        self.server = f"{host}:{port}"
        self.vkey = vkey
        self.modes = modes
        self.idle_timeout = max(disconnect_timeout, 1) * 5.0
        self._on_fatal = on_fatal
        self._delay = backoffPolicy(initialDelay=1.0, maxDelay=max_retry_delay, factor=2.0, jitter=random.random)
        self._failures = 0
        self._retry: IDelayedCall | None = None
        self._current: list[LegacyClientProtocol] = []
        self.connected_once = False
        self.online = False
        self.config = config
        #: C{-password=}: this npc is a secret visitor (no session; one bridge connection per local one).
        self.visitor_password = ""
        self.visitor_address = ("127.0.0.1", 2000)
        self._visitor_port: Any = None
        #: Reconnect after a lost session (npc.conf's auto_reconnection=false turns it off).
        self.auto_reconnect = not (config is not None and config.common.auto_reconnection is False)

    def privilegedStartService(self) -> None:
        """A secret visitor binds its local port now, so a taken port stops start-up with an error."""
        if self.visitor_password:
            ip, port = self.visitor_address
            self._visitor_port = self.reactor.listenTCP(port, _VisitorFactory(self), interface=ip)
            self.log.info("secret visitor: local port {ip}:{port} -> {server} (NPS 0.26 protocol)", ip=ip,
                          port=port, server=self.server)
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        if self.visitor_password:
            return
        self.log.info("npc (NPS 0.26 protocol) connecting to {server}", server=self.server)
        self._connect()

    def stopService(self) -> Any:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        for protocol in list(self._current):
            protocol.transport.loseConnection()
        if self._visitor_port is not None:
            self._visitor_port.stopListening()
            self._visitor_port = None
        return super().stopService()

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return

        vkey = [self.vkey]

        def open_one(work: bytes, conversation: "Conversation | None" = None,
                     on_stream: Any = None) -> Deferred[LegacyClientProtocol]:
            factory = _Factory(self, work, vkey[0], conversation, on_stream)
            d = connect_tcp(self.reactor, self.host, self.port, factory, timeout=CONNECT_TIMEOUT)

            def connected(protocol: LegacyClientProtocol) -> Deferred[LegacyClientProtocol]:
                if work != lh.WORK_CONFIG:
                    self._current.append(protocol)
                return protocol.ready

            return d.addCallback(connected)

        def configured(protocol: LegacyClientProtocol) -> Deferred[LegacyClientProtocol]:
            vkey[0] = str(protocol.result)
            self.log.info("npc.conf sent to {server}", server=self.server)
            return open_one(lh.WORK_MAIN)

        def signal_ready(_: Any) -> Deferred[LegacyClientProtocol]:
            return open_one(lh.WORK_CHAN)

        def chan_ready(_: Any) -> Any:
            self._failures = 0
            self.connected_once = True
            self.online = True
            self.log.info("connected to NPS 0.26 server {server}", server=self.server)
            files = [t for t in self.config.tunnels if t.mode == "file"] if self.config is not None else []
            for tunnel in files:
                link = {"mode": "file", "local_path": tunnel.local_path, "strip_pre": tunnel.strip_pre,
                        "remote": "", "tunnel": tunnel.name}
                open_one(lh.WORK_FILE, on_stream=lambda stream, link=link: self.serve(stream, dict(link), b"")
                         ).addErrback(lambda f: self.log.warn("file connection failed: {e}", e=f.getErrorMessage()))

        def failed(failure: Failure) -> None:
            message = failure.getErrorMessage()
            self.log.warn("cannot log in to {server}: {message}", server=self.server, message=message)
            if failure.check(LegacyRefused) and ("vkey" in message or "refused" in message) \
                    and not self.connected_once:
                self._fatal(1, f"{self.server}: {message}")
                return
            self._drop_all()

        if self.config is not None and (self.config.tunnels or self.config.hosts):
            first = open_one(lh.WORK_CONFIG, conf_conversation(self.config)).addCallback(configured)
        else:
            first = open_one(lh.WORK_MAIN)
        first.addCallback(signal_ready).addCallbacks(chan_ready, failed)

    def _drop_all(self) -> None:
        for protocol in list(self._current):
            protocol.transport.loseConnection()
        if not self._current:
            self._schedule_retry()

    def connection_closed(self, protocol: LegacyClientProtocol) -> None:
        if protocol.work == lh.WORK_CONFIG:
            return  # the conf conversation ends by closing; its outcome went through its Deferred
        if protocol in self._current:
            self._current.remove(protocol)
            if self.online:
                self.online = False
                self.log.warn("disconnected from NPS 0.26 server {server}", server=self.server)
                if not self.auto_reconnect:
                    self._fatal(1, "connection lost and auto_reconnection=false; stopping")
            # NPS's session is both connections: when one goes, so does the other.
            for other in list(self._current):
                other.transport.loseConnection()
        if not self._current:
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        if not self.running or self._retry is not None:
            return
        self._failures += 1
        delay = self._delay(self._failures)
        self.log.info("retrying {server} in {delay:.1f}s", server=self.server, delay=delay)
        self._retry = self.reactor.callLater(delay, self._connect)

    # -- streams -------------------------------------------------------------------------

    def stream_opened(self, stream: LegacyStream) -> None:
        stream.attach(_LinkHeader(self, stream))

    def serve(self, stream: LegacyStream, link: dict[str, Any], rest: bytes) -> None:
        """Serve C{stream} for C{link} with our mode plugin, under NPS's crypt/compress."""
        mode = self.modes.get(str(link.get("mode", "")))
        if mode is None or link["mode"] == "socks5_udp":
            self.log.warn("stream {id}: {mode} streams are not supported with -proto=0.26", id=stream.stream_id,
                          mode=link["mode"])
            stream.reset("unsupported")
            return
        codec: Any = None
        if link.get("crypt"):
            codec = TlsCodec(client_context(), server=False)
        elif link.get("compress"):
            codec = SnappyCodec()
        d = mode.serve(self.reactor, link)

        def served(protocol: Any) -> None:
            stream.reattach(protocol, codec=codec, datagrams=link.get("mode") == "udp", rest=rest)

        def failed(failure: Failure) -> None:
            self.log.info("stream to {target} for {remote} refused: {reason}", target=link.get("target"),
                          remote=link.get("remote"), reason=failure.getErrorMessage())
            stream.reset(failure.getErrorMessage())

        d.addCallbacks(served, failed)


def make_legacy_npc(reactor: Any, server: str, vkey: str, *, disconnect_timeout: int = 60,
                    on_fatal: Callable[[int, str], None] | None = None,
                    config: "ClientConfig | None" = None) -> LegacyNpcService:
    """The service C{npc -proto=0.26 -server=HOST:PORT -vkey=KEY} runs."""
    from nps.config import parse_host_port
    from nps.modes import load_modes

    host, port = parse_host_port(server)
    return LegacyNpcService(reactor, host, port, vkey, load_modes(), disconnect_timeout=disconnect_timeout,
                            on_fatal=on_fatal, config=config)


def register_conversation(hours: int) -> Conversation:
    """NPS's C{rgst}: the hours, no answer (the server closes)."""
    yield (struct.pack("<i", hours), 0)
    return ""


def register(reactor: Any, host: str, port: int, vkey: str, hours: int) -> Deferred[Any]:
    """C{npc register} against an NPS 0.26 server: fires once the request is sent and acknowledged by the close."""
    service = LegacyNpcService(reactor, host, port, vkey, {})
    factory = _Factory(service, lh.WORK_REGISTER, vkey, register_conversation(hours))
    d = connect_tcp(reactor, host, port, factory, timeout=CONNECT_TIMEOUT)
    return d.addCallback(lambda protocol: protocol.ready)


def legacy_main(args: list[str]) -> int:
    """C{npc -proto=0.26 -server=HOST:PORT -vkey=KEY [-disconnect_timeout=N] [-log_level=N]},
    C{npc -proto=0.26 -config=npc.conf}, C{npc register -proto=0.26 -server= -vkey= [-time=HOURS]}.

    @param args: the command line with Go flags already turned into C{--name=value}.
    """
    import sys

    from nps.cli.run import begin_logging, nps_log_level, run_service

    if args and args[0] == "register":
        return _register_main(args[1:])

    values = {"proto": "", "server": "", "vkey": "", "type": "tcp", "disconnect_timeout": "60", "log_level": "6",
              "config": "", "password": "", "local_type": "secret", "local_port": "2000", "local_ip": "127.0.0.1"}
    words = iter(args)
    for arg in words:
        name, equals, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in values:
            print(f"npc: {arg!r} is not supported with -proto=0.26 (it takes -server, -vkey, -config, -type=tcp, "
                  "-password, -local_type=secret, -local_port, -local_ip, -disconnect_timeout, -log_level)",
                  file=sys.stderr)
            return 2
        values[name] = value if equals else next(words, "")
    if values["proto"] != "0.26":
        print(f"npc: -proto={values['proto']!r}: the only other protocol is 0.26 (NPS 0.26 servers)",
              file=sys.stderr)
        return 2
    config = None
    if values["config"]:
        from nps.config import ConfigError, load_client_config

        try:
            config = load_client_config(values["config"])
        except ConfigError as e:
            print(f"npc: {e}", file=sys.stderr)
            return 1
        values["server"] = config.common.server_addr or values["server"]
        values["vkey"] = config.common.vkey or values["vkey"]
        values["type"] = config.common.conn_type
        values["disconnect_timeout"] = str(config.common.disconnect_timeout)
        if config.visitors:
            print("npc: warning: secret/p2p visitor sections are not supported with -proto=0.26", file=sys.stderr)
    if values["type"] != "tcp":
        print("npc: -proto=0.26 supports -type=tcp only", file=sys.stderr)
        return 2
    if not values["server"] or not values["vkey"]:
        print("npc: -proto=0.26 needs -server=HOST:PORT and -vkey=KEY", file=sys.stderr)
        return 2
    if values["password"] and values["local_type"] != "secret":
        print(f"npc: -local_type={values['local_type']!r}: only secret visitors work with -proto=0.26",
              file=sys.stderr)
        return 2
    try:
        timeout = int(values["disconnect_timeout"])
        level = int(values["log_level"])
        local_port = int(values["local_port"])
        if not 0 < local_port < 65536:
            raise ValueError(f"-local_port={local_port} is not a port number")
        from nps.config import parse_host_port
        parse_host_port(values["server"])
    except ValueError as e:
        print(f"npc: {e}", file=sys.stderr)
        return 2
    begin_logging(nps_log_level(level), sys.stdout)

    def build(reactor: Any, on_fatal: Callable[[int, str], None]) -> LegacyNpcService:
        service = make_legacy_npc(reactor, values["server"], values["vkey"], disconnect_timeout=timeout,
                                  on_fatal=on_fatal, config=config)
        service.visitor_password = values["password"]
        service.visitor_address = (values["local_ip"], local_port)
        return service

    return run_service(build, "npc")


def _register_main(args: list[str]) -> int:
    import sys

    from nps.cli.registering import read_register_flags, run_registration
    from nps.config import parse_host_port

    values = {"proto": "", "server": "", "vkey": "", "time": "2"}
    if not read_register_flags(args, values, "npc register -proto=0.26"):
        return 2
    try:
        host, port = parse_host_port(values["server"])
        hours = int(values["time"])
        if not values["vkey"] or not 0 < hours <= lh.MAX_REGISTER_HOURS:
            raise ValueError(f"needs -vkey and -time between 1 and {lh.MAX_REGISTER_HOURS} hours")
    except ValueError as e:
        print(f"npc: register -proto=0.26: {e}", file=sys.stderr)
        return 2
    return run_registration(values["server"], lambda reactor: register(reactor, host, port, values["vkey"], hours),
                            lambda _: f"npc: this address is registered on {values['server']} for {hours} hours")
