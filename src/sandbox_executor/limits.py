"""The rlimit tables: what bwrap and everything below it gets between fork and exec.

Pure functions of the settings; the spawner applies them after the uid switch.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from .config import MIB, Settings

Rlimit = tuple[int, int, int]  # (resource, soft, hard)


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to one sandbox's process tree."""

    memory_bytes: int
    pids: int
    file_size_bytes: int
    open_files: int
    cpu_seconds: int
    # RLIMIT_NPROC of bwrap itself. The kernel counts a uid's processes per user
    # namespace, and checks every ancestor level against the rlimit its creator had: this
    # value caps all sandboxes together (room for every concurrent one), while each
    # sandbox's init lowers its own rlimit to ``pids`` inside its namespace (runtimes.py),
    # so one fork bomb cannot starve the sandboxes running beside it.
    pids_total: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        cpu = settings.cpu_time_limit_seconds or (settings.max_timeout_seconds * 2 + 10)
        # The pool keeps warm_pool_size sandboxes per language (three languages).
        slots = settings.max_concurrent_executions + 3 * settings.warm_pool_size + 1
        return cls(
            memory_bytes=settings.memory_limit_mb * MIB,
            pids=settings.pids_limit,
            file_size_bytes=settings.max_file_size_mb * MIB,
            open_files=settings.max_open_files,
            cpu_seconds=cpu,
            pids_total=settings.pids_limit * slots,
        )

    def rlimits(self, *, namespaced: bool) -> list[Rlimit]:
        """The rlimits of one execution sandbox.

        RLIMIT_DATA (not AS) so node can reserve its address space while real allocations
        stay capped. SIGKILL follows SIGXCPU by one second: the sandbox's init ignores
        SIGXCPU (default actions of kernel signals do not apply to a PID namespace's init).
        Under bwrap (``namespaced``) the per-sandbox process cap is set by the sandbox's
        init itself; without bwrap there is no user namespace to count in, so the rlimit
        here is the cap itself.
        """
        nproc = max(self.pids_total, self.pids) if namespaced else self.pids
        return [
            (resource.RLIMIT_DATA, self.memory_bytes, self.memory_bytes),
            (resource.RLIMIT_NPROC, nproc, nproc),
            (resource.RLIMIT_FSIZE, self.file_size_bytes, self.file_size_bytes),
            (resource.RLIMIT_NOFILE, self.open_files, self.open_files),
            (resource.RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + 1),
            (resource.RLIMIT_CORE, 0, 0),
        ]


def pip_rlimits(settings: Settings) -> list[Rlimit]:
    """Limits for the pip sandbox: bwrap, pip and any build it runs."""
    memory = max(settings.memory_limit_mb, 2048) * MIB
    pids = max(settings.pids_limit, 256)
    fsize = settings.max_file_size_mb * MIB
    nofile = max(settings.max_open_files, 1024)
    cpu = settings.dependency_install_timeout_seconds + 30
    return [
        (resource.RLIMIT_DATA, memory, memory),
        (resource.RLIMIT_NPROC, pids, pids),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NOFILE, nofile, nofile),
        (resource.RLIMIT_CPU, cpu, cpu + 5),
        (resource.RLIMIT_CORE, 0, 0),
    ]
