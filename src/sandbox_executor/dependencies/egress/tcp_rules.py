"""seccomp rules for the installer where it has no network namespace (the landlock level).

There, pip and the builds it runs share the host's network and are held to the egress
proxy's one loopback port by Landlock (``LANDLOCK_ACCESS_NET_CONNECT_TCP`` for that port,
``BIND_TCP`` for none). Landlock covers TCP ``connect()``/``bind()`` only, and measured on
Linux 6.18 (ABI 7) two TCP paths get round it:

- ``sendto``/``sendmsg``/``sendmmsg`` with ``MSG_FASTOPEN`` connect *and* deliver data to
  any port without the connect hook being asked;
- ``listen()`` on an unbound socket binds a random port on every address without the bind
  hook being asked: a server reachable from the cluster for the length of the install.

So on top of the landlock level's socket-family rules (AF_UNIX, AF_INET, AF_INET6 only),
an AF_INET/AF_INET6 socket must be a TCP stream (no UDP, raw, ICMP, SCTP or MPTCP: none of
them is bounded by Landlock), ``MSG_FASTOPEN`` is refused on every send call and
``listen()`` is refused outright (pip and ordinary builds never listen). Every refusal is
``EPERM``. ``tests/integration/test_egress_landlock.py`` shows each bypass with Landlock
alone and closed with these rules.
"""

from __future__ import annotations

import errno
from typing import Any

AF_INET, AF_INET6 = 2, 10
SOCK_STREAM, SOCK_TYPE_MASK = 1, 0xF
IPPROTO_TCP = 6
MSG_FASTOPEN = 0x20000000
LOW_32 = 0xFFFFFFFF
# (syscall, index of its flags argument)
SEND_CALLS: tuple[tuple[str, int], ...] = (("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3))


def add_tcp_client_rules(filt: Any) -> None:
    """Add the rules above to a ``pyseccomp.SyscallFilter`` whose default is ALLOW."""
    import pyseccomp as seccomp

    eperm = seccomp.ERRNO(errno.EPERM)
    for family in (AF_INET, AF_INET6):
        # The kernel reads family, type and protocol as ints: compare the low 32 bits.
        is_family = seccomp.Arg(0, seccomp.MASKED_EQ, LOW_32, family)
        for sock_type in range(SOCK_TYPE_MASK + 1):
            if sock_type != SOCK_STREAM:
                kind = seccomp.Arg(1, seccomp.MASKED_EQ, SOCK_TYPE_MASK, sock_type)
                filt.add_rule(eperm, "socket", is_family, kind)
        # Protocol 0 (the default, TCP) and IPPROTO_TCP only: 1..5 one by one, and anything
        # above 6 (a value with upper bits set is above 6 too, and refused: the safe side).
        for protocol in range(1, IPPROTO_TCP):
            filt.add_rule(eperm, "socket", is_family, seccomp.Arg(2, seccomp.MASKED_EQ, LOW_32, protocol))
        filt.add_rule(eperm, "socket", is_family, seccomp.Arg(2, seccomp.GT, IPPROTO_TCP))
    for call, flags_index in SEND_CALLS:
        filt.add_rule(eperm, call, seccomp.Arg(flags_index, seccomp.MASKED_EQ, MSG_FASTOPEN, MSG_FASTOPEN))
    filt.add_rule(eperm, "listen")


def pip_landlock_program() -> bytes:
    """The whole filter for pip at the landlock level: that level's filter with AF_INET and
    AF_INET6 allowed, narrowed by the rules above."""
    from ... import seccomp

    return seccomp.build_landlock_program(allow_inet=True, extra_rules=add_tcp_client_rules)
