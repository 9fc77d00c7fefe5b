"""How pip reaches the egress proxy: what pip's sandbox gets for one install (pure data).

With a network namespace (the bwrap levels) pip's sandbox has nothing but a loopback of its
own. The proxy listens on a unix socket, bound read-only at :data:`PROXY_SOCKET_MOUNT`.
pip only speaks to proxies over TCP, so the sandbox's command is the relay
(``bootstrap/egress_relay.py``): it listens on 127.0.0.1::data:`RELAY_PORT` inside the
namespace, forwards each connection to that socket, and execs pip with ``--proxy`` on that
port. The relay reaches the sandbox as a read-only data file at :data:`RELAY_PATH` (bwrap
``--ro-bind-data``: no ``-c`` source on any command line, nothing of the package bound,
no /proc needed), compiled for the sandbox's interpreter when it is the daemon's.

Without namespaces (the ``landlock`` and ``none`` levels) the proxy listens on loopback TCP
instead, with a per-install password: any local process can dial loopback. At the
``landlock`` level pip may connect to that one port only (Landlock); see docs/SECURITY.md
for what that level leaves open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from ...bootstraps import compiled_python
from ...bwrap import Mount

RELAY_SOURCE = resources.files("sandbox_executor.bootstrap").joinpath("egress_relay.py").read_bytes()
RELAY_PORT = 3128
RELAY_PATH = "/run/egress-relay"
PROXY_SOCKET_MOUNT = "/run/egress-proxy.sock"


@dataclass(frozen=True)
class Route:
    """pip's way to its proxy for one install."""

    # pip's --proxy, and http(s)_proxy for what a build step fetches itself.
    proxy_url: str
    # Bound into pip's sandbox (the proxy's socket).
    mounts: tuple[Mount, ...] = ()
    # The command runs behind the relay (the bwrap levels).
    relay: bool = False
    # The proxy's loopback TCP port (no namespaces): the only port pip may connect to.
    tcp_port: int | None = None

    def environment(self) -> list[tuple[str, str]]:
        """Proxy variables for build steps that fetch on their own (urllib, setup_requires):
        the same proxy, the same policy."""
        return [(name, self.proxy_url) for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")]


def socket_route(host_socket: str) -> Route:
    """Through the relay to the proxy's unix socket (pip has a network namespace)."""
    return Route(
        proxy_url=f"http://127.0.0.1:{RELAY_PORT}",
        mounts=(Mount("ro-bind", host_socket, PROXY_SOCKET_MOUNT),),  # read-only suffices to connect
        relay=True,
    )


def loopback_route(port: int, token: str) -> Route:
    """Straight to the proxy's loopback port, with the install's password (letters/digits)."""
    return Route(proxy_url=f"http://pip:{token}@127.0.0.1:{port}", tcp_port=port)


def relay_command(python: str, command: Sequence[str]) -> list[str]:
    """``command`` run behind the relay (the relay binds first, then execs it)."""
    return [python, "-I", "-S", RELAY_PATH, str(RELAY_PORT), PROXY_SOCKET_MOUNT, "--", *command]


def relay_program(python: str) -> bytes:
    """What :data:`RELAY_PATH` holds for ``python``."""
    return compiled_python(RELAY_SOURCE, python, "<egress-relay>")
