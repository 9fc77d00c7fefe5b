"""Shared fixtures: daemon settings over a real workspace the sandbox user can write."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_executor.config import MIB, Settings
from tests.support import levels

SANDBOX_UID = 65534
SANDBOX_GID = 65534
IS_ROOT = os.geteuid() == 0


def make_workspace(prefix: str = "sbx-ws-") -> Path:
    """A fresh workspace directory that the sandbox user can write.

    It lives directly under /tmp, not under pytest's tmp_path: /tmp/pytest-of-root is 0700,
    which the unprivileged sandbox user could not traverse to bind the workspace.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if IS_ROOT:
        os.chown(path, SANDBOX_UID, SANDBOX_GID)
    return path


@pytest.fixture
def workspace() -> Iterator[Path]:
    """An empty workspace, removed after the test."""
    path = make_workspace()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_settings(workspace: Path, tmp_path: Path) -> Callable[..., Settings]:
    """Settings factory: small limits so that limit tests stay fast; override freely."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "workspace_path": str(workspace),
            "results_dir": tmp_path / "results",
            "sandbox_uid": SANDBOX_UID,
            "sandbox_gid": SANDBOX_GID,
            "disable_bwrap": False,
            "sandbox_isolation": levels.setting(),
            "memory_limit_mb": 256,
            "default_timeout_seconds": 5,
            "max_output_bytes": 2 * MIB,
            "max_return_value_bytes": 1 * MIB,
            "warm_pool_size": 0,
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Default test settings."""
    return make_settings()
