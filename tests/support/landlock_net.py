"""A minimal stand-in for the landlock level's confinement of pip, for tests only.

``bootstrap/confine.py`` (the isolation work) applies the real thing: Landlock for files,
network and scopes, plus the landlock-level seccomp filter. This helper applies only what
the egress design adds: Landlock's TCP rules (connect to the proxy's port only, bind
nothing) and a seccomp program, then execs the command:

    python3 -I -S -c WRAPPER PORT SECCOMP_FD -- COMMAND...   (PORT 0: no Landlock rule)
"""

from __future__ import annotations

import errno
import os
from typing import Any

from sandbox_executor.egress_seccomp import AF_INET, AF_INET6, add_tcp_client_rules

AF_UNIX = 1

WRAPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

class RulesetAttr(ctypes.Structure):
    _fields_ = (("fs", ctypes.c_uint64), ("net", ctypes.c_uint64))

class NetPort(ctypes.Structure):
    _fields_ = (("allowed", ctypes.c_uint64), ("port", ctypes.c_uint64))

class Fprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

def check(result):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result

port, seccomp_fd, sep, *command = sys.argv[1:]
assert sep == "--"
check(libc.prctl(38, 1, 0, 0, 0))  # PR_SET_NO_NEW_PRIVS
if int(port):
    BIND_TCP, CONNECT_TCP = 1, 2
    attr = RulesetAttr(0, BIND_TCP | CONNECT_TCP)
    ruleset = check(libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(16), ctypes.c_uint32(0)))
    rule = NetPort(CONNECT_TCP, int(port))
    check(libc.syscall(445, ctypes.c_int(ruleset), ctypes.c_int(2), ctypes.byref(rule), ctypes.c_uint32(0)))
    check(libc.syscall(446, ctypes.c_int(ruleset), ctypes.c_uint32(0)))
    os.close(ruleset)
if int(seccomp_fd) >= 0:
    program = os.read(int(seccomp_fd), 1 << 20)
    os.close(int(seccomp_fd))
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = Fprog(len(program) // 8, ctypes.addressof(buf))
    check(libc.prctl(22, 2, ctypes.c_void_p(ctypes.addressof(fprog)), 0, 0))  # PR_SET_SECCOMP
os.execv(command[0], command)
"""


def landlock_abi() -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, int(libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))))


def pip_program(*, tcp_rules: bool = True) -> bytes:
    """Default-allow filter: sockets of AF_UNIX/AF_INET/AF_INET6 only (as the landlock
    level's filter does), plus, unless ``tcp_rules`` is false, the egress TCP rules."""
    import pyseccomp as seccomp

    filt: Any = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    eperm = seccomp.ERRNO(errno.EPERM)
    for family in range(64):
        if family not in (AF_UNIX, AF_INET, AF_INET6):
            filt.add_rule(eperm, "socket", seccomp.Arg(0, seccomp.MASKED_EQ, 0xFFFFFFFF, family))
    if tcp_rules:
        add_tcp_client_rules(filt)
    fd = os.memfd_create("egress-seccomp", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as fh:
        filt.export_bpf(fh)
        fh.seek(0)
        return fh.read()


def wrapped(python: str, port: int, seccomp_fd: int, command: list[str]) -> list[str]:
    return [python, "-I", "-S", "-c", WRAPPER, str(port), str(seccomp_fd), "--", *command]
