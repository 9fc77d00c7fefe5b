"""/proc/<pid>/mountinfo, parsed: which filesystem holds a path, with what options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mount:
    mount_point: str
    root: str  # the path inside the filesystem that is mounted there
    fstype: str
    super_options: frozenset[str]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse(text: str) -> list[Mount]:
    """Every mount of a mountinfo text, in order (later mounts hide earlier ones)."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        options = frozenset(tail[2].split(","))
        mounts.append(Mount(_unescape(fields[4]), _unescape(fields[3]), tail[0], options))
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that holds ``path`` (absolute, resolved): the deepest; the latest of equals."""
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point
        if point == "/" or path == point or path.startswith(point + "/"):
            if best is None or len(point) >= len(best.mount_point):
                best = mount
    return best


def read() -> list[Mount]:
    return parse(Path("/proc/self/mountinfo").read_text(errors="replace"))
