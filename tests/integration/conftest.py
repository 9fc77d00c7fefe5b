"""Helpers for engine integration tests: real bwrap, real interpreters, real processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.engine import Engine
from sandbox_executor.models import ExecuteRequest, ExecutionResult
from tests.support import warm


class RunCode(Protocol):
    def __call__(
        self, code: str, language: str = ..., *, settings: Settings | None = ..., **fields: Any
    ) -> Awaitable[ExecutionResult]: ...


@pytest.fixture
def run_code(settings: Settings) -> RunCode:
    """Execute ``code`` through a fresh Engine (the default test settings unless given)."""

    async def run(
        code: str, language: str = "python", *, settings: Settings | None = None, **fields: Any
    ) -> ExecutionResult:
        request = ExecuteRequest(
            execution_id=fields.pop("execution_id", "exec_test_" + uuid.uuid4().hex[:8]),
            code=code,
            language=language,  # type: ignore[arg-type]
            **fields,
        )
        # SANDBOX_TEST_WARM_POOL=N: through a pre-started sandbox (tests/support/warm.py).
        return await warm.execute(Engine(settings or settings_default), request)

    settings_default = settings
    return run


@pytest.fixture
def marker() -> str:
    """A unique word to put in the argv of sandboxed processes, to find them from the host."""
    return "sbxmark" + uuid.uuid4().hex[:12]


def processes_with(marker: str = "", pidns: str = "") -> list[int]:
    """Host pids whose command line contains ``marker`` or that live in PID namespace
    ``pidns`` (the ``pid:[inode]`` text of /proc/PID/ns/pid, as seen inside the sandbox)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if marker and marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
            elif pidns and os.readlink(f"/proc/{entry}/ns/pid") == pidns:
                found.append(int(entry))
        except OSError:
            continue
    return found


def proc_ids(pid: int) -> tuple[list[int], list[int], int]:
    """(real, effective, saved, fs uids), the same for gids, and the parent pid of ``pid``."""
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    uids = [int(v) for v in fields["Uid"].split()]
    gids = [int(v) for v in fields["Gid"].split()]
    return uids, gids, int(fields["PPid"])


def rss_kib(field: str = "VmRSS") -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def reset_peak_rss() -> None:
    """Reset this process's VmHWM so a later reading is the peak of what follows."""
    Path("/proc/self/clear_refs").write_text("5")


@pytest.fixture
def host() -> SimpleNamespace:
    """Host-side probes (test modules cannot import this conftest by name)."""
    return SimpleNamespace(
        processes_with=processes_with, proc_ids=proc_ids, rss_kib=rss_kib, reset_peak_rss=reset_peak_rss
    )
