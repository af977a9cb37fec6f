"""A TCP proxy on 127.0.0.1 for fault tests: forwards to a server until switched to refuse.

Put between a client and a server (the S3 test server), it forwards every connection byte for
byte. :meth:`TcpProxy.refuse` makes it behave like a server that went away: the open connections
are reset, and each new connection is accepted and reset at once and counted in
:attr:`TcpProxy.refused`, so a test can wait for the event "the client met the outage" instead of
guessing a delay. :meth:`TcpProxy.forward` restores service. Threads only; stopped by
:meth:`TcpProxy.stop` (or leaving the ``with`` block).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, as a dead server's host


def _reset(sock: socket.socket) -> None:
    """Abort ``sock``: wake a thread blocked reading it, then close it with a reset."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class TcpProxy:
    """Forward ``127.0.0.1:port`` to ``target_host:target_port`` until told to refuse.

    Attributes:
        port: where the proxy listens (on 127.0.0.1).
        refused: connections accepted and reset while refusing (attempts that met the outage).
        forwarded: connections forwarded to the target.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.refused = 0
        self.forwarded = 0
        self._refusing = False
        self._stopped = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._acceptor = threading.Thread(target=self._accept_loop, name="tcpproxy-accept",
                                          daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def refuse(self) -> None:
        """Reset every open connection and every new one until :meth:`forward`."""
        with self._lock:
            self._refusing = True
            sockets, self._open = self._open, set()
        for sock in sockets:
            _reset(sock)

    def forward(self) -> None:
        """Forward new connections to the target again."""
        with self._lock:
            self._refusing = False

    def stop(self) -> None:
        """Stop accepting, reset the open connections and wait for the accepting thread."""
        self._stopped = True
        self.refuse()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._acceptor.join(10)

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing or self._stopped
                if refusing:
                    self.refused += 1
            if refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self.forwarded += 1
                self._open.update((client, upstream))
            pair = [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, pair),
                                 name="tcpproxy-pump", daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pair: list) -> None:
        """Copy ``source`` to ``sink`` until it ends; the second pump of ``pair`` to end closes it.

        ``pair`` is ``[client, upstream]``; each pump removes its source from it when done.
        """
        clean = True
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
        except OSError:
            clean = False
        with self._lock:
            pair.remove(source)
            last = not pair
            if last or not clean:
                self._open.difference_update((source, sink))
        if not clean:
            _reset(source)
            _reset(sink)
        elif last:  # both directions ended: a plain close keeps what is still queued
            source.close()
            sink.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
