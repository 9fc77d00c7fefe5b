"""The versioned trees behind ``SANDBOX_VENV_PATH`` and the symlink that selects one.

See docs/DEPENDENCIES.md for the layout on disk and why trees are never changed once live.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from ..config import Settings
from ..durable import atomic_write
from ..runtimes import SANDBOX_VENV_MOUNT
from .fs import read_installed, remove_tree, rename_exchange

log = structlog.get_logger(__name__)

# A replaced tree is deleted once no execution that started before the switch can still run.
RETIRE_MARGIN_SECONDS = 60
_VERSION_DIR = re.compile(r"^v(\d+)$")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Manifest:
    """What one installed tree holds and how it was made."""

    version: str
    requirements: dict[str, str]
    index_url: str | None
    installed: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "requirements": self.requirements,
                "index_url": self.index_url,
                "installed": self.installed,
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        doc = json.loads(text)
        return cls(
            version=str(doc["version"]),
            requirements={str(k): str(v) for k, v in doc.get("requirements", {}).items()},
            index_url=doc.get("index_url"),
            installed=list(doc.get("installed", [])),
        )


class VenvStore:
    """The versioned trees behind ``SANDBOX_VENV_PATH`` and the symlink that selects one."""

    def __init__(self, settings: Settings) -> None:
        self.link = Path(os.path.abspath(settings.sandbox_venv_path))
        self.root = self.link.with_name(self.link.name + ".d")
        cache = settings.pip_cache_dir
        self.cache = Path(cache) if cache else self.root / "pip-cache"
        self.retire_after = settings.max_timeout_seconds + RETIRE_MARGIN_SECONDS

    def ensure_root(self) -> None:
        # 0755: the pip sandbox (another uid) must traverse it to reach its own directories.
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)

    def current_dir(self) -> Path | None:
        """The tree the symlink points at, if it is one of ours."""
        if not self.link.is_symlink():
            return None
        target = Path(os.path.realpath(self.link))
        if target.parent == Path(os.path.realpath(self.root)) and target.is_dir():
            return target
        return None

    def load_current(self) -> Manifest | None:
        current = self.current_dir()
        if current is None:
            if self.link.is_dir():  # a directory provisioned by the image, not by us
                when = _mtime_iso(self.link)
                installed = [installed_entry(n, v, when) for n, v in read_installed(self.link)]
                return Manifest("external", {}, None, installed)
            return None
        manifest_path = current.with_name(current.name + ".json")
        try:
            return Manifest.from_json(manifest_path.read_text("utf-8"))
        except (OSError, ValueError, KeyError):
            when = _mtime_iso(current)
            installed = [installed_entry(n, v, when) for n, v in read_installed(current)]
            return Manifest(current.name, {}, None, installed)

    def new_version(self) -> Path:
        numbers = [0]
        for entry in os.scandir(self.root):
            match = _VERSION_DIR.match(entry.name.split(".", 1)[0])
            if match:
                numbers.append(int(match.group(1)))
        path = self.root / f"v{max(numbers) + 1}"
        path.mkdir(mode=0o755)
        return path

    def write_manifest(self, path: Path, manifest: Manifest) -> None:
        """Record what ``path`` holds (0600: the index URL may carry credentials)."""
        atomic_write(path.with_name(path.name + ".json"), manifest.to_json().encode(), mode=0o600)

    def switch(self, new: Path) -> None:
        """Point the symlink at ``new`` atomically and mark the previous tree retired."""
        previous = self.current_dir()
        tmp_link = self.link.with_name(f".{self.link.name}.link-{secrets.token_hex(4)}")
        os.symlink(str(new), tmp_link)
        try:
            if self.link.is_dir() and not self.link.is_symlink():
                self._replace_directory(tmp_link)
            else:
                os.replace(tmp_link, self.link)
        finally:
            if tmp_link.is_symlink():
                tmp_link.unlink()
        if previous is not None and previous != new:
            self.mark_retired(previous)

    def _replace_directory(self, tmp_link: Path) -> None:
        # First switch over a real directory (e.g. created by the image): swap it with the
        # link in one step where the kernel can, and keep its contents aside, never deleted.
        aside = self.root / f"initial-{secrets.token_hex(4)}"
        if rename_exchange(str(tmp_link), str(self.link)):
            os.rename(tmp_link, aside)
        else:
            os.rename(self.link, aside)
            os.replace(tmp_link, self.link)
        if not any(aside.iterdir()):
            aside.rmdir()
        else:
            log.warning("dependency_initial_tree_kept", path=str(aside))

    def mark_retired(self, path: Path) -> None:
        marker = path.with_name(path.name + ".retired")
        if not marker.exists():
            marker.write_text(f"{time.time():.3f}\n", "utf-8")

    def collect(self, *, now: float | None = None) -> list[Path]:
        """Delete trees no execution can be using any more; return what was removed."""
        now = time.time() if now is None else now
        current = self.current_dir()
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for entry in os.scandir(self.root):
            path = Path(entry.path)
            if entry.name.startswith("scratch-"):
                remove_tree(path)
                removed.append(path)
                continue
            if not _VERSION_DIR.match(entry.name) or path == current:
                continue
            marker = path.with_name(path.name + ".retired")
            manifest = path.with_name(path.name + ".json")
            if not manifest.exists():
                # Never live (an install interrupted before its switch): nobody binds it.
                remove_tree(path)
                removed.append(path)
                continue
            if not marker.exists():
                self.mark_retired(path)
                continue
            try:
                retired_at = float(marker.read_text("utf-8").strip() or 0)
            except (OSError, ValueError):
                retired_at = 0.0
            if now - retired_at >= self.retire_after:
                remove_tree(path)
                manifest.unlink(missing_ok=True)
                marker.unlink(missing_ok=True)
                removed.append(path)
        return removed


def _mtime_iso(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()


def installed_entry(name: str, version: str, install_time: str) -> dict[str, Any]:
    """One item of the sync answer's installed_dependencies (docs/CONTRACT.md section 1)."""
    return {
        "name": name,
        "version": version,
        "install_location": SANDBOX_VENV_MOUNT,
        "install_time": install_time,
        "is_from_template": False,
    }
