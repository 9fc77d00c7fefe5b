"""Per-run memory and process bounds over all of a run's processes (see base.py for the
call order the integrator follows, detect.py for how the mechanism is chosen)."""

from .base import (
    BoundsProvider,
    BoundsReport,
    BoundsUnavailable,
    Breach,
    BreachCallback,
    Limits,
    Mechanism,
    RunBounds,
)
from .detect import HostCgroups, MechanismChoice, detect_bounds

__all__ = [
    "BoundsProvider",
    "BoundsReport",
    "BoundsUnavailable",
    "Breach",
    "BreachCallback",
    "HostCgroups",
    "Limits",
    "Mechanism",
    "MechanismChoice",
    "RunBounds",
    "detect_bounds",
]
