# -*- test-case-name: test.test_iplimit -*-
"""C{npc register -server=H:P -vkey=K -time=HOURS}: register this machine's address for C{ip_limit}.

With C{ip_limit=true} in nps.conf, a tunnel's public ports only serve
source addresses registered in the last C{-time} hours.  This connects to
the bridge with the client's vkey (the same proof as npc, role
C{register}, so the client's running npc session is not replaced), sends
the control message C{{"type": "register_ip", "hours": N}} and waits for the
server's C{{"type": "ip_registered", ...}} answer.  The server records the
address it sees the connection come from.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from nps import PROTOCOL_VERSION, __version__
from nps.connect import connect_tcp
from nps.mux import Mux, MuxStream
from nps.protocols.handshake import ClientHandshake, HandshakeError

__all__ = ["RegisterFailed", "RegisterProtocol", "register"]

#: Seconds for the whole exchange (connect, handshake, answer).
REGISTER_TIMEOUT = 15.0


class RegisterFailed(Exception):
    """The server refused, or did not answer; C{str()} says why."""


class RegisterProtocol(Protocol):
    """One C{npc register} connection; C{done} fires with the server's answer."""

    transport: Any

    def __init__(self, reactor: Any, vkey: str, hours: float) -> None:
        self._reactor = reactor
        self._hours = hours
        self._handshake: ClientHandshake | None = ClientHandshake(
            vkey, PROTOCOL_VERSION, {"version": __version__, "remark": "npc register", "role": "register"})
        self.mux: Mux | None = None
        self.done: Deferred[dict[str, Any]] = Deferred()

    def connectionMade(self) -> None:
        assert self._handshake is not None
        self.transport.write(self._handshake.hello())

    def dataReceived(self, data: bytes) -> None:
        if self.mux is not None:
            self.mux.data_received(data)
            return
        if self._handshake is None:
            return
        try:
            out, result = self._handshake.feed(data)
        except HandshakeError as e:
            self._finish(RegisterFailed(f"the server refused us: {e}"))
            return
        if out:
            self.transport.write(out)
        if result is None:
            return
        self._handshake = None
        self.mux = Mux(self.transport, self._reactor, is_client=True, on_stream=self._no_streams,
                       on_control=self._control, ping_interval=0, idle_timeout=REGISTER_TIMEOUT,
                       name="server")
        self.mux.send_control({"type": "register_ip", "hours": self._hours})
        if result.rest:
            self.mux.data_received(result.rest)

    def _no_streams(self, stream: MuxStream) -> None:
        stream.mux.refuse_stream(stream, "npc register serves no tunnels")

    def _control(self, message: dict[str, Any]) -> None:
        if message.get("type") != "ip_registered":
            return
        if message.get("ok") is True:
            self._finish(message)
        else:
            self._finish(RegisterFailed(str(message.get("error", "refused"))[:500]))

    def _finish(self, result: dict[str, Any] | Exception) -> None:
        if not self.done.called:
            if isinstance(result, Exception):
                self.done.errback(result)
            else:
                self.done.callback(result)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.mux is not None:
            self.mux.connection_lost(reason.getErrorMessage())
        if not self.done.called:
            self.done.errback(RegisterFailed(f"the server closed the connection: {reason.getErrorMessage()}"))


def register(reactor: Any, host: str, port: int, vkey: str, hours: float,
             timeout: float = REGISTER_TIMEOUT) -> Deferred[dict[str, Any]]:
    """
    Register the address this host reaches C{host:port} from.

    @return: fires with the server's answer (C{ip}, C{hours}, C{expires},
        C{ip_limit}), or fails with L{RegisterFailed} or a connection error.
    """
    protocol = RegisterProtocol(reactor, vkey, hours)
    connected = connect_tcp(reactor, host, port, _single(protocol), timeout=timeout)

    def fail(error: Failure | Exception) -> None:
        if not protocol.done.called:
            protocol.done.errback(error)

    connected.addErrback(fail)
    timer = reactor.callLater(timeout, fail, RegisterFailed(f"no answer from {host}:{port} in {timeout:.0f}s"))

    def stop_timer(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if protocol.transport is not None:
            protocol.transport.loseConnection()
        return result

    return protocol.done.addBoth(stop_timer)


def _single(protocol: Protocol) -> Any:
    from twisted.internet.protocol import Factory

    factory = Factory()
    factory.noisy = False
    factory.buildProtocol = lambda addr: protocol  # type: ignore[method-assign]
    return factory
