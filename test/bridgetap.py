"""
A recording TCP forwarder for tests: put it between npc and nps's bridge
port to see (and count) every byte that crosses the bridge.

    tap = BridgeTap(("127.0.0.1", server.bridge_port)).start()
    npc ... -server=127.0.0.1:{tap.port}
    ...
    assert marker not in tap.captured()
    tap.stop()

Threads, plain sockets, loopback only; every loop ends when the tap stops.
"""
from __future__ import annotations

import select
import socket
import threading


class BridgeTap:
    """Forwards connections on C{127.0.0.1:port} to C{target}, keeping a copy of all bytes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._up = bytearray()  # npc -> nps
        self._down = bytearray()  # nps -> npc
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self.connections = 0

    def start(self) -> "BridgeTap":
        thread = threading.Thread(target=self._accept_loop, name="bridge-tap", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.2)
            if not ready:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            self.connections += 1
            self._sockets += [client, server]
            for src, dst, record in ((client, server, self._up), (server, client, self._down)):
                thread = threading.Thread(target=self._pump, args=(src, dst, record), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select([src], [], [], 0.2)
                if not ready:
                    continue
                data = src.recv(1 << 18)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self._lock:
                record += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def captured(self) -> bytes:
        """Everything seen so far, both directions."""
        with self._lock:
            return bytes(self._up) + bytes(self._down)

    @property
    def total(self) -> int:
        """Bytes seen so far, both directions."""
        with self._lock:
            return len(self._up) + len(self._down)

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=2)
