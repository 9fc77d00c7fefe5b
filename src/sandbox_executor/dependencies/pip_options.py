"""pip's network and source-build options, and reading pip's answer when a wheel is missing.

``DEPENDENCY_ALLOW_SDIST=false`` (the default) gives pip ``--only-binary :all:``: nothing
of a package runs while it is installed. A requirement that then has no usable wheel makes
pip say only "No matching distribution found for X", the same words as for a project that
does not exist; its debug log (``--log``, always at debug level) tells the two apart with
"No sources permitted for X". :func:`find_missing_wheel` reads both, so the sync can fail
with an error that names the package and the setting.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..errors import InstallFailed

_NOT_FOUND = re.compile(r"No matching distribution found for (.+?)(?: \(from (.+)\))?\s*$", re.MULTILINE)
_NO_SOURCES = re.compile(r"No sources permitted for ([A-Za-z0-9._-]+)")
_LEADING_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")
LOG_TAIL_BYTES = 1024 * 1024


def pip_extra_args(*, allow_sdist: bool, proxy_url: str | None, log_path: str | None = None) -> list[str]:
    """Options to add to ``pip install`` (before ``--``).

    ``proxy_url`` also reaches pip's isolated build environments (pip passes ``--proxy``
    on to the pip it runs to install build requirements). ``log_path`` is where pip writes
    its debug log when sdists are refused (read back by :func:`read_log_tail`).
    """
    args: list[str] = []
    if proxy_url is not None:
        args += ["--proxy", proxy_url]
    if not allow_sdist:
        args += ["--only-binary", ":all:"]
        if log_path is not None:
            args += ["--log", log_path]
    return args


@dataclass(frozen=True)
class MissingWheel:
    """A requirement pip could not satisfy with a wheel."""

    requirement: str  # as pip printed it, e.g. "evil-pkg>=2"
    name: str  # canonical project name
    required_by: str | None  # the project that depends on it, when pip said so
    source_only: bool  # the log shows an sdist was skipped for it

    def error(self, output_tail: str = "") -> InstallFailed:
        """The 422 the sync answers; its detail names the package and the setting, then
        pip's own words (``output_tail``)."""
        via = f" (required by {self.required_by})" if self.required_by else ""
        if self.source_only:
            why = f"the index has '{self.name}' only as a source distribution (sdist), no matching wheel"
        else:
            why = f"the index has no wheel of '{self.name}' that matches"
        return InstallFailed(
            f"Cannot install {self.requirement}{via}: {why}, and building from source is off "
            "(DEPENDENCY_ALLOW_SDIST=false).",
            f"package: {self.name}; requirement: {self.requirement}; setting: DEPENDENCY_ALLOW_SDIST=false\n"
            f"{output_tail}".rstrip(),
            "Pin a version published as a wheel for this platform, or set DEPENDENCY_ALLOW_SDIST=true "
            "to let pip build it from source (its build code then runs, sandboxed, reaching only the "
            "package index).",
        )


def _project_name(requirement: str) -> str | None:
    try:
        return canonicalize_name(Requirement(requirement).name)
    except InvalidRequirement:
        match = _LEADING_NAME.match(requirement)
        return canonicalize_name(match.group(0)) if match else None


def find_missing_wheel(output: str, log_text: str | None = None) -> MissingWheel | None:
    """The requirement that failed for want of a wheel, from pip's output (and its log).

    Call only for a failed run with sdists refused. Without a log, the last requirement
    pip could not satisfy is named (it may also simply not exist). With the log, a
    requirement is named only when pip skipped a source distribution of it, so a missing
    project stays pip's own error.
    """
    matches = list(_NOT_FOUND.finditer(output))
    if not matches:
        return None
    requirement, required_by = matches[-1].group(1).strip(), matches[-1].group(2)
    name = _project_name(requirement)
    if name is None:
        return None
    skipped = {canonicalize_name(m.group(1)) for m in _NO_SOURCES.finditer(log_text or "")}
    if log_text is not None and name not in skipped:
        return None
    return MissingWheel(requirement, name, required_by, name in skipped)


def read_log_tail(path: str, limit: int = LOG_TAIL_BYTES) -> str | None:
    """The last ``limit`` bytes of pip's log, written by sandboxed code: a regular file
    only, never through a symlink, never blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        os.lseek(fd, max(0, info.st_size - limit), os.SEEK_SET)
        return os.read(fd, limit).decode("utf-8", "replace")
    finally:
        os.close(fd)
