"""Start-up choice of the strongest per-run bounds this host lets the daemon use.

In order: a writable cgroup v2 directory with the memory and pids controllers (the one
configured, else the daemon's own cgroup when it was delegated), the cgroup v1 memory
(+ pids) hierarchies where the daemon may create directories (root on a v1 host), else
the watchdog. The reasons each stronger one was passed over go into the provider's
``detail`` so /health and ``check`` can say why.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from ..poller import Poller
from . import cgroupfs as fs
from .base import BoundsProvider, BoundsUnavailable, Mechanism
from .cgroup_run import CgroupFactory, CgroupProvider
from .cgroups import Node, RunCgroup, V1Cgroup, V2Cgroup
from .watchdog import WatchdogProvider

log = structlog.get_logger(__name__)

MechanismChoice = Literal["auto", "cgroup_v2", "cgroup_v1", "watchdog"]
BASE_NAME = "sandbox-executor"
# Where the daemon's own processes go when its delegated v2 cgroup must become a parent
# (cgroup v2 lets only leaves hold processes once controllers are enabled below them).
LEAF_NAME = "sandbox-executor-daemon"
CONTROLLERS = ("memory", "pids")


@dataclass(frozen=True)
class HostCgroups:
    """The cgroup mounts and the daemon's own cgroup paths."""

    mounts: tuple[fs.CgroupMount, ...]
    own: dict[str, str]

    @classmethod
    def read(cls) -> HostCgroups:
        mountinfo = Path("/proc/self/mountinfo").read_text(errors="replace")
        own = Path("/proc/self/cgroup").read_text(errors="replace")
        return cls(tuple(fs.parse_mountinfo(mountinfo)), fs.parse_proc_cgroup(own))

    def v1_mount(self, controller: str) -> fs.CgroupMount | None:
        return next((m for m in self.mounts if m.version == 1 and controller in m.controllers), None)

    def v2_mount_of(self, directory: Path) -> fs.CgroupMount | None:
        """The cgroup2 mount holding ``directory`` (the deepest one)."""
        best: fs.CgroupMount | None = None
        for mount in self.mounts:
            if mount.version == 2 and directory.is_relative_to(mount.mount_point):
                if best is None or len(mount.mount_point) > len(best.mount_point):
                    best = mount
        return best


def v2_root(host: HostCgroups, configured: Path | None) -> Node:
    """The v2 cgroup to build under: the configured one, else the daemon's own (its parent
    when the daemon already sits in the leaf a previous start moved it to)."""
    if configured is not None:
        mount = host.v2_mount_of(configured)
        if mount is None:
            raise BoundsUnavailable(f"{configured} is not on a cgroup2 mount")
        rel = configured.relative_to(mount.mount_point).as_posix()
        parts = [p for p in (mount.root.strip("/"), "" if rel == "." else rel) if p]
        return Node(configured, "/" + "/".join(parts))
    own = host.own.get("")
    mount = next((m for m in host.mounts if m.version == 2), None)
    if own is None or mount is None:
        raise BoundsUnavailable("no cgroup2 hierarchy")
    directory = fs.cgroup_dir(mount, own)
    if directory is None:
        raise BoundsUnavailable(f"own cgroup {own} is not visible under {mount.mount_point}")
    node = Node(directory, own)
    if directory.name == LEAF_NAME:
        node = Node(directory.parent, own.rsplit("/", 1)[0] or "/")
    return node


def _enable_controllers(directory: Path) -> None:
    fs.write_text(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in CONTROLLERS))


def prepare_v2(root: Node) -> Node:
    """Check ``root`` is usable, move its processes into a leaf, enable memory+pids below
    it; returns the base node runs are created under."""
    try:
        available = fs.read_text(root.directory / "cgroup.controllers").split()
    except OSError as exc:
        raise BoundsUnavailable(f"{root.directory}: {exc.strerror}") from exc
    missing = [c for c in CONTROLLERS if c not in available]
    if missing:
        raise BoundsUnavailable(f"{root.directory} lacks the {'+'.join(missing)} controller(s)")
    if not os.access(root.directory / "cgroup.subtree_control", os.W_OK):
        raise BoundsUnavailable(f"{root.directory} is not delegated to this user")
    try:
        residents = fs.read_procs(root.directory)
        if residents:
            leaf = root.child(LEAF_NAME)
            leaf.directory.mkdir(exist_ok=True)
            for pid in residents:
                with contextlib.suppress(ProcessLookupError):
                    fs.write_text(leaf.directory / "cgroup.procs", str(pid))
        _enable_controllers(root.directory)
        base = root.child(BASE_NAME)
        base.directory.mkdir(exist_ok=True)
        _enable_controllers(base.directory)
    except OSError as exc:
        raise BoundsUnavailable(f"cannot set up {root.directory}: {exc}") from exc
    return base


