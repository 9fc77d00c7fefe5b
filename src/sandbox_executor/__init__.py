"""sandbox-executor: runs untrusted code in Bubblewrap sandboxes and reports the results.

The public surface is :data:`__all__`; everything else is internal. The names load on
first use, so importing the package (every submodule does) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .config import Settings
    from .engine import Engine
    from .errors import ExecutorError
    from .models import ExecuteRequest, ExecutionResult

_EXPORTS = {
    "Settings": ".config",
    "Engine": ".engine",
    "ExecutorError": ".errors",
    "ExecuteRequest": ".models",
    "ExecutionResult": ".models",
}

__all__ = ["Engine", "ExecuteRequest", "ExecutionResult", "ExecutorError", "Settings", "__version__"]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
