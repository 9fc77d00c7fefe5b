"""Per-run cap on what a run adds to the workspace (MAX_WORKSPACE_WRITE_MB).

What counts: the growth of the workspace's allocated bytes during the run (net: a run
that deletes old files to write new ones is charged the difference; sparse files count
what they really take). How it is measured depends on the workspace's filesystem (Mode):

* the trigger: the used blocks of the workspace's filesystem (statvfs, about 2 us) minus
  their count when the run started, sampled every ``min_interval``..``max_interval``,
  sooner as the run nears its cap (headroom / ``max_rate``). When the workspace is a
  filesystem of its own (a volume or an emptyDir mounted there) this is exact and
  decides alone;
* when the filesystem is shared with other writers, the trigger is confirmed by a
  bounded scan of the workspace summing what files changed since the run started (ctime,
  which no user can set back) grew by (``baseline``: allocated bytes per path at start,
  when the caller has them; else the whole file), plus files the run holds open after
  deleting them (``run_pids``). The run is over its cap when both figures are; growth
  the scan cannot explain is someone else's and raises the trigger by that much. If the
  scan cannot finish (over ``scan_max_entries`` entries) the trigger alone decides;
* where statvfs means nothing (s3fs and other FUSE, NFS, SMB) the scan alone runs, every
  ``scan_interval`` or 20 times its own duration, whichever is longer.

Runs sharing the workspace are charged each other's concurrent writes: no cheap
mechanism tells them apart. Overshoot: what the run writes between two probes (write
speed x interval) plus, on a shared filesystem, during the confirming scan; measured
figures are in the resources notes.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from . import mountinfo
from .poller import Poller, PollHandle

log = structlog.get_logger(__name__)

MIB = 1024 * 1024
# Kernel file timestamps are a jiffy coarse: a write in the run's first tick may carry a
# ctime slightly before the fine-grained clock read at its start.
TIMESTAMP_SLACK_NS = 20_000_000
# Filesystems whose statvfs says nothing about what we write (s3fs reports a fixed 256 TiB).
_NO_STATVFS = ("fuse", "nfs", "cifs", "smb", "9p", "afs", "ceph")

# statvfs: the workspace is a whole filesystem of its own (a volume, an emptyDir tmpfs):
#   the filesystem's growth is the workspace's, the trigger alone decides;
# statvfs_scan: the workspace shares its filesystem: the trigger, then a confirming scan;
# scan: statvfs means nothing there: scans alone.
Mode = Literal["statvfs", "statvfs_scan", "scan"]


@dataclass(frozen=True)
class WriteBreach:
    """A run went over its workspace cap; ``detail`` is a line fit for its stderr."""

    added_bytes: int
    cap_bytes: int
    detail: str


@dataclass(frozen=True)
class WriteReport:
    # At the end: the filesystem's growth since the run began less what scans showed was
    # not the workspace's (statvfs mode), or the last scan's figure (scan mode).
    added_bytes: int
    exceeded: bool
    mode: Mode


@dataclass(frozen=True)
class ScanResult:
    added_bytes: int
    entries: int
    complete: bool
    seconds: float


def scan_changes(
    root: Path,
    since_ns: int,
    baseline: Mapping[str, int] | None,
    max_entries: int,
) -> ScanResult:
    """Sum what files under ``root`` changed since ``since_ns`` grew by (never follows links)."""
    began = time.perf_counter()
    added = entries = 0
    seen: set[tuple[int, int]] = set()
    cutoff = since_ns - TIMESTAMP_SLACK_NS
    try:
        for dirpath, _dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
            entries += 1 + len(filenames)
            if entries > max_entries:
                return ScanResult(added, entries, False, time.perf_counter() - began)
            rel_dir = os.path.relpath(dirpath, root)
            for name in filenames:
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_ctime_ns < cutoff:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue  # another hard link to a file already counted
                seen.add((st.st_dev, st.st_ino))
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                before = baseline.get(rel, 0) if baseline is not None else 0
                added += max(0, st.st_blocks * 512 - before)
    except OSError:
        return ScanResult(added, entries, False, time.perf_counter() - began)
    return ScanResult(added, entries, True, time.perf_counter() - began)


def deleted_open_bytes(pids: Iterable[int], device: int) -> int:
    """Allocated bytes of files on ``device`` that the processes hold open but deleted."""
    total = 0
    seen: set[int] = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if not os.readlink(f"{fd_dir}/{fd}").endswith(" (deleted)"):
                    continue
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if st.st_dev == device and st.st_nlink == 0 and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def _used_bytes(root: Path) -> int:
    st = os.statvfs(root)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def detect_mode(root: Path, mounts_text: str | None = None) -> tuple[Mode, str]:
    """(mode, why) for the workspace at ``root`` (see Mode)."""
    mounts = mountinfo.read() if mounts_text is None else mountinfo.parse(mounts_text)
    resolved = str(root.resolve())
    mount = mountinfo.mount_of(resolved, mounts)
    where, fstype = (mount.mount_point, mount.fstype) if mount else ("/", "")
    if fstype.startswith(_NO_STATVFS):
        return "scan", f"{fstype} at {where}: statvfs does not reflect writes, the workspace is scanned"
    if mount is not None and mount.mount_point == resolved and mount.root == "/":
        return "statvfs", f"{fstype} of its own at {where}: its used blocks are the workspace's"
    return "statvfs_scan", f"{fstype} at {where}, shared: statvfs trigger, a scan confirms"


class RunWriteWatch:
    """One run's watch; ``stop()`` at the end of the run returns what it saw."""

    def __init__(
        self,
        guard: WorkspaceGuard,
        on_exceeded: Callable[[WriteBreach], None],
        baseline: Mapping[str, int] | None,
        run_pids: Callable[[], Iterable[int]] | None,
    ) -> None:
        self._guard = guard
        self._on_exceeded = on_exceeded
        self._baseline = baseline
        self._run_pids = run_pids
        self._lock = threading.Lock()
        self.since_ns = time.time_ns()
        self._start_used = _used_bytes(guard.root) if guard.mode != "scan" else 0
        self._foreign = 0  # fs growth the scan showed was not the workspace's
        self._next_scan = 0.0
        self._added = 0
        self.exceeded = False
        self._stopped = False
        self._handle: PollHandle | None = None

    def begin(self) -> None:
        self._handle = self._guard.poller.add("workspace-guard", self._probe)

    def _probe(self) -> float | None:
        with self._lock:
            if self._stopped or self.exceeded:
                return None
            if self._guard.mode == "scan":
                return self._probe_scan()
            return self._probe_statvfs()

    def _probe_statvfs(self) -> float:
        guard = self._guard
        grown = _used_bytes(guard.root) - self._start_used - self._foreign
        self._added = max(0, grown)
        if grown > guard.cap_bytes and guard.mode == "statvfs":
            self._breach(grown)
            return guard.max_interval
        if grown > guard.cap_bytes and time.monotonic() >= self._next_scan:
            scan = self._scan()
            explained = scan.added_bytes
            if not scan.complete or explained > guard.cap_bytes:
                self._breach(grown if not scan.complete else min(grown, explained))
                return guard.max_interval
            self._foreign += grown - explained  # someone else's growth, not this run's
            self._added = explained
            self._next_scan = time.monotonic() + max(0.05, 10 * scan.seconds)
        headroom = guard.cap_bytes - max(0, grown)
        return min(guard.max_interval, max(guard.min_interval, headroom / guard.max_rate))

    def _probe_scan(self) -> float:
        guard = self._guard
        scan = self._scan()
        self._added = scan.added_bytes
        if scan.added_bytes > guard.cap_bytes:
            self._breach(scan.added_bytes)
        return max(guard.scan_interval, 20 * scan.seconds)

    def _scan(self) -> ScanResult:
        guard = self._guard
        scan = scan_changes(guard.root, self.since_ns, self._baseline, guard.scan_max_entries)
        if self._run_pids is not None:
            hidden = deleted_open_bytes(self._run_pids(), guard.device)
            scan = ScanResult(scan.added_bytes + hidden, scan.entries, scan.complete, scan.seconds)
        return scan

    def _last_look(self) -> None:
        """At the end of the run, which may have fallen between two probes: over the cap
        is still a breach (confirmed by a scan on a shared file system; a scanned-only
        workspace is too slow to scan at every run's end: its periodic scans decide)."""
        guard = self._guard
        if guard.mode == "scan":
            return
        grown = _used_bytes(guard.root) - self._start_used - self._foreign
        self._added = max(0, grown)
        if grown <= guard.cap_bytes:
            return
        if guard.mode == "statvfs_scan":
            scan = self._scan()
            if scan.complete and scan.added_bytes <= guard.cap_bytes:
                self._added = scan.added_bytes
                return
            grown = grown if not scan.complete else scan.added_bytes
        self._breach(grown)

    def _breach(self, added: int) -> None:
        self.exceeded = True
        self._added = added
        cap = self._guard.cap_bytes
        detail = (
            f"workspace write limit reached: the run added {added / MIB:.0f} MiB to the workspace "
            f"(limit {cap / MIB:.0f} MiB, MAX_WORKSPACE_WRITE_MB); its files are kept"
        )
        log.warning("run_workspace_limit", added=added, cap=cap)
        self._on_exceeded(WriteBreach(added, cap, detail))

    def stop(self) -> WriteReport:
        """Stop watching (idempotent); the last estimate and whether the cap was crossed."""
        if self._handle is not None:
            self._handle.cancel()
        with self._lock:
            if not self._stopped and not self.exceeded:
                self._last_look()
            self._stopped = True
            return WriteReport(self._added, self.exceeded, self._guard.mode)


