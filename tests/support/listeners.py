"""TCP listeners on loopback that record whether anything connected (and optionally echo)."""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class RecordingListener:
    """Accepts on ``host``:0 in a thread; ``connections`` counts every accepted connection.

    With ``echo`` each connection gets back what it sends (a stand-in upstream for
    tunnels); otherwise it is closed at once.
    """

    def __init__(self, host: str = "127.0.0.1", *, echo: bool = False) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.echo = echo
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            if self.echo:
                threading.Thread(target=self._echo, args=(conn,), daemon=True).start()
            else:
                conn.close()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def count(self) -> int:
        with self._lock:
            return self.connections

    def __enter__(self) -> RecordingListener:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(5)
