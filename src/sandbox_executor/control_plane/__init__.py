"""Reporting to the control plane (docs/CONTRACT.md section 2; docs/REPORTING.md): the
durable outbox, the callback client and the reporter that delivers through them."""

from .reporter import ControlPlaneReporter, DeliveryStats

__all__ = ["ControlPlaneReporter", "DeliveryStats"]