class WorkspaceGuard:
    """The workspace's cap and how it is measured; one per daemon (per workspace)."""

    def __init__(
        self,
        root: Path,
        cap_bytes: int,
        poller: Poller,
        *,
        min_interval: float = 0.005,
        max_interval: float = 0.25,
        max_rate: float = 4 << 30,
        scan_interval: float = 0.5,
        scan_max_entries: int = 20_000,
        mode: Mode | None = None,
    ) -> None:
        self.root = root
        self.cap_bytes = cap_bytes
        self.poller = poller
        self.min_interval, self.max_interval, self.max_rate = min_interval, max_interval, max_rate
        self.scan_interval = scan_interval
        self.scan_max_entries = scan_max_entries
        detected, why = detect_mode(root)
        if detected != "scan" and os.statvfs(root).f_blocks == 0:
            detected, why = "scan", f"{why}; but it reports no blocks: scanned instead"
        self.mode: Mode = mode or detected
        self.detail = why if mode is None or mode == detected else f"{mode} (forced); {why}"
        self.device = os.stat(root).st_dev

    def watch(
        self,
        on_exceeded: Callable[[WriteBreach], None],
        *,
        baseline: Mapping[str, int] | None = None,
        run_pids: Callable[[], Iterable[int]] | None = None,
    ) -> RunWriteWatch:
        """Start watching a run; call just before user code can write (hand-off to the
        sandbox). ``on_exceeded`` runs at most once, on the poller thread."""
        watch = RunWriteWatch(self, on_exceeded, baseline, run_pids)
        watch.begin()
        return watch
