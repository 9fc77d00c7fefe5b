"""How pip reaches the egress proxy: the pieces the pip sandbox's builder adds.

With a network namespace (the bwrap levels) pip's sandbox has only its own loopback. The
proxy's unix socket is bound read-only at :data:`PROXY_SOCKET_MOUNT`, the sandbox's
command is wrapped by :func:`relay_command` (``bootstrap/egress_relay.py``: 127.0.0.1:
:data:`RELAY_PORT` -> that socket, then exec pip) and pip gets ``--proxy``
:func:`relay_proxy_url`. bwrap must *not* get ``--share-net``.

Without namespaces (the ``landlock`` level) the proxy also listens on loopback TCP; pip
gets :func:`loopback_proxy_url` (a per-install password, since any local process can dial
loopback) and its process may connect to that one TCP port only (Landlock); see
``docs/SECURITY.md`` and the egress notes for what that level leaves open.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

from .bwrap import Mount

RELAY_SOURCE = resources.files("sandbox_executor.bootstrap").joinpath("egress_relay.py").read_text("utf-8")
RELAY_PORT = 3128
PROXY_SOCKET_MOUNT = "/run/egress-proxy.sock"


def proxy_socket_mount(host_socket: str) -> Mount:
    """The proxy's socket inside pip's sandbox (read-only is enough to connect)."""
    return Mount("ro-bind", host_socket, PROXY_SOCKET_MOUNT)


def relay_command(python: str, command: Sequence[str], port: int = RELAY_PORT) -> list[str]:
    """``command`` run behind the relay (the relay binds first, then execs it)."""
    return [python, "-I", "-S", "-c", RELAY_SOURCE, str(port), PROXY_SOCKET_MOUNT, "--", *command]


def relay_proxy_url(port: int = RELAY_PORT) -> str:
    return f"http://127.0.0.1:{port}"


def loopback_proxy_url(port: int, token: str) -> str:
    """pip's ``--proxy`` for the proxy's loopback TCP listener (token: letters/digits)."""
    return f"http://pip:{token}@127.0.0.1:{port}"
