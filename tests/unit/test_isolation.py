"""The isolation level chosen from the settings and the probe: every combination that matters."""

from __future__ import annotations

import pytest

from sandbox_executor.isolation import (
    BWRAP_FEATURES,
    DISABLE_USERNS,
    HOSTNAME,
    NAMESPACES,
    PROC,
    Probe,
    Setting,
    available,
    bwrap_remedy,
    decide,
)

DOCKER_ERROR = "bwrap: No permissions to create new namespace, likely because the kernel does not allow ..."
FULL = Probe(frozenset(BWRAP_FEATURES), "", 7, True)
# A plain Kubernetes pod / podman defaults: namespaces yes, /proc masked, sethostname refused.
POD = Probe(frozenset({NAMESPACES}), "bwrap: Can't set hostname to sandbox: Operation not permitted", 7, True)
POD_NO_LANDLOCK = Probe(POD.bwrap_features, POD.bwrap_error, 0, True)
# Docker's default seccomp profile: no namespaces; Landlock and seccomp are there.
DOCKER = Probe(frozenset(), DOCKER_ERROR, 7, True)
DOCKER_OLD_KERNEL = Probe(frozenset(), DOCKER_ERROR, 3, True)
DOCKER_NO_LANDLOCK = Probe(frozenset(), DOCKER_ERROR, 0, True)
NO_SECCOMP = Probe(frozenset(), DOCKER_ERROR, 7, False)
UNMASKED_NO_HOSTNAME = Probe(frozenset({NAMESPACES, PROC, DISABLE_USERNS}), "hostname", 7, True)

CASES: list[tuple[str, Setting, bool, Probe, str | None]] = [
    # (name, SANDBOX_ISOLATION, DISABLE_BWRAP, probe, level or None = refuse to start)
    ("auto, everything", "auto", False, FULL, "bwrap"),
    ("auto, plain pod", "auto", False, POD, "bwrap-compat"),
    ("auto, plain pod without landlock", "auto", False, POD_NO_LANDLOCK, "bwrap-compat"),
    ("auto, sethostname refused only", "auto", False, UNMASKED_NO_HOSTNAME, "bwrap-compat"),
    ("auto, docker default seccomp", "auto", False, DOCKER, "landlock"),
    ("auto, docker, old landlock", "auto", False, DOCKER_OLD_KERNEL, "landlock"),
    ("auto, nothing", "auto", False, DOCKER_NO_LANDLOCK, None),
    ("auto, no seccomp", "auto", False, NO_SECCOMP, None),
    ("DISABLE_BWRAP, everything", "auto", True, FULL, "landlock"),
    ("DISABLE_BWRAP, docker", "auto", True, DOCKER, "landlock"),
    ("DISABLE_BWRAP never means none", "auto", True, DOCKER_NO_LANDLOCK, None),
    ("DISABLE_BWRAP, pod without landlock", "auto", True, POD_NO_LANDLOCK, None),
    ("pinned bwrap, available", "bwrap", False, FULL, "bwrap"),
    ("pinned bwrap, plain pod", "bwrap", False, POD, None),
    ("pinned bwrap, docker", "bwrap", False, DOCKER, None),
    ("pinned bwrap contradicts DISABLE_BWRAP", "bwrap", True, FULL, None),
    ("pinned bwrap-compat on a full host", "bwrap-compat", False, FULL, "bwrap-compat"),
    ("pinned landlock on a full host", "landlock", False, FULL, "landlock"),
    ("pinned landlock, docker", "landlock", False, DOCKER, "landlock"),
    ("pinned landlock, no landlock", "landlock", False, POD_NO_LANDLOCK, None),
    ("none, asked for", "none", False, FULL, "none"),
    ("none, even with DISABLE_BWRAP", "none", True, DOCKER_NO_LANDLOCK, "none"),
]


@pytest.mark.parametrize(
    ("setting", "disable_bwrap", "probe", "level"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_level(setting: Setting, disable_bwrap: bool, probe: Probe, level: str | None) -> None:
    decision = decide(setting, disable_bwrap, probe)
    assert decision.level == level
    if level is None:
        assert decision.refusal and decision.remedy
    else:
        assert not decision.refusal


def test_bwrap_gives_up_nothing_and_needs_nothing() -> None:
    decision = decide("auto", False, FULL)
    assert (decision.given_up, decision.missing, decision.remedy) == ((), (), "")


def test_compat_names_each_thing_given_up_and_its_remedy() -> None:
    decision = decide("auto", False, POD)
    assert decision.missing == (PROC, HOSTNAME, DISABLE_USERNS)
    assert len(decision.given_up) == 3
    assert "hostname" in decision.given_up[1]
    assert "unmask=/proc/*" in decision.remedy and "sandbox-executor.json" in decision.remedy
    only_hostname = decide("auto", False, UNMASKED_NO_HOSTNAME)
    assert only_hostname.missing == (HOSTNAME,)
    assert "unmask" not in only_hostname.remedy


def test_landlock_names_namespaces_as_missing_and_the_abi_gaps() -> None:
    decision = decide("auto", False, DOCKER)
    assert decision.missing == (f"user namespaces: {DOCKER_ERROR}",)
    assert "unshare" in decision.remedy
    assert not any("ABI <" in gap for gap in decision.given_up)
    old = decide("auto", False, DOCKER_OLD_KERNEL)
    assert [g.split(":")[0] for g in old.given_up if "ABI <" in g] == ["Landlock ABI < 4", "Landlock ABI < 6"]


def test_refusals_say_why_and_what_auto_would_give() -> None:
    pinned = decide("bwrap", False, POD)
    assert "Can't set hostname" in pinned.refusal and "auto would give bwrap-compat" in pinned.refusal
    assert "unmask" in pinned.remedy
    nothing = decide("auto", True, DOCKER_NO_LANDLOCK)
    assert "landlock: no Landlock" in nothing.refusal


def test_none_is_only_ever_explicit() -> None:
    for probe in (FULL, POD, DOCKER, DOCKER_NO_LANDLOCK, NO_SECCOMP):
        for disable in (False, True):
            assert decide("auto", disable, probe).level != "none"
    assert available(DOCKER_NO_LANDLOCK)["none"]


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ("bwrap: Can't set hostname to sandbox: Operation not permitted", "sethostname"),
        ("bwrap: Can't mount proc on /newroot/proc: Operation not permitted", "unmask=/proc"),
        ("bwrap: cannot open /proc/sys/user/max_user_namespaces: Read-only file system", "unmask=/proc"),
        ("bwrap: No permissions to create new namespace, likely because ...", "unshare/clone"),
        ("bwrap: Creating new namespace failed: Function not implemented", "unshare/clone"),
        ("bwrap not found: '/x/bwrap'", "apt-get install -y bubblewrap"),
    ],
)
def test_the_remedy_follows_bwraps_own_words(message: str, needle: str) -> None:
    assert needle in bwrap_remedy(message)
