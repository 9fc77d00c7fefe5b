"""The start-up probes against this host's real bwrap, Landlock and seccomp."""

from __future__ import annotations

import shutil

import pytest

from sandbox_executor import isolation, isolation_probes, seccomp
from sandbox_executor.bootstrap import confine


def test_landlock_probe_matches_the_kernel() -> None:
    assert isolation_probes.probe_landlock() == confine.landlock_abi()


def test_seccomp_probe_installs_the_landlock_filter() -> None:
    assert isolation_probes.probe_seccomp(seccomp.build_landlock_program())
    assert not isolation_probes.probe_seccomp(b"not a program")


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed")
def test_bwrap_probe_on_this_host() -> None:
    features, error = isolation_probes.probe_bwrap()
    # The development host allows everything; a missing feature must come with bwrap's words.
    assert features == frozenset(isolation.BWRAP_FEATURES) or error.startswith("bwrap")


def test_a_missing_bwrap_is_reported_not_raised() -> None:
    features, error = isolation_probes.probe_bwrap("/nonexistent/bwrap")
    assert features == frozenset() and "nonexistent" in error


def test_probe_feeds_decide() -> None:
    decision = isolation.decide("auto", False, isolation_probes.probe())
    assert decision.level in ("bwrap", "bwrap-compat", "landlock")
    assert isolation.decide("auto", True, isolation_probes.probe()).level == "landlock"