def _v2_provider(host: HostCgroups, poller: Poller, configured: Path | None) -> CgroupProvider:
    base = prepare_v2(v2_root(host, configured))

    def factory(nodes: tuple[Node, ...]) -> RunCgroup:
        return V2Cgroup(nodes[0])

    detail = f"cgroup v2 under {base.directory} (memory.max, memory.swap.max=0, pids.max, cgroup.kill)"
    return _provider("cgroup_v2", detail, [base], factory, poller, _enable_controllers)


def _v1_base(host: HostCgroups, controller: str) -> Node:
    mount = host.v1_mount(controller)
    own = host.own.get(controller)
    if mount is None or own is None:
        raise BoundsUnavailable(f"no cgroup v1 {controller} hierarchy")
    directory = fs.cgroup_dir(mount, own)
    if directory is None:
        raise BoundsUnavailable(f"own {controller} cgroup {own} is not visible")
    base = Node(directory, own).child(BASE_NAME)
    try:
        base.directory.mkdir(exist_ok=True)
    except OSError as exc:
        raise BoundsUnavailable(f"{base.directory}: {exc.strerror}") from exc
    return base


def _v1_provider(host: HostCgroups, poller: Poller) -> CgroupProvider:
    memory = _v1_base(host, "memory")
    try:
        pids: Node | None = _v1_base(host, "pids")
    except BoundsUnavailable as exc:
        log.warning("cgroup_v1_without_pids", reason=str(exc))
        pids = None

    def factory(nodes: tuple[Node, ...]) -> RunCgroup:
        return V1Cgroup(nodes[0], nodes[1] if len(nodes) > 1 else None)

    where = f"memory under {memory.directory}"
    where += f", pids under {pids.directory}" if pids else " (pids: not writable, RLIMIT_NPROC only)"
    bases = [memory] if pids is None else [memory, pids]
    return _provider("cgroup_v1", f"cgroup v1: {where}", bases, factory, poller, None)


def _provider(
    mechanism: Mechanism,
    detail: str,
    bases: list[Node],
    factory: CgroupFactory,
    poller: Poller,
    prepare: Callable[[Path], None] | None,
) -> CgroupProvider:
    try:
        if prepare is None:
            return CgroupProvider(mechanism, detail, bases, factory, poller)
        return CgroupProvider(mechanism, detail, bases, factory, poller, prepare=prepare)
    except OSError as exc:
        raise BoundsUnavailable(f"cannot create this daemon's cgroups: {exc}") from exc


def detect_bounds(
    poller: Poller,
    mechanism: MechanismChoice = "auto",
    *,
    cgroup_v2_path: Path | None = None,
    host: HostCgroups | None = None,
) -> BoundsProvider:
    """The provider to use; a forced mechanism that cannot work raises BoundsUnavailable."""
    host = host or HostCgroups.read()
    provider = _choose(poller, mechanism, cgroup_v2_path, host)
    log.info("run_bounds", mechanism=provider.mechanism, detail=provider.detail)
    return provider


def _choose(
    poller: Poller, mechanism: MechanismChoice, cgroup_v2_path: Path | None, host: HostCgroups
) -> BoundsProvider:
    passed_over: list[str] = []
    if mechanism in ("auto", "cgroup_v2"):
        try:
            return _v2_provider(host, poller, cgroup_v2_path)
        except BoundsUnavailable as exc:
            if mechanism == "cgroup_v2":
                raise
            passed_over.append(f"cgroup v2: {exc.description}")
    if mechanism in ("auto", "cgroup_v1"):
        try:
            return _v1_provider(host, poller)
        except BoundsUnavailable as exc:
            if mechanism == "cgroup_v1":
                raise
            passed_over.append(f"cgroup v1: {exc.description}")
    reason = "; ".join(passed_over) if passed_over else "forced by RUN_BOUNDS_MECHANISM"
    return WatchdogProvider(poller, reason)
