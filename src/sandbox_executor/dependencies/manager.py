"""The sync itself: one at a time, a fresh tree per change, an atomic switch, a clean stop.

Every sync installs the whole resulting set (merge = the previous requirements plus the
new ones) into a new tree, then switches the symlink; see docs/DEPENDENCIES.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from ..config import Settings
from ..errors import Busy, InstallFailed, InternalError, ShuttingDown
from ..host import HostProfile
from .fs import chown_tree, read_installed, remove_tree, seal_tree
from .pip_sandbox import PipJob, PipOutcome, PipRunner
from .store import Manifest, VenvStore, installed_entry, now_iso
from .validation import (
    SyncRequest,
    normalize_requirements,
    redact_url,
    validate_index_url,
    validate_runtime,
)

log = structlog.get_logger(__name__)

# The error answer carries the last ERROR_TAIL_CHARS of pip's output.
ERROR_TAIL_CHARS = 4000
# Below the control plane's 30 s HTTP timeout of a merge install.
LOCK_WAIT_SECONDS = 20.0
RETRY_AFTER_SECONDS = 10
# At shutdown, how long a killed pip gets to be reaped and its tree removed.
STOP_WAIT_SECONDS = 0.5


class DependencyManager:
    """Serves POST /internal/session-config/sync: one sync at a time, atomic switches."""

    def __init__(
        self,
        settings: Settings,
        on_change: Callable[[], Awaitable[None]] | None = None,
        *,
        lock_wait_seconds: float = LOCK_WAIT_SECONDS,
        store: VenvStore | None = None,
        pip: PipRunner | None = None,
        host: HostProfile | None = None,
    ) -> None:
        """``host``: the daemon's host profile, shared with the engine (probed on first
        use when not given); ``store`` and ``pip`` replace the default parts (tests)."""
        self.settings = settings
        self.on_change = on_change
        self.lock_wait_seconds = lock_wait_seconds
        self.store = store or VenvStore(settings)
        self.pip = pip or PipRunner(settings, runtime_root=self.store.root, host=host)
        self._lock = asyncio.Lock()
        self._current: Manifest | None = None
        self._loaded = False
        self.last_pip_duration: float | None = None
        # Shutdown: no new sync once closing; stop ends the running pip; idle = none runs.
        self._closing = False
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def _load(self) -> None:
        if not self._loaded:
            self._current = self.store.load_current()
            self._loaded = True

    async def aclose(self) -> None:
        """Stop pip's spawner helper."""
        await self.pip.spawner.aclose()

    async def shutdown(self, grace: float) -> None:
        """Refuse new syncs; give the running one ``grace`` seconds to finish, then kill its
        pip: its tree is discarded, the previous set stays live and the request answers
        503 ``Executor.ShuttingDown``. Returns once no sync runs (or ``STOP_WAIT_SECONDS``
        after the kill)."""
        self._closing = True
        if self._idle.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(0.0, grace))
            return
        self._stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_WAIT_SECONDS)

    def installed(self) -> list[dict[str, Any]]:
        """The currently installed distributions (for logs and /health)."""
        self._load()
        return [dict(item) for item in self._current.installed] if self._current else []

    async def sync(self, request: SyncRequest) -> dict[str, Any]:
        """Validate, install if the set changed, switch; answer the contract's 200 body.

        Raises :class:`InvalidRequest` before anything runs, :class:`InstallFailed` when pip
        fails or times out (previous set kept, pip's output tail as the detail), :class:`Busy`
        when another sync holds the lock longer than ``lock_wait_seconds``,
        :class:`ShuttingDown` once :meth:`shutdown` began, :class:`InternalError` when the
        store cannot be written.
        """
        started_at = now_iso()
        began = time.monotonic()
        validate_runtime(request.language_runtime)
        index_url = validate_index_url(request.python_package_index_url)
        requested = normalize_requirements(request.dependencies, self.settings.dependency_max_entries)
        if self._closing:
            raise ShuttingDown("The executor is shutting down.")
        try:
            await asyncio.wait_for(self._lock.acquire(), self.lock_wait_seconds)
        except TimeoutError:
            raise Busy(
                "Another dependency sync is in progress.",
                solution=f"Retry in {RETRY_AFTER_SECONDS} seconds.",
                retry_after=RETRY_AFTER_SECONDS,
            ) from None
        self._idle.clear()
        try:
            if self._closing:  # began while this request waited for the lock
                raise ShuttingDown("The executor is shutting down.")
            installed = await self._sync_locked(request, requested, index_url)
        except _Stopped:
            log.warning(
                "dependency_sync_interrupted",
                reason="shutdown",
                session_id=request.session_id,
                mode=request.sync_mode,
                after_seconds=round(time.monotonic() - began, 3),
                detail="pip killed and its tree discarded; the previous set stays installed",
            )
            raise ShuttingDown(
                "The executor is shutting down: the dependency sync was interrupted.",
                solution="The previous set stays installed; sync again on the next executor.",
            ) from None
        finally:
            self._lock.release()
            self._idle.set()
        return {
            "status": "completed",
            "installed_dependencies": installed,
            # Never null: null fails the control plane's model (docs/CONTRACT.md section 1).
            "error": "",
            "started_at": started_at,
            "completed_at": now_iso(),
        }

    async def _sync_locked(
        self, request: SyncRequest, requested: dict[str, str], index_url: str
    ) -> list[dict[str, Any]]:
        self._load()
        current = self._current
        wanted = dict(requested)
        if request.sync_mode == "merge" and current is not None:
            wanted = {**current.requirements, **requested}
        logger = log.bind(
            session_id=request.session_id,
            mode=request.sync_mode,
            index_url=redact_url(index_url),
            requirements=sorted(wanted.values()),
        )
        if (
            current is not None
            and current.version != "external"
            and current.requirements == wanted
            and (current.index_url == index_url or not wanted)
            and self.store.current_dir() is not None
        ):
            logger.info("dependency_sync_unchanged")
            return [dict(item) for item in current.installed]
        try:
            await asyncio.to_thread(self._prepare_dirs)
            new = await asyncio.to_thread(self.store.new_version)
        except OSError as exc:
            raise _store_error(self.store, exc) from exc
        try:
            manifest = await self._install(new, wanted, index_url, logger)
            await asyncio.to_thread(self.store.write_manifest, new, manifest)
            await asyncio.to_thread(self.store.switch, new)
        except BaseException as exc:
            await asyncio.to_thread(remove_tree, new)
            new.with_name(new.name + ".json").unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _store_error(self.store, exc) from exc
            raise
        self._current = manifest
        logger.info("dependency_sync_switched", version=new.name, installed=len(manifest.installed))
        if self.on_change is not None:
            try:
                await self.on_change()
            except Exception:
                logger.exception("dependency_on_change_failed")
        await asyncio.to_thread(self.store.collect)
        return [dict(item) for item in manifest.installed]

    def _prepare_dirs(self) -> None:
        self.store.ensure_root()
        self.store.collect()
        ids = self.pip.ids()
        cache = self.store.cache
        if not cache.exists():
            cache.mkdir(parents=True, mode=0o700)
        if ids is not None and os.stat(cache).st_uid != ids[0]:
            chown_tree(cache, ids)

    async def _install(
        self, new: Path, wanted: dict[str, str], index_url: str, logger: FilteringBoundLogger
    ) -> Manifest:
        if wanted:
            if self._stop.is_set():
                raise _Stopped
            scratch = self.store.root / f"scratch-{new.name}"
            await asyncio.to_thread(self._make_scratch, scratch, new)
            try:
                job = PipJob(list(wanted.values()), index_url, new, scratch, self.store.cache)
                outcome = await self.pip.run(job, self._stop)
            finally:
                await asyncio.to_thread(remove_tree, scratch)
            if outcome.stopped:
                raise _Stopped
            self.last_pip_duration = outcome.duration
            if outcome.timed_out or outcome.returncode != 0:
                logger.warning(
                    "dependency_install_failed",
                    returncode=outcome.returncode,
                    timed_out=outcome.timed_out,
                    duration=round(outcome.duration, 3),
                )
                raise _install_failed(outcome, self.settings.dependency_install_timeout_seconds)
            logger.info("dependency_install_done", duration=round(outcome.duration, 3))
        owner = (os.geteuid(), os.getegid()) if self.settings.runs_as_root else None
        await asyncio.to_thread(seal_tree, new, owner)
        install_time = now_iso()
        dists = await asyncio.to_thread(read_installed, new)
        installed = [installed_entry(name, version, install_time) for name, version in dists]
        return Manifest(new.name, wanted, index_url, installed)

    def _make_scratch(self, scratch: Path, target: Path) -> None:
        remove_tree(scratch)
        scratch.mkdir(mode=0o700)
        (scratch / "tmp").mkdir(mode=0o700)
        ids = self.pip.ids()
        if ids is not None:
            for path in (scratch, scratch / "tmp", target):
                os.chown(path, *ids)


