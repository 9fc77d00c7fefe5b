"""The kernel facts behind the landlock level's installer (no namespaces): a process held
to one loopback port by Landlock TCP rules plus the egress seccomp rules, and what
Landlock alone lets through. Real Landlock, real seccomp; every address dialled is on
loopback. pip itself at that level, through the real pip sandbox: test_egress_pip.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.landlock_net import landlock_abi, memfd_with, policy, program, wrapped
from tests.support.listeners import RecordingListener

ABI = landlock_abi()
pytestmark = pytest.mark.skipif(ABI < 4, reason=f"Landlock TCP rules need ABI >= 4 (this kernel: {ABI})")
PYTHON = "/usr/bin/python3"

# Every way out a process without a network namespace might try; each answer recorded.
PROBE = r"""
import json, socket as S, sys
cfg = json.loads(sys.argv[1])
p, q, u = cfg["proxy"], cfg["other"], cfg["udp"]
def attempt(family, kind, proto, act):
    try:
        sock = S.socket(family, kind, proto)
    except OSError as exc:
        return type(exc).__name__
    try:
        sock.settimeout(3)
        return act(sock) or "ok"
    except OSError as exc:
        return type(exc).__name__
    finally:
        sock.close()
def fastopen(sock):
    sock.settimeout(None)  # blocking: with a timeout it answers EINPROGRESS
    sock.sendto(b"GET / HTTP/1.0\r\n\r\n", 0x20000000, ("127.0.0.1", q))
    return "sent"
def udp(sock):
    sock.sendto(b"x", ("127.0.0.1", u))
    return "sent"
def nothing(sock):
    return None
TCP, TCP6 = (S.AF_INET, S.SOCK_STREAM, 0), (S.AF_INET6, S.SOCK_STREAM, 0)
out = {
    "proxy_port": attempt(*TCP, lambda s: s.connect(("127.0.0.1", p))),
    "other_port": attempt(*TCP, lambda s: s.connect(("127.0.0.1", q))),
    "other_port_v6_mapped": attempt(*TCP6, lambda s: s.connect(("::ffff:127.0.0.1", q))),
    "proxy_port_other_address": attempt(*TCP, lambda s: s.connect(("127.0.0.2", p))),
    "fastopen_other_port": attempt(*TCP, fastopen),
    "listen_unbound": attempt(*TCP, lambda s: s.listen() or "listening"),
    "bind_any": attempt(*TCP, lambda s: s.bind(("127.0.0.1", 0))),
    "udp": attempt(S.AF_INET, S.SOCK_DGRAM, 0, udp),
    "udp6": attempt(S.AF_INET6, S.SOCK_DGRAM, 0, nothing),
    "icmp": attempt(S.AF_INET, S.SOCK_DGRAM, S.IPPROTO_ICMP, nothing),
    "raw": attempt(S.AF_INET, S.SOCK_RAW, S.IPPROTO_TCP, nothing),
    "sctp": attempt(S.AF_INET, S.SOCK_STREAM, 132, nothing),
    "mptcp": attempt(S.AF_INET, S.SOCK_STREAM, 262, nothing),
    "netlink": attempt(S.AF_NETLINK, S.SOCK_RAW, 0, nothing),
    "packet": attempt(S.AF_PACKET, S.SOCK_RAW, 0, nothing),
    "unix": attempt(S.AF_UNIX, S.SOCK_STREAM, 0, nothing),
}
print(json.dumps(out))
"""


def run_confined(
    spec: dict[str, object],
    command: list[str],
    *,
    tcp_rules: bool = True,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    fd = memfd_with(program(tcp_rules=tcp_rules))
    ids = (65534, 65534) if os.geteuid() == 0 else (None, None)
    try:
        return subprocess.run(
            wrapped(PYTHON, spec, fd, command),
            pass_fds=[fd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=ids[0],
            group=ids[1],
            env=env,
            cwd=cwd,
        )
    finally:
        os.close(fd)


@pytest.fixture
def udp_sink() -> Iterator[socket.socket]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    yield sink
    sink.close()


def probe(tcp_rules: bool, udp_sink: socket.socket) -> tuple[dict[str, str], int, int]:
    with RecordingListener() as proxy, RecordingListener() as other:
        cfg = {"proxy": proxy.port, "other": other.port, "udp": udp_sink.getsockname()[1]}
        command = [PYTHON, "-I", "-c", PROBE, json.dumps(cfg)]
        done = run_confined(policy(proxy.port), command, tcp_rules=tcp_rules)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout), proxy.count(), other.count()


def test_only_the_proxy_port_is_reachable(udp_sink: socket.socket) -> None:
    found, proxy_hits, other_hits = probe(True, udp_sink)
    assert found.pop("proxy_port") == "ok" and proxy_hits == 1
    assert found.pop("unix") == "ok"
    # Landlock's rules are per port, not per address: the proxy's port is reachable on any
    # address (here nothing listens on 127.0.0.2). Why the proxy's port is ephemeral.
    assert found.pop("proxy_port_other_address") == "ConnectionRefusedError"
    assert set(found.values()) == {"PermissionError"}, found
    assert other_hits == 0
    with pytest.raises(BlockingIOError):
        udp_sink.recv(16)


@pytest.mark.skipif(ABI != 7, reason="the Landlock gaps were measured on ABI 7")
def test_landlock_alone_lets_fast_open_listen_and_udp_through(udp_sink: socket.socket) -> None:
    """Why the seccomp rules exist: without them these reach past Landlock."""
    found, _, other_hits = probe(False, udp_sink)
    assert found["other_port"] == "PermissionError"  # Landlock does hold plain connect()
    assert found["fastopen_other_port"] == "sent" and other_hits == 1
    assert found["listen_unbound"] == "listening"
    assert found["udp"] == "sent" and udp_sink.recv(16) == b"x"
    assert found["sctp"] in ("ok", "OSError")  # no Landlock rule for it either way
