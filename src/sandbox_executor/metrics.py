"""Prometheus metrics of the daemon, on one registry served at GET /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .isolation import LEVELS
from .models import Language

if TYPE_CHECKING:
    from .pool import PoolStats

REGISTRY = CollectorRegistry()

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

EXECUTIONS = Counter(
    "sandbox_executions_total",
    "Finished executions by language and status.",
    ["language", "status"],
    registry=REGISTRY,
)
EXECUTION_DURATION = Histogram(
    "sandbox_execution_duration_seconds",
    "Wall time of executions, hand-off to exit.",
    ["language"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "sandbox_queue_wait_seconds",
    "Time accepted executions waited for a free slot.",
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("sandbox_queue_depth", "Executions accepted and waiting.", registry=REGISTRY)
ACTIVE = Gauge("sandbox_active_executions", "Executions running now.", registry=REGISTRY)
REJECTED = Counter(
    "sandbox_rejected_requests_total",
    "Requests refused, by reason.",
    ["reason"],
    registry=REGISTRY,
)

# The warm pool (pool.py).
POOL_SANDBOXES = Gauge(
    "sandbox_warm_pool_sandboxes",
    "Pre-started sandboxes waiting for an execution.",
    ["language"],
    registry=REGISTRY,
)
POOL_READY = Gauge(
    "sandbox_warm_pool_ready",
    "Waiting sandboxes whose interpreter is up (blocked on its input pipe).",
    ["language"],
    registry=REGISTRY,
)
POOL_MEMORY = Gauge(
    "sandbox_warm_pool_memory_bytes",
    "Resident memory (sum of VmRSS) of the waiting sandboxes' processes.",
    registry=REGISTRY,
)
POOL_TAKES = Counter(
    "sandbox_warm_pool_takes_total",
    "Executions by whether a pre-started sandbox served them (hit) or a cold start (miss).",
    ["language", "outcome"],
    registry=REGISTRY,
)
POOL_DISCARDS = Counter(
    "sandbox_warm_pool_discarded_total",
    "Waiting sandboxes thrown away unused, by reason.",
    ["reason"],
    registry=REGISTRY,
)


ISOLATION_LEVEL = Gauge(
    "sandbox_isolation_level",
    "The isolation level sandboxes run at (docs/SECURITY.md): 1 for the level in force, 0 for the others.",
    ["level"],
    registry=REGISTRY,
)


def record_isolation(level: str) -> None:
    for name in LEVELS:
        ISOLATION_LEVEL.labels(name).set(1 if name == level else 0)


def record_pool(stats: PoolStats) -> None:
    """Refresh the pool gauges from ``stats`` (on every /metrics scrape)."""
    for language in get_args(Language):
        POOL_SANDBOXES.labels(language).set(stats.languages.get(language, 0))
        POOL_READY.labels(language).set(stats.ready.get(language, 0))
    POOL_MEMORY.set(stats.memory_bytes)


# The dependency installer's egress proxy (dependencies/egress/proxy.py).
EGRESS_DENIED = Counter(
    "sandbox_dependency_egress_denied_total",
    "Connections of the dependency installer refused by its egress proxy, by reason.",
    ["reason"],
    registry=REGISTRY,
)
