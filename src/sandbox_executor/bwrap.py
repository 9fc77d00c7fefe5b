"""The bwrap command line, as a pure function of a :class:`SandboxSpec`.

Nothing here touches the file system or the process table: the host is inspected once
(``host.py``) and plain data comes in, so the argv can be unit-tested exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

# Directories the interpreters need, bound read-only when they exist as real directories;
# on a merged-/usr system /bin, /lib... are symlinks into /usr and are recreated as such.
SYSTEM_DIRS: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

# The only host /etc entries a sandbox sees: dynamic linker cache, TLS trust store, time zone.
ETC_ENTRIES: tuple[str, ...] = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl/certs",
    "/etc/ca-certificates.conf",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/alternatives",
)

SANDBOX_WORKDIR = "/workspace"


@dataclass(frozen=True)
class Mount:
    """One filesystem entry of the sandbox: ``kind`` is ro-bind, bind, symlink or dir."""

    kind: str
    source: str
    dest: str


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that decides the sandbox's shape."""

    command: Sequence[str]
    workspace: str
    bwrap_path: str = "bwrap"
    system_mounts: Sequence[Mount] = ()
    extra_mounts: Sequence[Mount] = ()
    env: Sequence[tuple[str, str]] = ()
    tmpfs_size_bytes: int = 256 * 1024 * 1024
    network: bool = False
    disable_userns: bool = True
    seccomp_fd: int | None = None
    info_fd: int | None = None
    # None keeps the host's hostname (bwrap-compat: sethostname is refused there).
    hostname: str | None = "sandbox"
    # A fresh procfs of the sandbox's PID namespace; False binds the host's read-only
    # (bwrap-compat: a masked /proc cannot be mounted afresh, and the bootstraps need
    # /dev/fd, which is /proc/self/fd).
    proc: bool = True
    workdir: str = SANDBOX_WORKDIR
    extra_env_clear: bool = True
    data_files: Sequence[tuple[int, str]] = field(default_factory=tuple)
    # The command itself is the PID namespace's init (no bwrap reaper in between): bwrap
    # then waitpid()s it, so wait4() on bwrap carries the rusage of the whole tree, and
    # bwrap exits only after the kernel has reaped every process of the namespace.
    as_pid_1: bool = True

    def inherited_fds(self) -> list[int]:
        """Descriptors bwrap must inherit from its parent for this spec."""
        fds = [fd for fd, _ in self.data_files]
        fds += [fd for fd in (self.info_fd, self.seccomp_fd) if fd is not None]
        return fds


def renumbered(spec: SandboxSpec, first: int) -> tuple[SandboxSpec, dict[int, int]]:
    """``spec`` with bwrap's descriptors renumbered from ``first`` up, and the mapping of
    those numbers to the original ones (the child's number -> ours), so that the numbers a
    sandbox sees never depend on what the daemon happens to have open."""
    mapping: dict[int, int] = {}

    def child(fd: int) -> int:
        number = first + len(mapping)
        mapping[number] = fd
        return number

    data_files = tuple((child(fd), dest) for fd, dest in spec.data_files)
    info_fd = child(spec.info_fd) if spec.info_fd is not None else None
    seccomp_fd = child(spec.seccomp_fd) if spec.seccomp_fd is not None else None
    return replace(spec, data_files=data_files, info_fd=info_fd, seccomp_fd=seccomp_fd), mapping


def build_bwrap_argv(spec: SandboxSpec) -> list[str]:
    """Return the full argv (bwrap and the sandboxed command) for ``spec``."""
    argv: list[str] = [spec.bwrap_path]
    argv += ["--unshare-all", "--unshare-user"]
    if spec.network:
        argv.append("--share-net")
    argv += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if spec.disable_userns:
        argv.append("--disable-userns")
    if spec.as_pid_1:
        argv.append("--as-pid-1")
    if spec.hostname is not None:
        argv += ["--hostname", spec.hostname]
    if spec.info_fd is not None:
        argv += ["--info-fd", str(spec.info_fd)]
    if spec.seccomp_fd is not None:
        argv += ["--seccomp", str(spec.seccomp_fd)]
    for mount in (*spec.system_mounts, *spec.extra_mounts):
        argv += _mount_args(mount)
    for fd, dest in spec.data_files:
        argv += ["--ro-bind-data", str(fd), dest]
    argv += ["--proc", "/proc"] if spec.proc else ["--ro-bind", "/proc", "/proc"]
    argv += ["--dev", "/dev"]
    argv += ["--size", str(spec.tmpfs_size_bytes), "--tmpfs", "/tmp"]
    # bwrap's /dev is a tmpfs of its own, owned by the sandbox and unbounded (half the
    # host's RAM): POSIX shared memory gets a bounded /dev/shm and /dev itself turns
    # read-only below.
    argv += ["--size", str(spec.tmpfs_size_bytes), "--tmpfs", "/dev/shm"]
    argv += ["--bind", spec.workspace, SANDBOX_WORKDIR]
    # The root is a bwrap-made tmpfs: make it read-only so only /tmp, /dev/shm and
    # /workspace take writes (all bounded), never an unbounded in-memory root.
    argv += ["--remount-ro", "/", "--remount-ro", "/dev"]
    argv += ["--chdir", spec.workdir]
    if spec.extra_env_clear:
        argv.append("--clearenv")
    for name, value in spec.env:
        argv += ["--setenv", name, value]
    argv.append("--")
    argv += list(spec.command)
    return argv


def _mount_args(mount: Mount) -> list[str]:
    if mount.kind == "ro-bind":
        return ["--ro-bind", mount.source, mount.dest]
    if mount.kind == "ro-bind-try":
        return ["--ro-bind-try", mount.source, mount.dest]
    if mount.kind == "bind":
        return ["--bind", mount.source, mount.dest]
    if mount.kind == "symlink":
        return ["--symlink", mount.source, mount.dest]
    if mount.kind == "dir":
        return ["--dir", mount.dest]
    raise ValueError(f"unknown mount kind {mount.kind!r}")


def bwrap_supports(bwrap_help: str, option: str) -> bool:
    """Whether the installed bwrap lists ``option`` in its --help text."""
    return option in bwrap_help
