"""Daemon configuration, read from the environment (pydantic-settings).

Every setting is documented in README.md; names match the container environment the
control plane sets (CONTRACT.md section 3) where one exists.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """All knobs of the daemon and the CLI."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    # --- HTTP service -----------------------------------------------------------------
    executor_host: str = "127.0.0.1"
    executor_port: int = 8080
    executor_api_token: str | None = Field(default=None, repr=False)
    log_level: str = "INFO"
    max_request_bytes: int = 4 * MIB
    max_concurrent_executions: int = Field(default=1, ge=1, le=64)
    max_queued_executions: int = Field(default=10, ge=0, le=10_000)
    executions_retention_seconds: int = 3600
    executions_retention_count: int = 1000

    # --- Paths ------------------------------------------------------------------------
    workspace_path: str = "/workspace"
    workspace_mount_point: str = "/workspace"
    results_dir: Path = Path("/var/lib/sandbox-executor/results")
    state_dir: Path | None = None
    sandbox_venv_path: Path = Path("/opt/sandbox-venv")

    # --- Control plane ----------------------------------------------------------------
    control_plane_url: str | None = None
    internal_api_token: str | None = Field(default=None, repr=False)
    callback_prefix: str = "/api/v1/internal"
    callback_timeout_seconds: float = 10.0
    callback_max_attempts: int = 6
    callback_max_backoff_seconds: float = 10.0
    outbox_replay_interval_seconds: float = 30.0
    heartbeat_interval: float = 5.0
    container_id: str | None = None
    pod_name: str | None = None
    hostname: str | None = None

    # --- Sandbox ----------------------------------------------------------------------
    disable_bwrap: bool = False
    bwrap_path: str = "bwrap"
    python_binary: str = "/usr/bin/python3"
    node_binary: str = "/usr/bin/node"
    bash_binary: str = "/bin/bash"
    sandbox_uid: int = 65534
    sandbox_gid: int = 65534
    seccomp_enabled: bool = True
    warm_pool_size: int = Field(default=1, ge=0, le=8)

    # --- Limits (defaults; per-request values are clamped to the maxima) ---------------
    default_timeout_seconds: int = 30
    max_timeout_seconds: int = Field(default=3600, ge=1, le=3600)
    memory_limit_mb: int = Field(default=512, ge=64)
    pids_limit: int = Field(default=256, ge=16)
    max_output_bytes: int = Field(default=10 * MIB, ge=1024)
    max_return_value_bytes: int = Field(default=10 * MIB, ge=1024)
    tmpfs_size_mb: int = Field(default=256, ge=1)
    max_file_size_mb: int = Field(default=1024, ge=1)
    max_open_files: int = Field(default=1024, ge=64)
    cpu_time_limit_seconds: int | None = None
    artifact_max_files: int = 20_000
    artifact_max_hash_bytes: int = 256 * MIB
    artifact_max_reported: int = 1000

    # --- Dependencies -----------------------------------------------------------------
    dependency_install_timeout_seconds: int = 300
    dependency_max_entries: int = 200
    pip_cache_dir: Path | None = None

    @field_validator("callback_prefix")
    @classmethod
    def _prefix_slash(cls, value: str) -> str:
        return "/" + value.strip("/") if value.strip("/") else ""

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @cached_property
    def workspace_dir(self) -> Path:
        """The local workspace directory (an ``s3://`` value means the local mount)."""
        if "://" in self.workspace_path:
            return Path(self.workspace_mount_point)
        return Path(self.workspace_path)

    @cached_property
    def state_path(self) -> Path:
        """Daemon-private state (synthetic /etc files, seccomp filter); never in a sandbox."""
        return self.state_dir or self.results_dir.parent / "state"

    @property
    def isolation(self) -> Literal["bwrap", "none"]:
        return "none" if self.disable_bwrap else "bwrap"

    @property
    def runs_as_root(self) -> bool:
        return os.geteuid() == 0

    def sandbox_ids(self) -> tuple[int, int]:
        """The uid/gid user code runs as outside its namespace."""
        if self.runs_as_root:
            return self.sandbox_uid, self.sandbox_gid
        return os.geteuid(), os.getegid()

    def clamp_timeout(self, requested: int | None) -> int:
        value = self.default_timeout_seconds if requested is None else requested
        return max(1, min(value, self.max_timeout_seconds))

    @property
    def container_identity(self) -> str:
        """container_id for lifecycle callbacks: CONTAINER_ID, else HOSTNAME, else uname."""
        return self.container_id or self.hostname or os.uname().nodename
