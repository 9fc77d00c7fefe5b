"""Session dependencies (POST /internal/session-config/sync): validated, sandboxed pip
installs into versioned trees behind an atomically switched symlink (docs/DEPENDENCIES.md)."""

from .manager import DependencyManager
from .validation import SyncRequest

__all__ = ["DependencyManager", "SyncRequest"]
