"""Daemon configuration, read from the environment (pydantic-settings).

Every setting is documented in README.md; names match the container environment the
control plane sets (docs/CONTRACT.md section 3) where one exists. Unknown keyword
arguments are an error (a misspelt override in code or a test fails loudly); unknown
environment variables are ignored, since the container environment is full of them.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """All knobs of the daemon and the CLI."""

    model_config = SettingsConfigDict(env_prefix="", extra="forbid", populate_by_name=True)

    # --- HTTP service -----------------------------------------------------------------
    executor_host: str = Field(
        default="127.0.0.1",
        description="Listen address; an unauthenticated code runner stays on loopback unless told otherwise (images set 0.0.0.0).",
    )
    executor_port: int = Field(default=8080, description="Listen port (the control plane always uses 8080).")
    executor_api_token: str | None = Field(
        default=None,
        repr=False,
        description="When set, every route but /health needs `Authorization: Bearer <token>`.",
    )
    log_level: str = Field(
        default="INFO", description="DEBUG, INFO, WARNING or ERROR; logs are JSON lines on stdout."
    )
    max_request_bytes: int = Field(
        default=16 * MIB,
        description="Largest request body accepted, checked before parsing (400 beyond); room for 1 MiB of code and a 1 MiB event even when JSON escaping multiplies them.",
    )
    max_concurrent_executions: int = Field(default=1, ge=1, le=64, description="Executions running at once.")
    max_queued_executions: int = Field(
        default=10,
        ge=0,
        le=10_000,
        description="Accepted executions waiting for a slot; beyond it 503 Executor.QueueFull.",
    )
    stream_keepalive_seconds: float = Field(
        default=15.0,
        gt=0,
        description="An idle live-output stream (text/event-stream) gets a `: ping` comment this often, so proxies keep it open.",
    )
    stream_stall_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A live-output client that takes nothing for this long is disconnected (it never slows the run meanwhile).",
    )
    executions_retention_seconds: int = Field(
        default=3600, description="How long finished executions stay readable at GET /executions/{id}."
    )
    executions_retention_count: int = Field(
        default=1000, description="How many finished executions stay readable at most."
    )

    # --- Paths ------------------------------------------------------------------------
    workspace_path: str = Field(
        default="/workspace",
        description="The session's workspace directory; an `s3://...` value means the local mount WORKSPACE_MOUNT_POINT.",
    )
    workspace_mount_point: str = Field(
        default="/workspace", description="Where an S3 workspace is mounted locally."
    )
    results_dir: Path = Field(
        default=Path("/var/lib/sandbox-executor/results"),
        description="Durable state: the journal of accepted executions (an acceptance is written with fsync before its 200), the outbox of results not yet delivered (and undeliverable ones), and, standalone, the finished results GET /executions/{id} answers after a restart. When it is full or not writable, POST /execute answers 503 Executor.StorageUnavailable and /health is unhealthy until it recovers.",
    )
    sandbox_venv_path: Path = Field(
        default=Path("/opt/sandbox-venv"),
        description="Session dependencies (a symlink to the current installed tree), bound read-only into sandboxes.",
    )

    # --- Control plane ----------------------------------------------------------------
    control_plane_url: str | None = Field(
        default=None, description="Base URL for callbacks; unset: standalone, nothing is sent."
    )
    internal_api_token: str | None = Field(
        default=None,
        repr=False,
        description="Sent as `Authorization: Bearer` on callbacks when set; never logged, never visible to user code.",
    )
    callback_prefix: str = Field(
        default="/api/v1/internal", description="Path prefix of the control plane's callback routes."
    )
    callback_timeout_seconds: float = Field(default=10.0, description="HTTP timeout of one callback attempt.")
    callback_max_attempts: int = Field(
        default=6, description="Attempts per result before it waits in the outbox for the replayer."
    )
    callback_max_backoff_seconds: float = Field(
        default=10.0, description="Longest wait between two attempts (exponential backoff with jitter)."
    )
    outbox_replay_interval_seconds: float = Field(
        default=30.0, description="How often undelivered results are retried (also at start-up)."
    )
    heartbeat_interval_seconds: float = Field(
        default=5.0,
        # The name before every duration carried its unit; still read, the new name wins.
        validation_alias=AliasChoices("heartbeat_interval_seconds", "heartbeat_interval"),
        description="Seconds between heartbeats of a running execution (the old name HEARTBEAT_INTERVAL is still read).",
    )
    container_id: str | None = Field(
        default=None,
        description="container_id in lifecycle callbacks; default HOSTNAME, then the kernel's hostname.",
    )
    pod_name: str | None = Field(
        default=None, description="pod_name in lifecycle callbacks; default the container_id."
    )
    hostname: str | None = Field(
        default=None, description="Set by the container runtime; the default container_id."
    )

    # --- Sandbox ----------------------------------------------------------------------
    sandbox_isolation: Literal["auto", "bwrap", "bwrap-compat", "landlock", "none"] = Field(
        default="auto",
        description="The isolation level (docs/SECURITY.md): `auto` takes the strongest this host allows (`bwrap`, then `bwrap-compat`, then `landlock`); naming one makes start-up fail if it cannot be had. `none` runs user code WITHOUT a sandbox: development only, never chosen by `auto`, warned at start and per run.",
    )
    disable_bwrap: bool = Field(
        default=False,
        description="`true`: do not use bwrap; the strongest level without it (`landlock`), never `none`.",
    )
    bwrap_path: str = Field(default="bwrap", description="The bubblewrap binary.")
    python_binary: str = Field(
        default="/usr/bin/python3",
        description="Interpreter for `python` (must live under /usr: it runs inside the sandbox).",
    )
    node_binary: str = Field(default="/usr/bin/node", description="Interpreter for `javascript`.")
    bash_binary: str = Field(default="/bin/bash", description="Interpreter for `shell`.")
    sandbox_uid: int = Field(
        default=65534,
        description="uid user code runs as when the daemon is root (otherwise the daemon's own uid).",
    )
    sandbox_gid: int = Field(default=65534, description="gid user code runs as when the daemon is root.")
    seccomp_enabled: bool = Field(
        default=True, description="Install the seccomp filter of docs/SECURITY.md in every sandbox."
    )
    warm_pool_size: int = Field(
        default=1,
        ge=0,
        le=8,
        description="Pre-started sandboxes per recently used language; 0 turns the pool off.",
    )

    # --- Limits (defaults; per-request values are clamped to the maxima) ---------------
    default_timeout_seconds: int = Field(default=30, description="Timeout of a request that sends none.")
    max_timeout_seconds: int = Field(
        default=3600, ge=1, le=3600, description="Requested timeouts are clamped to this."
    )
    memory_limit_mb: int = Field(
        default=512,
        ge=64,
        description="Memory of a run, all its processes together (a cgroup's memory.max, or the memory watchdog: see RUN_BOUNDS_MECHANISM); beyond it the run is stopped with termination_reason memory_limit. Also each process's RLIMIT_DATA, as a backstop (node's heap is sized below it). peak_memory_mb is the whole run's peak.",
    )
    pids_limit: int = Field(
        default=256,
        ge=16,
        description="Processes and threads of a run, all together (a cgroup's pids.max where the daemon has cgroups; RLIMIT_NPROC in each sandbox as a backstop): a fork bomb stops here.",
    )
    max_output_bytes: int = Field(
        default=10 * MIB,
        ge=1024,
        description="Kept per stream (stdout, stderr); the rest is drained and dropped, *_truncated set.",
    )
    max_return_value_bytes: int = Field(
        default=10 * MIB, ge=1024, description="Largest serialized handler return value."
    )
    tmpfs_size_mb: int = Field(
        default=256, ge=1, description="Size of each sandbox's private /tmp (and /dev/shm)."
    )
    max_workspace_write_mb: int = Field(
        default=1024,
        ge=1,
        description="Most a run may add to the workspace (net growth of all its files together); beyond it the run is stopped with termination_reason disk_limit and its files stay. Checked every 5-250 ms (sooner near the limit), so a run writing flat out overshoots by its write speed x about 5 ms, plus a confirming scan when the workspace shares its filesystem: 10-25 MiB measured on tmpfs.",
    )
    run_bounds_mechanism: Literal["auto", "cgroup_v2", "cgroup_v1", "watchdog"] = Field(
        default="auto",
        description="How memory and processes are bounded per run, all its processes together: `auto` takes the strongest the host allows (a writable cgroup v2 tree, then cgroup v1 as root, then a memory watchdog); naming one makes start-up fail if it cannot work.",
    )
    cgroup_v2_path: Path | None = Field(
        default=None,
        description="A delegated cgroup v2 directory (memory and pids controllers available) for the per-run cgroups; unset: the daemon's own cgroup when it is delegated.",
    )
    max_file_size_mb: int = Field(
        default=1024, ge=1, description="Largest file a run may write (RLIMIT_FSIZE)."
    )
    max_open_files: int = Field(default=1024, ge=64, description="Open files per process (RLIMIT_NOFILE).")
    cpu_time_limit_seconds: int | None = Field(
        default=None,
        description="CPU seconds per process (RLIMIT_CPU backstop); default 2 x MAX_TIMEOUT_SECONDS + 10.",
    )
    max_upload_bytes: int = Field(
        default=100 * MIB,
        ge=1,
        description="Largest file accepted by PUT /files/{path} and the MCP write_file tool; the upload is refused and nothing is written beyond it.",
    )
    artifact_max_files: int = Field(
        default=20_000,
        description="Workspace entries scanned per snapshot; beyond it artifacts_truncated is set.",
    )
    artifact_max_hash_bytes: int = Field(
        default=256 * MIB, description="Bytes hashed (sha256) per run across all artifacts."
    )
    artifact_max_reported: int = Field(default=1000, description="Artifacts reported per run.")

    # --- Dependencies -----------------------------------------------------------------
    dependency_install_timeout_seconds: int = Field(
        default=300, description="Timeout of one sandboxed pip install."
    )
    dependency_max_entries: int = Field(default=200, description="Requirements accepted per sync.")
    pip_cache_dir: Path | None = Field(
        default=None, description="pip's cache (default: beside SANDBOX_VENV_PATH)."
    )
    dependency_allow_sdist: bool = Field(
        default=False,
        description="`false`: pip installs wheels only (`--only-binary :all:`), so no package code runs during a sync, and a requirement without a wheel fails with 422 naming it. `true`: pip may build source distributions (their build code runs in pip's sandbox, which reaches only the package index).",
    )
    dependency_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated `host` or `host:port` entries pip may download from besides the index's host and the hosts its pages link to (e.g. the file host of a private HTTPS index). Built in for https://pypi.org: files.pythonhosted.org.",
    )

    @field_validator("dependency_allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> tuple[str, ...]:
        entries = value.split(",") if isinstance(value, str) else value
        if not isinstance(entries, list | tuple):
            raise ValueError("expected a comma-separated list of hosts")
        hosts = tuple(str(entry).strip() for entry in entries if str(entry).strip())
        # Imported here: the dependencies package imports this module.
        from .dependencies.egress.policy import parse_allowed_hosts

        parse_allowed_hosts(hosts)  # refuse a bad entry at start-up, naming it
        return hosts

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
