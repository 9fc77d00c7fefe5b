"""The seccomp filter every sandbox runs under, compiled with libseccomp (never hand-written BPF).

Namespaces and dropped capabilities already make most of these calls fail; the filter is
the second wall that also shuts the kernel attack surface those calls expose (io_uring,
bpf, userfaultfd, perf, keyrings, the new mount API...), whatever a future kernel or
sysctl decides about unprivileged users. The default action is ALLOW: the list is a deny
list of calls no interpreter needs. ``docs/SECURITY.md`` gives the reason for every entry
(a unit test keeps the two in step).

bwrap loads the program (``--seccomp FD``) as its last step before exec'ing the sandboxed
command, after its own mount/unshare work, so the filter never gets in bwrap's way.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

# Refused with EPERM, whatever the arguments. Grouped as in docs/SECURITY.md.
DENY_EPERM: tuple[str, ...] = (
    # Debugging / cross-process memory access.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    # Kernel keyrings.
    "keyctl",
    "add_key",
    "request_key",
    # Large kernel attack surfaces with no use for interpreted user code.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fanotify_init",
    "lookup_dcookie",
    "open_by_handle_at",
    "modify_ldt",
    "iopl",
    "ioperm",
    "syslog",
    # Mounts and the new mount API.
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    # Namespaces.
    "unshare",
    "setns",
    # Kernel and machine state.
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "nfsservctl",
    "uselib",
    "vhangup",
    "sethostname",
    "setdomainname",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
)

# Calls newer than the libseccomp this host may have, denied by number when the library
# cannot resolve the name. Since Linux 5.1 new calls share one number on every arch
# (except alpha), so one number serves x86_64 and aarch64 alike.
DENY_EPERM_BY_NUMBER: dict[str, int] = {
    "open_tree_attr": 467,  # Linux 6.15: open_tree() with mount attributes.
}

# Namespace-creating clone() flags; clone with any of them is refused with EPERM.
# CLONE_NEWTIME (0x80) is absent on purpose: in clone() that bit belongs to the exit-signal
# byte (CSIGNAL), so a time namespace can only come from unshare() or clone3(), both refused.
CLONE_NAMESPACE_FLAGS: dict[str, int] = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

# personality(): only PER_LINUX (0) and the 0xffffffff query are allowed (see build_program).
PERSONALITY_QUERY = 0xFFFFFFFF

# The landlock level's socket families (see build_landlock_program).
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
FAMILY_LIMIT = 64  # above AF_MAX (46 in Linux 6.18): room for families to come
LOW_32 = 0xFFFFFFFF

# Every syscall name the filter mentions, for documentation checks.
ALL_RULE_NAMES: tuple[str, ...] = (
    *DENY_EPERM,
    *DENY_EPERM_BY_NUMBER,
    "clone",
    "clone3",
    "personality",
)


def _resolve(seccomp: object, name: str) -> int | None:
    number = int(seccomp.resolve_syscall(seccomp.Arch.NATIVE, name))  # type: ignore[attr-defined]
    # libseccomp answers __NR_SCMP_ERROR (-1) for a name it does not know at all; other
    # negative numbers are its pseudo-syscalls for calls absent on this arch (fine to add).
    return None if number == -1 else number


def build_program() -> bytes:
    """Return the compiled BPF program (native architecture only) for bwrap ``--seccomp``.

    Raises ImportError when libseccomp is not installed and OSError when it refuses a rule.
    """
    return _export(_base_filter())


def build_landlock_program(
    allow_inet: bool = False, extra_rules: Callable[[Any], None] | None = None
) -> bytes:
    """The filter of the landlock level: the bwrap filter plus what namespaces gave there.

    Without a network namespace, ``socket()``/``socketpair()`` are limited to AF_UNIX
    (and AF_INET/AF_INET6 when ``allow_inet``: Landlock then bounds TCP to the allowed
    ports, UDP stays open unless ``extra_rules`` closes it, as the dependency installer's
    ``dependencies/egress/tcp_rules.py`` does): no AF_NETLINK, AF_PACKET, AF_VSOCK...
    ``extra_rules`` gets the filter before export. Without a pid namespace,
    ``kill(-1, sig)`` would signal every process of the uid, the daemon included: refused
    (Landlock ABI >= 6 also scopes signals; this holds on older kernels too). ``ptrace``
    and ``process_vm_readv``/``writev`` are refused by the base filter already.
    """
    import pyseccomp as seccomp

    filt = _base_filter()
    eperm = seccomp.ERRNO(errno.EPERM)
    allowed = {AF_UNIX} | ({AF_INET, AF_INET6} if allow_inet else set())
    # The kernel reads the family as an int: compare the low 32 bits only (upper bits are
    # ignored by the kernel, so an exact 64-bit test could be dodged by setting them).
    # Families at or above AF_MAX fail in the kernel with EAFNOSUPPORT anyway.
    for family in range(FAMILY_LIMIT):
        if family not in allowed:
            for call in ("socket", "socketpair"):
                filt.add_rule(eperm, call, seccomp.Arg(0, seccomp.MASKED_EQ, LOW_32, family))
    filt.add_rule(eperm, "kill", seccomp.Arg(0, seccomp.MASKED_EQ, LOW_32, LOW_32))
    if extra_rules is not None:
        extra_rules(filt)
    return _export(filt)


def _base_filter() -> Any:  # a pyseccomp.SyscallFilter (the library has no types)
    import pyseccomp as seccomp

    filt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    # seccomp_init() adds only the native arch; say so explicitly, and kill (the whole
    # process, not one thread) any call made through another ABI (int 0x80, x32), which
    # would otherwise reach syscalls under numbers this filter never checks.
    native = seccomp.system_arch()
    if not filt.exist_arch(native):
        filt.add_arch(native)
    filt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    # bwrap sets no_new_privs itself before loading the program.
    eperm = seccomp.ERRNO(errno.EPERM)
    for name in DENY_EPERM:
        if _resolve(seccomp, name) is not None:
            filt.add_rule(eperm, name)
    for name, number in DENY_EPERM_BY_NUMBER.items():
        resolved = _resolve(seccomp, name)
        filt.add_rule(eperm, resolved if resolved is not None else number)
    for flag in CLONE_NAMESPACE_FLAGS.values():
        # x86_64 and aarch64 take the flags as clone()'s first argument.
        filt.add_rule(eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    # clone3 passes its flags in a struct the filter cannot read: answer ENOSYS so glibc
    # and libuv fall back to clone(), whose flags the rules above do check.
    filt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    # personality(): libseccomp cannot put two comparisons on one argument, so "neither 0
    # nor 0xffffffff" is spelled with single masked tests. The kernel reads the low 32
    # bits only; they are neither all zeros nor all ones exactly when, going round the
    # 32-bit word, some bit is 1 and the next one 0. One rule per such adjacent pair.
    for bit in range(32):
        pair = (1 << bit) | (1 << ((bit + 1) % 32))
        filt.add_rule(eperm, "personality", seccomp.Arg(0, seccomp.MASKED_EQ, pair, 1 << bit))
    return filt


def _export(filt: object) -> bytes:
    fd = os.memfd_create("seccomp-export", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as fh:
        filt.export_bpf(fh)  # type: ignore[attr-defined]
        fh.seek(0)
        program = fh.read()
    if not program or len(program) % 8:
        raise OSError(errno.EINVAL, f"libseccomp exported a bad program ({len(program)} bytes)")
    return program
