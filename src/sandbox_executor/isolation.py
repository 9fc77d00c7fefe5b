"""Isolation levels, and the pure choice of one from what the host was probed to allow.

Strongest first (docs/SECURITY.md has what each level stops and what it cannot):

* ``bwrap``: today's sandbox: user, pid, net, ipc, uts, cgroup and mount namespaces, a
  fresh /proc, its own hostname, ``--disable-userns``, the seccomp filter, rlimits.
* ``bwrap-compat``: bwrap with every namespace, for hosts that allow user namespaces but
  mask /proc (a plain Kubernetes pod, podman's defaults: no fresh /proc; the container's
  is bound read-only instead) or refuse ``sethostname`` (the seccomp profile gates it on
  CAP_SYS_ADMIN: the sandbox keeps the container's hostname). ``--disable-userns`` needs
  that fresh /proc too; the seccomp filter refuses nested user namespaces anyway. The
  level always gives up all three, whichever of them failed.
* ``landlock``: no new namespace possible (Docker's default seccomp profile): Landlock,
  the landlock seccomp filter, rlimits, a cleared environment and a per-sandbox
  supervisor (bootstrap/confine.py, bootstrap/supervisor.py).
* ``none``: only when asked for (``SANDBOX_ISOLATION=none``): development only.

``SANDBOX_ISOLATION`` is ``auto`` (the strongest available) or pins a level, which must
then be available; ``DISABLE_BWRAP=true`` means "not bwrap": the strongest level without
it, never ``none``. When nothing acceptable is available the decision is a refusal and
the daemon must not start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["bwrap", "bwrap-compat", "landlock", "none"]
Setting = Literal["auto", "bwrap", "bwrap-compat", "landlock", "none"]
LEVELS: tuple[Level, ...] = ("bwrap", "bwrap-compat", "landlock", "none")

# bwrap features, each probed by running a tiny sandbox (isolation_probes.py).
NAMESPACES = "namespaces"  # --unshare-user/pid/net/ipc/uts/cgroup with a new mount root
PROC = "proc"  # --proc /proc: a fresh procfs (refused while the container's is masked)
HOSTNAME = "hostname"  # --hostname: sethostname in the new UTS namespace
DISABLE_USERNS = "disable-userns"  # writes /proc/sys/user/max_user_namespaces: needs PROC
BWRAP_FEATURES = (NAMESPACES, PROC, HOSTNAME, DISABLE_USERNS)

# The weakest Landlock the landlock level accepts; what lower ABIs lack is reported.
MIN_LANDLOCK_ABI = 1


@dataclass(frozen=True)
class Probe:
    """What the host allows an unprivileged process, as probed at start-up."""

    bwrap_features: frozenset[str] = frozenset()
    bwrap_error: str = ""  # bwrap's own message for the first feature that failed
    landlock_abi: int = 0
    seccomp: bool = False  # no_new_privs + a filter of ours can be installed


@dataclass(frozen=True)
class Decision:
    """The level, or ``refusal`` (the daemon must not start) when ``level`` is None."""

    level: Level | None
    given_up: tuple[str, ...] = ()  # what this level lacks against bwrap
    missing: tuple[str, ...] = ()  # what keeps the next level up out of reach
    remedy: str = ""  # how an operator gets the next level up
    refusal: str = ""


# What bwrap-compat gives up, always all three (one well-defined level, whichever subset
# of the options failed on the host: a masked /proc takes the first and the last along).
_GIVEN_UP_FEATURE = {
    PROC: "no fresh /proc: the container's /proc is bound read-only, so the sandbox sees the "
    "container's process list, command lines and status (never their environment, memory, "
    "descriptors or root: its user namespace has no rights over them), under pids that are not "
    "its own",
    HOSTNAME: "the sandbox keeps the container's hostname (sethostname refused by seccomp)",
    DISABLE_USERNS: "no --disable-userns (nested user namespaces are still refused by the seccomp filter)",
}
REMEDY_FEATURE = {
    PROC: "unmask /proc: podman --security-opt unmask=/proc/*, Docker --security-opt "
    "systempaths=unconfined, Kubernetes procMount: Unmasked (with hostUsers: false)",
    HOSTNAME: "a seccomp profile allowing sethostname/setdomainname: "
    "deploy/kubernetes/seccomp/sandbox-executor.json",
    DISABLE_USERNS: "as for /proc (bwrap writes the sandbox's own /proc/sys/user/max_user_namespaces)",
}
NOT_FOUND = "bwrap not found"  # how the probe words a missing binary
REMEDY_INSTALL = "install it: apt-get install -y bubblewrap (or set BWRAP_PATH)"
REMEDY_NAMESPACES = (
    "allow unprivileged user namespaces: in a container, a seccomp profile that allows "
    "unshare/clone with namespace flags (deploy/kubernetes/seccomp/sandbox-executor.json, or "
    "podman's default; Docker's default does not: --security-opt seccomp=<profile>); on the "
    "host user.max_user_namespaces > 0 (and kernel.unprivileged_userns_clone=1 where that "
    "sysctl exists; Ubuntu 23.10+: kernel.apparmor_restrict_unprivileged_userns=0 or an "
    "AppArmor profile for bwrap)"
)
_USERNS_ERRORS = (
    "no permissions to creat",
    "creating new namespace failed",
    "uid map",
    "no space left on device",  # user.max_user_namespaces exhausted or 0
    "operation not permitted",
)


def bwrap_remedy(error: str) -> str:
    """The operator's fix for a bwrap failure, from bwrap's own message."""
    lowered = error.lower()
    if lowered.startswith(NOT_FOUND):
        return REMEDY_INSTALL
    # Checked before the user-namespace messages: these also end in "not permitted".
    if "set hostname" in lowered:
        return REMEDY_FEATURE[HOSTNAME]
    if "mount proc" in lowered or ("max_user_namespaces" in lowered and "read-only" in lowered):
        return REMEDY_FEATURE[PROC]
    if any(needle in lowered for needle in _USERNS_ERRORS):
        return REMEDY_NAMESPACES
    if "seccomp" in lowered:
        return "the kernel refused the seccomp filter: set SECCOMP_ENABLED=false only to diagnose"
    if "can't find source path" in lowered:
        return "a path bound into the sandbox is missing or unreadable by the sandbox user"
    return "run the failing bwrap command by hand (see the detail) and read docs/OPERATIONS.md"


_LANDLOCK_GIVES_UP = (
    "no pid namespace: other processes exist (their /proc is out of reach; Landlock scopes "
    "ptrace, and signals from ABI 6)",
    "no network namespace: sockets other than AF_UNIX are refused by seccomp",
    "no mount namespace: Landlock path rules instead (read-only system, read-write "
    "workspace and a private temp dir only); /dev/shm is shared with the container",
    "no ipc namespace: SysV IPC and POSIX message queues are shared with the container",
    "same uid as the daemon: RLIMIT_NPROC counts the daemon's processes too",
)


def _landlock_gaps(abi: int) -> tuple[str, ...]:
    gaps = []
    if abi < 2:
        gaps.append("Landlock ABI < 2: no rename or link across directories (EXDEV)")
    if abi < 4:
        gaps.append("Landlock ABI < 4: TCP is bounded by seccomp only")
    if abi < 6:
        gaps.append(
            "Landlock ABI < 6: signals to the daemon's processes and abstract unix sockets are not "
            "scoped (kill(-1) is still refused by seccomp)"
        )
    return tuple(gaps)


def available(probe: Probe) -> dict[Level, bool]:
    """Which levels the probed host can run (``none`` always can)."""
    features = probe.bwrap_features
    return {
        "bwrap": set(BWRAP_FEATURES) <= features,
        "bwrap-compat": NAMESPACES in features,
        "landlock": probe.landlock_abi >= MIN_LANDLOCK_ABI and probe.seccomp,
        "none": True,
    }


def _describe(level: Level, probe: Probe) -> Decision:
    lacking = tuple(f for f in BWRAP_FEATURES if f not in probe.bwrap_features)
    if level == "bwrap":
        return Decision("bwrap")
    if level == "bwrap-compat":
        return Decision(
            level,
            given_up=tuple(_GIVEN_UP_FEATURE.values()),
            missing=lacking,
            remedy="; ".join(dict.fromkeys(REMEDY_FEATURE[f] for f in lacking))
            or "none needed: bwrap-compat was asked for (SANDBOX_ISOLATION=auto gives bwrap here)",
        )
    if level == "landlock":
        if NAMESPACES in probe.bwrap_features:  # pinned, or DISABLE_BWRAP
            stronger = _strongest(available(probe), disable_bwrap=False)
            missing: tuple[str, ...] = (
                "nothing: landlock was asked for (SANDBOX_ISOLATION or DISABLE_BWRAP)",
            )
            remedy = f"unset DISABLE_BWRAP and SANDBOX_ISOLATION: this host gives {stronger}"
        else:
            missing = (f"user namespaces: {probe.bwrap_error or 'bwrap cannot create them'}",)
            remedy = bwrap_remedy(probe.bwrap_error)
        return Decision(
            level,
            given_up=_LANDLOCK_GIVES_UP + _landlock_gaps(probe.landlock_abi),
            missing=missing,
            remedy=remedy,
        )
    return Decision(
        "none",
        given_up=("no isolation at all: user code can read the daemon's secrets and kill it",),
        missing=("SANDBOX_ISOLATION=none was asked for",),
        remedy="unset SANDBOX_ISOLATION (or set auto)",
    )


def _why_not(level: Level, probe: Probe) -> str:
    if level in ("bwrap", "bwrap-compat"):
        return probe.bwrap_error or "bwrap cannot run a sandbox here"
    if probe.landlock_abi < MIN_LANDLOCK_ABI:
        return "no Landlock (kernel older than 5.13, not in the LSM list, or refused by seccomp)"
    return "a seccomp filter cannot be installed (no_new_privs or seccomp refused, or no libseccomp)"


def decide(setting: Setting, disable_bwrap: bool, probe: Probe) -> Decision:
    """The level to run at, from the settings and the probe; pure."""
    ok = available(probe)
    if setting == "none":
        return _describe("none", probe)
    if setting != "auto":
        if disable_bwrap and setting.startswith("bwrap"):
            return Decision(
                None,
                refusal=f"SANDBOX_ISOLATION={setting} contradicts DISABLE_BWRAP=true",
                remedy="drop one of the two settings",
            )
        if not ok[setting]:
            fallback = _strongest(ok, disable_bwrap)
            hint = f" (SANDBOX_ISOLATION=auto would give {fallback})" if fallback else ""
            why = _why_not(setting, probe)
            return Decision(
                None,
                refusal=f"SANDBOX_ISOLATION={setting} is not available here: {why}{hint}",
                remedy=_remedy_for(setting, probe),
            )
        return _describe(setting, probe)
    level = _strongest(ok, disable_bwrap)
    if level is None:
        reasons = "; ".join(
            f"{name}: {_why_not(name, probe)}" for name in _candidates(disable_bwrap) if not ok[name]
        )
        return Decision(
            None,
            refusal=f"no isolation level is available ({reasons})",
            remedy=bwrap_remedy(probe.bwrap_error) + "; or a kernel with Landlock (5.13+) and seccomp",
        )
    return _describe(level, probe)


def _candidates(disable_bwrap: bool) -> tuple[Level, ...]:
    return ("landlock",) if disable_bwrap else ("bwrap", "bwrap-compat", "landlock")


def _strongest(ok: dict[Level, bool], disable_bwrap: bool) -> Level | None:
    return next((name for name in _candidates(disable_bwrap) if ok[name]), None)


def _remedy_for(level: Level, probe: Probe) -> str:
    if level == "landlock":
        return "a kernel with Landlock (5.13+, 'landlock' in the LSM list) and libseccomp"
    if NAMESPACES in probe.bwrap_features:  # only some bwrap options fail
        return _describe("bwrap-compat", probe).remedy
    return bwrap_remedy(probe.bwrap_error)
