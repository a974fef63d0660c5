# -*- test-case-name: test.test_fastwrite -*-
"""Write-through for plain TCP transports on the relay's hot path.

Twisted's C{transport.write} only queues; the bytes leave on the next
reactor iteration, after an epoll registration for writability.  On a relay
every hop pays that twice (one iteration to read, one to write).  When a
plain TCP transport has nothing queued we may as well try the non-blocking
C{send} right away and queue only what the kernel did not take, exactly what
the transport would have done one turn later.  Anything unusual (TLS, a
closing transport, queued data, a socket error) falls back to the normal
C{write}, so ordering and error handling stay Twisted's.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet import tcp

#: Bytes read per recv() on relayed sockets (Twisted's default is 64 KiB).
READ_SIZE = 256 * 1024


def _plain_tcp(transport: Any) -> bool:
    return isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False)


def _nothing_queued(transport: Any) -> bool:
    """True when C{transport} may send right now without reordering anything."""
    return not (transport._tempDataLen or len(transport.dataBuffer) > transport.offset
                or not transport.connected or transport.disconnecting or transport._writeDisconnecting)


def sequence_writer_for(transport: Any) -> Callable[[Sequence[bytes]], None]:
    """A C{writeSequence(buffers)} for C{transport} that sends at once (one C{sendmsg}, no join) when it can."""
    if not _plain_tcp(transport):
        return transport.writeSequence
    sock = transport.socket
    queue_sequence = transport.writeSequence

    def write_sequence(buffers: Sequence[bytes]) -> None:
        if not _nothing_queued(transport):
            queue_sequence(buffers)
            return
        try:
            sent = sock.sendmsg(buffers)
        except BlockingIOError:
            sent = 0
        except OSError:
            queue_sequence(buffers)  # Twisted reports the error on its own path
            return
        rest = []
        for buf in buffers:
            if sent >= len(buf):
                sent -= len(buf)
                continue
            rest.append(buf[sent:] if sent else buf)
            sent = 0
        if rest:
            queue_sequence(rest)

    return write_sequence


def writer_for(transport: Any) -> Callable[[bytes], None]:
    """Like L{sequence_writer_for}, for one buffer at a time (one C{send})."""
    if not _plain_tcp(transport):
        return transport.write
    sock = transport.socket
    queue = transport.write

    def write(data: bytes) -> None:
        if not _nothing_queued(transport):
            queue(data)
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            queue(data)  # Twisted reports the error on its own path
            return
        if sent < len(data):
            queue(data[sent:] if sent else data)

    return write


def enlarge_reads(transport: Any, size: int = READ_SIZE) -> None:
    """Read bigger chunks per syscall; also raises the producer-pause mark to C{size}."""
    if isinstance(transport, tcp.Connection):
        transport.bufferSize = size
