"""Inside pip's sandbox: relay 127.0.0.1:PORT to the egress proxy's unix socket, run pip.

    python3 -I -S FILE PORT SOCKET -- COMMAND...

pip's sandbox has its own network namespace with nothing but a loopback, and pip only
speaks to HTTP proxies over TCP. So this binds 127.0.0.1:PORT (in that namespace), forks a
relay that copies bytes between each accepted connection and a new connection to SOCKET
(the proxy's socket, bound into the sandbox), and execs COMMAND in the original process.
The relay connects to nothing but SOCKET and parses nothing: it gives code in the sandbox
no reach beyond what the proxy itself allows. The port is bound before pip starts, so
pip's first connection waits in the backlog rather than failing. When COMMAND (the
namespace's init) exits, the kernel kills the relay with everything else (outside a PID
namespace the relay notices its parent is gone within a second and exits).

Standard library only: run by the sandbox's interpreter with ``-I -S``.
"""

import os
import signal
import socket
import sys
import threading

MAX_PAIRS = 64
CHUNK = 65536
# Longer than the proxy's idle timeout: the proxy decides; this only frees stuck slots.
IDLE_SECONDS = 300.0
# How often the relay checks that pip (its parent) is still there.
PARENT_CHECK_SECONDS = 1.0


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        # One side failed: end both directions.
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve_pair(client: socket.socket, path: str, slots: threading.BoundedSemaphore) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
        for sock in (client, upstream):
            sock.settimeout(IDLE_SECONDS)
        up = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
        up.start()
        _pump(upstream, client)
        up.join()
    except OSError:
        pass
    finally:
        client.close()
        upstream.close()
        slots.release()


def _serve(listener: socket.socket, path: str, parent: int) -> None:
    slots = threading.BoundedSemaphore(MAX_PAIRS)
    # In pip's PID namespace the kernel ends the relay with pip; elsewhere this does.
    listener.settimeout(PARENT_CHECK_SECONDS)
    while os.getppid() == parent:
        try:
            client, _ = listener.accept()
        except OSError:
            continue
        client.settimeout(None)
        if not slots.acquire(blocking=False):
            client.close()
            continue
        threading.Thread(target=_serve_pair, args=(client, path, slots), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: egress_relay PORT SOCKET -- COMMAND...\n")
        return 2
    port, path, command = int(argv[0]), argv[1], argv[3:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(MAX_PAIRS)
    parent = os.getpid()
    if os.fork() == 0:
        try:
            _serve(listener, path, parent)
        finally:
            os._exit(0)
    listener.close()
    # Python ignores SIGPIPE; give the command (and the builds it runs) the default back.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.execv(command[0], command)  # noqa: S606 - the argv the daemon built, no shell
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
