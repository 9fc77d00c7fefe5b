"""Compatibility namespace; see :mod:`executor.interfaces.http.rest`."""
