"""Confinement a forked child applies to itself between fork and exec: Landlock, seccomp,
no_new_privs, oom_score_adj, dumpable and parent-death signals.

Standard library only (ctypes): the spawner runs ``/usr/bin/python3 -I -S``, where no
site-packages (and so no PyPI package) is importable, and this code runs in a forked child
of a single-threaded process, where only async-signal-simple work belongs. The PyPI
Landlock bindings (landlockpy, py-landlock, landlock) are young 0.x single-maintainer
projects; the whole interface is three syscalls and two structs, kept here in full view.
Import it as ``sandbox_executor.bootstrap.confine`` or, from the spawner, as plain
``confine`` with this directory on ``sys.path``: it imports nothing of ours.

The kernel interface (include/uapi/linux/landlock.h) and what each ABI adds:
1 (5.13) file system rights; 2 (5.19) REFER (rename/link across directories);
3 (6.2) TRUNCATE; 4 (6.7) TCP bind/connect; 5 (6.10) IOCTL_DEV; 6 (6.12) scopes: abstract
unix sockets and signals; 7 (6.15) audit-log flags only (no new right).
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

# Since Linux 5.1 new syscalls share one number on every architecture (alpha aside).
_NR_CREATE_RULESET, _NR_ADD_RULE, _NR_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION, _CREATE_RULESET_ERRATA = 1, 2
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2

# File system rights (LANDLOCK_ACCESS_FS_*).
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
FS_MAKE_SYM, FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

# Every right each ABI knows (a right the running ABI lacks is dropped, never an error).
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
# Rights that make sense on a file (the kernel refuses the others on a non-directory).
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_ONLY = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
DEVICE = FS_READ_FILE | FS_WRITE_FILE | FS_IOCTL_DEV
# Everything but device nodes (those need CAP_MKNOD anyway).
READ_WRITE = ((1 << 16) - 1) & ~(FS_MAKE_CHAR | FS_MAKE_BLOCK)

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP = 1, 4, 22
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 36, 38, 39
SECCOMP_MODE_FILTER = 2


def handled_fs(abi: int) -> int:
    """The file system rights an ABI can enforce (0 without Landlock)."""
    known = [mask for version, mask in _FS_BY_ABI.items() if version <= abi]
    return max(known) if known else 0


def handled_net(abi: int) -> int:
    return NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0


def handled_scope(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


@dataclass(frozen=True)
class Policy:
    """What a confined process may touch; everything else the ABI can name is denied.

    Paths that do not exist are skipped (callers list candidates such as /lib32).
    """

    read_only: Sequence[str] = ()
    read_write: Sequence[str] = ()
    devices: Sequence[str] = ()
    connect_tcp: Sequence[int] = ()
    bind_tcp: Sequence[int] = ()
    scope_signals: bool = True
    scope_abstract_unix: bool = True


@dataclass(frozen=True)
class Plan:
    """A policy resolved against an ABI: the handled masks and the rules, pure data."""

    fs: int
    net: int
    scope: int
    paths: tuple[tuple[str, int], ...]
    ports: tuple[tuple[int, int], ...]


def plan(policy: Policy, abi: int) -> Plan:
    """Resolve ``policy`` for ``abi``: rights the ABI lacks are dropped, not refused."""
    fs, net = handled_fs(abi), handled_net(abi)
    scope = handled_scope(abi)
    if not policy.scope_signals:
        scope &= ~SCOPE_SIGNAL
    if not policy.scope_abstract_unix:
        scope &= ~SCOPE_ABSTRACT_UNIX_SOCKET
    paths = [(p, READ_ONLY & fs) for p in policy.read_only]
    paths += [(p, READ_WRITE & fs) for p in policy.read_write]
    paths += [(p, DEVICE & fs) for p in policy.devices]
    ports: list[tuple[int, int]] = []
    if net:
        ports += [(port, NET_CONNECT_TCP) for port in policy.connect_tcp]
        ports += [(port, NET_BIND_TCP) for port in policy.bind_tcp]
    return Plan(fs, net, scope, tuple(paths), tuple(ports))


# What the interpreters need, read-only (measured: docs in /work/notes/isolation-findings.md).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",  # node exits when OpenSSL's config is EACCES (ENOENT is fine)
    "/etc/ca-certificates.conf",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/alternatives",
    "/etc/hosts",  # getaddrinfo("localhost")
    "/etc/nsswitch.conf",
    "/etc/host.conf",
)
# The container's accounts (getpwuid, os.userInfo, id -un); a host's would list its users.
ETC_ACCOUNTS = ("/etc/passwd", "/etc/group")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# POSIX semaphores (Python multiprocessing's locks: sem_open) live in /dev/shm.
SHARED_MEMORY = "/dev/shm"


def sandbox_policy(
    workspace: str,
    private_tmp: str,
    read_only: Sequence[str] = (),
    *,
    read_write: Sequence[str] = (),
    proc: bool = False,
    accounts: bool = True,
    shared_memory: bool = True,
    connect_tcp: Sequence[int] = (),
) -> Policy:
    """The landlock level's policy for one run.

    ``read_only`` adds the session venv, the bootstrap files...; ``read_write`` more
    writable directories (pip's target and cache). ``proc`` opens /proc
    read-only; without it nothing of /proc is reachable (Landlock's ptrace scoping hides
    other processes' environ, memory, fds and root either way, but with ``proc`` their
    cmdline and status stay readable).
    """
    extra = (*read_only, *(("/proc",) if proc else ()), *(ETC_ACCOUNTS if accounts else ()))
    writable = (workspace, private_tmp, *read_write, *((SHARED_MEMORY,) if shared_memory else ()))
    return Policy(
        read_only=(*SYSTEM_DIRS, *ETC_FILES, *extra),
        read_write=writable,
        devices=DEVICES,
        connect_tcp=tuple(connect_tcp),
    )


# ---- the kernel calls ------------------------------------------------------------------


class _RulesetAttr(ctypes.Structure):
    _fields_ = (("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64))


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPort(ctypes.Structure):
    _fields_ = (("allowed", ctypes.c_uint64), ("port", ctypes.c_uint64))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


def _syscall(number: int, *args: ctypes._SimpleCData[int] | ctypes.c_void_p) -> int:
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _prctl(option: int, arg2: int | ctypes.c_void_p = 0) -> int:
    value = arg2 if isinstance(arg2, ctypes.c_void_p) else ctypes.c_ulong(arg2)
    zero = ctypes.c_ulong(0)
    result = int(_libc.prctl(ctypes.c_int(option), value, zero, zero, zero))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when absent, disabled or refused by seccomp."""
    try:
        return _syscall(_NR_CREATE_RULESET, ctypes.c_void_p(None), ctypes.c_size_t(0), ctypes.c_uint32(1))
    except OSError:  # ENOSYS (no Landlock), EOPNOTSUPP (disabled at boot), EPERM (seccomp)
        return 0


def landlock_errata() -> int:
    """The bitmask of Landlock fixes this kernel has (ABI >= 7 answers; 0 otherwise)."""
    try:
        flag = ctypes.c_uint32(_CREATE_RULESET_ERRATA)
        return _syscall(_NR_CREATE_RULESET, ctypes.c_void_p(None), ctypes.c_size_t(0), flag)
    except OSError:
        return 0


def apply_landlock(policy: Policy, abi: int | None = None) -> Plan:
    """Restrict the calling process (and every later child) to ``policy``.

    Needs no_new_privs first (or CAP_SYS_ADMIN). Raises OSError when the kernel refuses;
    a path that vanished between listing and opening is skipped.
    """
    resolved = plan(policy, landlock_abi() if abi is None else abi)
    if not (resolved.fs or resolved.net or resolved.scope):
        raise OSError(95, "Landlock is not available")  # EOPNOTSUPP
    attr = _RulesetAttr(resolved.fs, resolved.net, resolved.scope)
    # Older kernels take a shorter struct; the size says which fields we fill.
    size = 24 if resolved.scope else 16 if resolved.net else 8
    ruleset = _syscall(
        _NR_CREATE_RULESET, ctypes.c_void_p(ctypes.addressof(attr)), ctypes.c_size_t(size), ctypes.c_uint32(0)
    )
    try:
        for path, access in resolved.paths:
            _add_path_rule(ruleset, path, access)
        for port, access in resolved.ports:
            rule = _NetPort(access, port)
            _syscall(
                _NR_ADD_RULE,
                ctypes.c_int(ruleset),
                ctypes.c_int(_RULE_NET_PORT),
                ctypes.c_void_p(ctypes.addressof(rule)),
                ctypes.c_uint32(0),
            )
        _syscall(_NR_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return resolved


def _add_path_rule(ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= FS_FILE_RIGHTS
        if not access:
            return
        rule = _PathBeneath(access, fd)
        _syscall(
            _NR_ADD_RULE,
            ctypes.c_int(ruleset),
            ctypes.c_int(_RULE_PATH_BENEATH),
            ctypes.c_void_p(ctypes.addressof(rule)),
            ctypes.c_uint32(0),
        )
    finally:
        os.close(fd)


def set_no_new_privs() -> None:
    """setuid bits and file capabilities stop working; required by Landlock and seccomp."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def no_new_privs() -> bool:
    return _prctl(PR_GET_NO_NEW_PRIVS) == 1


def load_seccomp(program: bytes) -> None:
    """Install a BPF program (the bytes libseccomp exports) on the calling thread.

    The spawner's children are single-threaded, so no TSYNC is needed. Needs no_new_privs.
    """
    if not program or len(program) % 8:
        raise OSError(22, f"not a BPF program ({len(program)} bytes)")  # EINVAL
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    # prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog): the third argument is the pointer.
    zero = ctypes.c_ulong(0)
    result = int(
        _libc.prctl(
            ctypes.c_int(PR_SET_SECCOMP),
            ctypes.c_ulong(SECCOMP_MODE_FILTER),
            ctypes.c_void_p(ctypes.addressof(fprog)),
            zero,
            zero,
        )
    )
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def set_dumpable(dumpable: bool) -> None:
    """A non-dumpable process's /proc files belong to root and no same-uid process may
    ptrace it or read its environ/memory (the daemon, the spawner, the supervisor)."""
    _prctl(PR_SET_DUMPABLE, 1 if dumpable else 0)


def set_parent_death_signal(sig: int) -> None:
    """Get ``sig`` when the parent thread dies; exits at once if it is already gone.

    The check after the prctl closes the race where the parent died before it.
    """
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def set_child_subreaper() -> None:
    """Orphaned descendants (setsid'd, double-forked) are re-parented to this process."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_oom_score_adj(value: int) -> None:
    """Raise the OOM killer's preference for this process (lowering needs a capability).

    Write it before Landlock: /proc is not writable afterwards.
    """
    with open("/proc/self/oom_score_adj", "w", encoding="ascii") as fh:
        fh.write(str(value))


@dataclass(frozen=True)
class Confinement:
    """Everything :func:`confine` applies, in the order it applies it."""

    policy: Policy | None = None
    seccomp_program: bytes | None = None
    oom_score_adj: int | None = None
    death_signal: int | None = None


def confine(spec: Confinement) -> Plan | None:
    """Apply ``spec`` to the calling (freshly forked, single-threaded) process.

    Order: oom_score_adj (needs /proc writable), parent-death signal, no_new_privs,
    Landlock, then seccomp last so that its deny list cannot get in the way of the
    Landlock calls. Raises OSError on any refusal: the caller must not exec then.
    """
    if spec.oom_score_adj is not None:
        set_oom_score_adj(spec.oom_score_adj)
    if spec.death_signal is not None:
        set_parent_death_signal(spec.death_signal)
    set_no_new_privs()
    planned = apply_landlock(spec.policy) if spec.policy is not None else None
    if spec.seccomp_program is not None:
        load_seccomp(spec.seccomp_program)
    return planned
