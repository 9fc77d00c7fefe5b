"""What the host offers sandboxes, probed once and shared by the engine and the pip sandbox.

:meth:`HostProfile.probe` reads the host (the isolation level, isolation.py and
isolation_probes.py; system directories, whether bwrap has ``--disable-userns``, the
compiled seccomp program of the level, the sandbox user's ids); after that the profile is
plain data. At the bwrap levels :meth:`HostProfile.spec` turns it into the
:class:`~sandbox_executor.bwrap.SandboxSpec` of one start; at the landlock level
``landlock.py`` builds the confined launch from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from . import isolation_probes, seccomp
from .bwrap import ETC_ENTRIES, SYSTEM_DIRS, Mount, SandboxSpec, bwrap_supports
from .config import MIB, Settings
from .errors import SandboxStartError
from .isolation import Decision, Level, Probe
from .limits import Limits, Rlimit, pip_rlimits

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class HostProfile:
    """Everything about the host that decides a sandbox's shape, read once."""

    bwrap_path: str
    # The level sandboxes run at (never a refusal) and why; what the host allowed.
    isolation: Decision
    facts: Probe
    system_mounts: tuple[Mount, ...]
    disable_userns: bool
    # The level's filter: bwrap's (bwrap levels) or the landlock level's; None under
    # SECCOMP_ENABLED=false or without libseccomp, and at the level none.
    seccomp_program: bytes | None
    # The uid/gid user code runs as outside its namespace.
    sandbox_ids: tuple[int, int]
    # Who the spawner switches to before exec: the sandbox user when the daemon is root,
    # None (stay) otherwise. User code never runs as root.
    run_as: tuple[int, int] | None
    limits: Limits
    pip_rlimits: tuple[Rlimit, ...]
    tmpfs_size_bytes: int

    @classmethod
    def probe(cls, settings: Settings) -> HostProfile:
        """Probe the host once; SandboxStartError (with the remedy) when the level the
        settings ask for cannot be had here."""
        decision, facts = isolation_probes.detect(settings)
        level = decision.level
        if level is None:
            raise SandboxStartError(decision.refusal, solution=decision.remedy)
        ids = settings.sandbox_ids()
        return cls(
            bwrap_path=settings.bwrap_path,
            isolation=decision,
            facts=facts,
            system_mounts=tuple(host_system_mounts()),
            disable_userns=level == "bwrap"
            and installed_bwrap_supports(settings.bwrap_path, "--disable-userns"),
            seccomp_program=load_seccomp_program(level)
            if level != "none" and settings.seccomp_enabled
            else None,
            sandbox_ids=ids,
            run_as=ids if settings.runs_as_root else None,
            limits=Limits.from_settings(settings),
            pip_rlimits=tuple(pip_rlimits(settings)),
            tmpfs_size_bytes=settings.tmpfs_size_mb * MIB,
        )

    @property
    def level(self) -> Level:
        assert self.isolation.level is not None  # probe() refuses to build one without
        return self.isolation.level

    @property
    def uses_bwrap(self) -> bool:
        """bwrap builds the sandbox (the bwrap levels); else the spawner confines it."""
        return self.level in ("bwrap", "bwrap-compat")

    @property
    def isolated(self) -> bool:
        """False only at the level none (development: user code runs bare)."""
        return self.level != "none"

    @property
    def seccomp_active(self) -> bool:
        return self.seccomp_program is not None

    def etc_files(self) -> dict[str, bytes]:
        """The synthetic /etc of a sandbox: only its own accounts, never the host's, and
        no resolver (no sandbox has a network; pip's egress proxy resolves for it)."""
        uid, gid = self.sandbox_ids
        files = {
            "/etc/passwd": (
                f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                f"sandbox:x:{uid}:{gid}:sandbox:/workspace:/bin/bash\n"
                f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ).encode(),
            "/etc/group": f"root:x:0:\nsandbox:x:{gid}:\nnogroup:x:65534:\n".encode(),
            "/etc/hosts": b"127.0.0.1 localhost sandbox\n::1 localhost\n",
            "/etc/nsswitch.conf": b"passwd: files\ngroup: files\nhosts: files\n",
        }
        return files

    def spec(
        self,
        *,
        command: Sequence[str],
        workspace: str,
        env: Sequence[tuple[str, str]],
        extra_mounts: Sequence[Mount] = (),
        info_fd: int | None = None,
        hostname: str = "sandbox",
    ) -> SandboxSpec:
        """The sandbox of one start; opens the single-use descriptors it names (bwrap
        consumes them; the caller closes its copies once the process is spawned)."""
        files = self.etc_files()
        program = self.seccomp_program
        return SandboxSpec(
            command=command,
            workspace=workspace,
            bwrap_path=self.bwrap_path,
            system_mounts=self.system_mounts,
            extra_mounts=extra_mounts,
            env=env,
            tmpfs_size_bytes=self.tmpfs_size_bytes,
            disable_userns=self.disable_userns,
            # bwrap-compat: the container's /proc (masked) cannot be mounted afresh.
            proc=self.level == "bwrap",
            seccomp_fd=memfd_with("seccomp", program) if program else None,
            info_fd=info_fd,
            hostname=hostname if self.level == "bwrap" else None,
            data_files=tuple((memfd_with(path, data), path) for path, data in files.items()),
        )


def host_system_mounts(etc_overlays: Sequence[Mount] = ()) -> list[Mount]:
    """Read-only system directories, the few /etc files, then ``etc_overlays``."""
    mounts: list[Mount] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            # Merged /usr: /bin, /lib... are symlinks into /usr, recreated as such.
            mounts.append(Mount("symlink", os.readlink(path), path))
        elif os.path.isdir(path):
            mounts.append(Mount("ro-bind", path, path))
    for path in ETC_ENTRIES:
        # ro-bind follows a symlinked source (e.g. /etc/localtime -> zoneinfo), which is
        # what we want: the sandbox gets the file, not a dangling link.
        if os.path.exists(path):
            mounts.append(Mount("ro-bind", path, path))
    mounts.extend(etc_overlays)
    return mounts


def installed_bwrap_supports(bwrap_path: str, option: str) -> bool:
    """Does the bwrap at ``bwrap_path`` have ``option``?"""
    bwrap = shutil.which(bwrap_path) or bwrap_path
    try:
        help_text = subprocess.run(
            [bwrap, "--help"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        help_text = ""
    return bwrap_supports(help_text, option)


def load_seccomp_program(level: Level = "bwrap") -> bytes | None:
    """The level's seccomp program, or None (loudly) where libseccomp is missing."""
    try:
        return seccomp.build_landlock_program() if level == "landlock" else seccomp.build_program()
    except (ImportError, OSError) as exc:  # ImportError: the pyseccomp binding, not ours
        # Namespaces and dropped capabilities still hold; the second wall is missing.
        log.warning("seccomp_unavailable", error=str(exc))
        return None


def memfd_with(name: str, data: bytes) -> int:
    """A close-on-exec memfd holding ``data``, at offset 0: a single-use bwrap data file."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
