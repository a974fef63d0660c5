"""
Benchmark targets, each a small asyncio server on 127.0.0.1 run as its own process:

    python bench/targets.py echo PORT   # echoes every byte back (TCP_NODELAY)
    python bench/targets.py http PORT   # HTTP/1.1 keep-alive, fixed "hello" body
    python bench/targets.py source PORT # after one byte from the client, sends zeros until it closes

Prints "ready" once listening. Stops on SIGTERM/SIGINT.
"""
from __future__ import annotations

import asyncio
import resource
import signal
import sys

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 6\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
    b"hello\n"
)
CLOSE_RESPONSE = RESPONSE.replace(b"keep-alive", b"close")


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # asyncio sets TCP_NODELAY on TCP transports

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class Hello(asyncio.Protocol):
    """
    Answers every request head (up to the blank line) with a fixed response;
    requests without a body only, which is what wrk and curl send here.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        close = False
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            if b"\nconnection: close" in head.lower():
                out.append(CLOSE_RESPONSE)
                close = True
                break
            out.append(RESPONSE)
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]
        if close:
            self.transport.close()
        elif len(self.buf) > 65536:
            self.transport.close()


class Source(asyncio.Protocol):
    """Bulk sender: once the client says anything, write 1 MiB blocks while the transport takes them."""

    BLOCK = bytes(1 << 20)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.started = False
        self.paused = False

    def data_received(self, data: bytes) -> None:
        if not self.started:
            self.started = True
            self._fill()

    def _fill(self) -> None:
        while not self.paused and not self.transport.is_closing():
            self.transport.write(self.BLOCK)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._fill()


async def main(kind: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    factory = {"echo": Echo, "http": Hello, "source": Source}[kind]
    server = await loop.create_server(factory, "127.0.0.1", port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
