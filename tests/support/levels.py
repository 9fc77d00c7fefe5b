"""Run the suites at a forced isolation level (docs/SECURITY.md has one column per level).

``SANDBOX_TEST_ISOLATION`` (``bwrap``, ``bwrap-compat``, ``landlock``, ``none``) pins the
level of every test daemon (``SANDBOX_ISOLATION``) and of the engine fixtures; unset, they
take what ``auto`` gives on this host. ``make test`` runs the security suite again at
``bwrap-compat`` and, with the daemon unprivileged, at ``landlock``.

:func:`level` is the level the tests run at, so a test can assert the outcome documented
for that level (the stronger one, or the weaker one the table names).
"""

from __future__ import annotations

import functools
import os

from sandbox_executor.config import Settings
from sandbox_executor.isolation import Level
from sandbox_executor.isolation_probes import detect

ENV = "SANDBOX_TEST_ISOLATION"


def forced() -> str | None:
    """The level the test run pins, or None."""
    value = os.environ.get(ENV, "").strip()
    return value or None


def setting() -> str:
    """What SANDBOX_ISOLATION test daemons and engines get."""
    return forced() or "auto"


@functools.cache
def level() -> Level:
    """The level the tests' sandboxes run at here."""
    decision, _ = detect(Settings(sandbox_isolation=setting()))  # type: ignore[arg-type]
    assert decision.level is not None, decision.refusal
    return decision.level


def namespaced() -> bool:
    """Whether sandboxes run in bwrap's namespaces (bwrap, bwrap-compat)."""
    return level() in ("bwrap", "bwrap-compat")
