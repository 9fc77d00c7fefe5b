"""Compatibility package for the control plane's start command.

The control plane starts every session container with
``exec python -m executor.interfaces.http.rest`` from ``/app``. This package exists only so
that exact command starts sandbox-executor; see :mod:`executor.interfaces.http.rest`.
"""
