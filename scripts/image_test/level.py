"""The isolation level a daemon reports: /health, /metrics and `sandbox-executor check`."""

from __future__ import annotations

import re

from . import podman
from .client import Daemon
from .report import Report

LEVELS = ("bwrap", "bwrap-compat", "landlock", "none")


def check_level(text: str) -> str:
    """The level `sandbox-executor check` names on its isolation line ("" if none)."""
    found = re.search(r"(?m)^\[[^]]*\]\s*isolation:\s*([\w-]+)", text)
    return found.group(1) if found else ""


def metrics_level(text: str) -> list[str]:
    """Levels an isolation metric reports as current (a sample valued 1 whose labels name it)."""
    found = []
    for line in text.splitlines():
        sample = re.match(r"^(\w*isolation\w*)\{([^}]*)\}\s+(\S+)$", line)
        if sample and float(sample.group(3)) == 1:
            found += [v for v in re.findall(r'="([^"]*)"', sample.group(2)) if v in LEVELS]
    return found


def check(report: Report, where: str, daemon: Daemon, expected: str) -> str:
    """Checks /health, /metrics and the check command; the level /health reported."""
    try:
        status, health = daemon.call("GET", "/health")
    except OSError as exc:
        status, health = 0, {"error": str(exc)}
    level = str(health.get("isolation")) if isinstance(health, dict) else "?"
    if expected != "none":
        report.check(
            where,
            "/health reports an isolation level other than none",
            level not in ("none", "?"),
            level,
            "level",
        )
    report.check(
        where, f"/health reports the expected level {expected}", level == expected, str(health)[:400], "level"
    )
    # Which per-run memory bounds this deployment gets (docs/OPERATIONS.md, "Per-run limits").
    bounds = health.get("memory_bounds") if isinstance(health, dict) else None
    mechanism = bounds.get("mechanism") if isinstance(bounds, dict) else None
    report.check(
        where,
        "/health names the runs' memory bounds",
        mechanism in ("cgroup_v2", "cgroup_v1", "watchdog"),
        str(bounds)[:300],
    )
    report.measure(f"{where}: memory bounds", mechanism)
    try:
        status, metrics = daemon.call("GET", "/metrics")
    except OSError as exc:
        status, metrics = 0, str(exc)
    current = metrics_level(str(metrics))
    report.check(
        where,
        f"/metrics reports isolation {expected}",
        current == [expected],
        f"HTTP {status}: {current}",
        "level",
    )
    # As the daemon's own user (the drop-in's container user is root, its daemon 1000).
    out = podman.podman(
        "exec", "--user", "1000:1000", daemon.container, "sandbox-executor", "check", timeout=90
    )
    text = out.stdout + out.stderr
    named = check_level(text)
    lines = [line.strip() for line in text.splitlines() if "isolation" in line.lower()]
    report.check(
        where,
        f"`sandbox-executor check` passes and names the level {expected}",
        out.returncode == 0 and named == expected,
        f"exit {out.returncode}: " + (" | ".join(lines) or text.strip()[-300:])[:500],
        "level",
    )
    return level
