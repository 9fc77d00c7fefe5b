"""Start-up probes for isolation.decide: each runs a tiny real child, never guesses.

* bwrap: the compat option set (every namespace, the container's /proc bound read-only,
  no hostname) and then each of ``--proc``, ``--hostname``, ``--disable-userns`` on top of
  the namespaces, so the level says exactly which options this host refuses and bwrap's
  own message for the first refusal;
* Landlock: a ``python3 -I -S`` child (the spawner's interpreter) restricts itself with
  bootstrap/confine.py and proves the restriction holds;
* seccomp: the same kind of child sets no_new_privs and installs the landlock filter.

Each probe costs one short process (~10-40 ms); :func:`detect` runs them once per process
(the host does not change under a running daemon), as the user sandboxes run as.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .config import Settings
from .isolation import DISABLE_USERNS, HOSTNAME, NAMESPACES, NOT_FOUND, PROC, Decision, Probe, decide

BOOTSTRAP = Path(__file__).with_name("bootstrap")
TIMEOUT = 20

_COMPAT = [
    "--unshare-user",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
    "--as-pid-1",
]
# What bwrap-compat runs with instead of a fresh /proc (bwrap.py: SandboxSpec.proc).
PROC_BIND = ["--ro-bind", "/proc", "/proc"]
_FEATURE_ARGS = {
    PROC: ["--proc", "/proc"],
    HOSTNAME: ["--hostname", "sandbox"],
    DISABLE_USERNS: ["--disable-userns"],
}


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return [*args, "--dev", "/dev", "--tmpfs", "/tmp"]


def _run(argv: list[str], stdin: bytes = b"", ids: tuple[int, int] | None = None) -> tuple[int, str, str]:
    """Exit code, stdout, and the last line of stderr (bwrap's message); as ``ids`` if given."""
    as_user: dict[str, Any] = {"user": ids[0], "group": ids[1], "extra_groups": []} if ids else {}
    try:
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, timeout=TIMEOUT, check=False, cwd="/", **as_user
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, "", str(exc)
    err = proc.stderr.decode("utf-8", "replace").strip()
    out = proc.stdout.decode("utf-8", "replace").strip()
    return proc.returncode, out, err.splitlines()[-1] if err else ""


def probe_bwrap(bwrap: str = "bwrap", ids: tuple[int, int] | None = None) -> tuple[frozenset[str], str]:
    """The bwrap features that work here, and bwrap's message for the first that does not."""
    if shutil.which(bwrap) is None:
        return frozenset(), f"{NOT_FOUND}: {bwrap!r}"
    base = [bwrap, *_COMPAT, *_system_binds()]
    code, _, error = _run([*base, *PROC_BIND, "--", "/bin/true"], ids=ids)
    if code != 0:
        return frozenset(), error or f"bwrap exited {code}"
    features = {NAMESPACES}
    first_error = ""
    for feature, args in _FEATURE_ARGS.items():
        # --disable-userns needs a /proc of the sandbox's own: try it with --proc.
        extra = [*_FEATURE_ARGS[PROC], *args] if feature == DISABLE_USERNS else args
        code, _, error = _run([*base, *extra, "--", "/bin/true"], ids=ids)
        if code == 0:
            features.add(feature)
        elif not first_error:
            first_error = error or f"bwrap {' '.join(args)} exited {code}"
    return frozenset(features), first_error


_LANDLOCK_CHILD = """
import os, sys
sys.path.insert(0, sys.argv[1])
import confine
abi = confine.landlock_abi()
if abi:
    confine.set_no_new_privs()
    confine.apply_landlock(confine.Policy(read_only=["/usr"]), abi)
    try:
        open("/etc/hostname").close()
        abi = 0  # restricted yet still readable: Landlock does not hold here
    except PermissionError:
        pass
    except FileNotFoundError:
        abi = 0
print(abi)
"""

_SECCOMP_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import confine
confine.set_no_new_privs()
confine.load_seccomp(sys.stdin.buffer.read())
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) == -1 and ctypes.get_errno() == 1:  # CLONE_NEWUSER: EPERM
    print("ok")
"""


def probe_landlock(python: str = "/usr/bin/python3", ids: tuple[int, int] | None = None) -> int:
    """The Landlock ABI a confined child really gets (0: none, or not enforced)."""
    code, out, _ = _run([python, "-I", "-S", "-c", _LANDLOCK_CHILD, str(BOOTSTRAP)], ids=ids)
    return int(out) if code == 0 and out.isdigit() else 0


def probe_seccomp(
    program: bytes, python: str = "/usr/bin/python3", ids: tuple[int, int] | None = None
) -> bool:
    """Whether a child can set no_new_privs and install ``program`` (which refuses unshare)."""
    code, out, _ = _run([python, "-I", "-S", "-c", _SECCOMP_CHILD, str(BOOTSTRAP)], program, ids)
    return code == 0 and out == "ok"


def probe(
    bwrap: str = "bwrap", python: str = "/usr/bin/python3", ids: tuple[int, int] | None = None
) -> Probe:
    """Everything isolation.decide needs, probed for real (as ``ids`` when given: root only)."""
    features, error = probe_bwrap(bwrap, ids)
    try:
        from . import seccomp

        program: bytes | None = seccomp.build_landlock_program()
    except (ImportError, OSError):
        program = None
    return Probe(
        bwrap_features=features,
        bwrap_error=error,
        landlock_abi=probe_landlock(python, ids),
        seccomp=program is not None and probe_seccomp(program, python, ids),
    )


@functools.cache
def cached_probe(bwrap: str, python: str, ids: tuple[int, int] | None) -> Probe:
    return probe(bwrap, python, ids)


def detect(settings: Settings) -> tuple[Decision, Probe]:
    """The level ``settings`` ask for on this host, and what the host was probed to allow.

    Probed as the sandbox user when the daemon is root (the spawner switches to it before
    bwrap or Landlock runs), once per process.
    """
    ids = settings.sandbox_ids() if settings.runs_as_root else None
    found = cached_probe(settings.bwrap_path, settings.python_binary, ids)
    return decide(settings.sandbox_isolation, settings.disable_bwrap, found), found
