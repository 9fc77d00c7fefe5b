"""What a dependency sync may ask for: requirement strings, the index URL, the runtime.

Everything is checked before anything runs; a refusal is :class:`InvalidRequest`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidRequest
from .egress.policy import index_refusal, index_target

MAX_ENTRY_LENGTH = 256
MAX_INDEX_URL_LENGTH = 2048
# Names pip would read as a local archive path rather than a project name.
_ARCHIVE_SUFFIXES = (
    ".whl",
    ".zip",
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz",
    ".tar.xz",
    ".txz",
    ".tlz",
    ".tar.lz",
    ".tar.lzma",
)
# Printable ASCII only: no newlines, tabs, NULs or look-alike Unicode in an entry.
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")


class SyncRequest(BaseModel):
    """Body of POST /internal/session-config/sync (docs/CONTRACT.md section 1)."""

    model_config = ConfigDict(extra="ignore")

    session_id: str | None = None
    language_runtime: str = "python3.11"
    python_package_index_url: str = "https://pypi.org/simple"
    dependencies: list[str] = Field(default_factory=list)
    sync_mode: Literal["replace", "merge"] = "replace"


def normalize_requirement(entry: Any) -> tuple[str, str]:
    """Validate one dependency entry; return (canonical name, normalized PEP 508 string).

    Raises :class:`InvalidRequest` for anything pip could read as an option, a path or a URL.
    """
    if not isinstance(entry, str):
        raise InvalidRequest("Every dependency must be a string.", {"entry": repr(entry)[:100]})
    shown = entry[:100]
    text = entry.strip(" ")
    if not text:
        raise InvalidRequest("A dependency entry is empty.", {"entry": shown})
    if len(text) > MAX_ENTRY_LENGTH:
        raise InvalidRequest(
            f"A dependency entry is longer than {MAX_ENTRY_LENGTH} characters.", {"entry": shown}
        )
    if not _PRINTABLE.match(text):
        raise InvalidRequest(
            "A dependency entry contains control, whitespace other than spaces, or non-ASCII characters.",
            {"entry": shown},
        )
    if text.startswith("-"):
        raise InvalidRequest(
            "pip options are not accepted as dependencies.",
            {"entry": shown},
            "List requirement specifiers only, e.g. 'requests==2.31.0'; set the index with "
            "python_package_index_url.",
        )
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise InvalidRequest(
            "A dependency is not a valid PEP 508 requirement.", {"entry": shown, "reason": str(exc)}
        ) from exc
    if req.url:
        raise InvalidRequest(
            "Direct URL requirements are not accepted.",
            {"entry": shown},
            "Name the project and publish it on the package index.",
        )
    name = canonicalize_name(req.name)
    # pip reads "x.whl" as a file; the canonical name ("x-whl") would not be, but refuse it.
    if req.name.lower().endswith(_ARCHIVE_SUFFIXES) or "/" in text or "\\" in text:
        raise InvalidRequest("Local paths and archives are not accepted.", {"entry": shown})
    req.name = name
    return name, str(req)


def normalize_requirements(entries: Sequence[Any], max_entries: int) -> dict[str, str]:
    """Validate a list of entries; a later entry for the same project replaces an earlier one."""
    if len(entries) > max_entries:
        raise InvalidRequest(f"Too many dependencies ({len(entries)}); at most {max_entries} are accepted.")
    result: dict[str, str] = {}
    for entry in entries:
        name, spec = normalize_requirement(entry)
        result.pop(name, None)
        result[name] = spec
    return result


def validate_index_url(url: str) -> str:
    """The index URL, if it is a plain http(s) URL with a host; else InvalidRequest."""
    if not url or len(url) > MAX_INDEX_URL_LENGTH or not _PRINTABLE.match(url) or " " in url or "\\" in url:
        # A backslash is a path separator to some URL parsers and part of the host to others.
        raise InvalidRequest("python_package_index_url is empty, too long, or has spaces or backslashes.")
    parts = urlsplit(url)
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidRequest("python_package_index_url is not a valid URL.") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidRequest(
            "python_package_index_url must be an http(s) URL with a host.",
            {"scheme": parts.scheme},
        )
    # The egress proxy's reading of the URL (stricter than urllib's): what it cannot parse,
    # or an address it would never connect to (metadata endpoints, multicast...), is refused
    # here rather than failing the install.
    try:
        refusal = index_refusal(index_target(url))
    except ValueError as exc:
        message = "python_package_index_url has a host that cannot be used."
        raise InvalidRequest(message, {"reason": str(exc)}) from None
    if refusal is not None:
        raise InvalidRequest(f"python_package_index_url cannot be used: {refusal}.")
    return url


def validate_runtime(language_runtime: str) -> None:
    """Only Python dependencies are managed; the installed set targets the sandbox's python."""
    if not re.fullmatch(r"python(3(\.\d{1,2})?)?", language_runtime or ""):
        raise InvalidRequest(
            "language_runtime must name a Python runtime, e.g. 'python3.11'.",
            {"language_runtime": str(language_runtime)[:50]},
        )


def redact_url(url: str | None) -> str | None:
    """The URL without user info, for logs."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=f"***@{netloc}").geturl()