class _Stopped(Exception):
    """pip was killed because the executor is shutting down."""


def _store_error(store: VenvStore, exc: OSError) -> InternalError:
    log.error("dependency_store_error", path=str(store.root), error=str(exc))
    return InternalError(
        "The dependency directory cannot be written.",
        f"{type(exc).__name__}: {exc.strerror or exc}",
        f"Make the parent of SANDBOX_VENV_PATH ({store.link.parent}) writable by the daemon.",
    )


def _install_failed(outcome: PipOutcome, timeout: int) -> InstallFailed:
    tail = outcome.output_tail[-ERROR_TAIL_CHARS:]
    solution = None
    if outcome.denied:
        # Where pip could not go: an index whose files live on another host shows up here.
        refused = sorted({f"{host}:{port} ({reason})" for host, port, reason in outcome.denied if host})
        if refused:
            tail += "\n[the egress proxy refused: " + ", ".join(refused[:10]) + "]"
            solution = (
                "If pip must download from a host the index does not link to (the file host of "
                "a private HTTPS index), list it in DEPENDENCY_ALLOWED_HOSTS."
            )
    if outcome.missing_wheel is not None:
        return outcome.missing_wheel.error(tail)
    if outcome.timed_out:
        description = f"Dependency installation timed out after {timeout} seconds."
        tail = f"{tail}\n[timed out after {timeout} s]".lstrip()
    else:
        description = f"pip failed to install the dependencies (exit code {outcome.returncode})."
    return InstallFailed(description, tail, solution)
