"""Start-up probes for isolation.decide: each runs a tiny real child, never guesses.

* bwrap: the compat option set (every namespace, no /proc, no hostname) and then each of
  ``--proc``, ``--hostname``, ``--disable-userns`` on top of it, so the level says exactly
  which options this host refuses and bwrap's own message for the first refusal;
* Landlock: a ``python3 -I -S`` child (the spawner's interpreter) restricts itself with
  bootstrap/confine.py and proves the restriction holds;
* seccomp: the same kind of child sets no_new_privs and installs the landlock filter.

Each probe costs one short process (~10-40 ms); run them once, at start-up.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .isolation import DISABLE_USERNS, HOSTNAME, NAMESPACES, PROC, Probe

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


def _run(argv: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    """Exit code, stdout, and the last line of stderr (bwrap's message)."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, "", str(exc)
    err = proc.stderr.decode("utf-8", "replace").strip()
    out = proc.stdout.decode("utf-8", "replace").strip()
    return proc.returncode, out, err.splitlines()[-1] if err else ""


def probe_bwrap(bwrap: str = "bwrap") -> tuple[frozenset[str], str]:
    """The bwrap features that work here, and bwrap's message for the first that does not."""
    base = [bwrap, *_COMPAT, *_system_binds()]
    code, _, error = _run([*base, "--", "/bin/true"])
    if code != 0:
        return frozenset(), error or f"bwrap exited {code}"
    features = {NAMESPACES}
    first_error = ""
    for feature, args in _FEATURE_ARGS.items():
        # --disable-userns needs a /proc of the sandbox's own: try it with --proc.
        extra = [*_FEATURE_ARGS[PROC], *args] if feature == DISABLE_USERNS else args
        code, _, error = _run([*base, *extra, "--", "/bin/true"])
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


def probe_landlock(python: str = "/usr/bin/python3") -> int:
    """The Landlock ABI a confined child really gets (0: none, or not enforced)."""
    code, out, _ = _run([python, "-I", "-S", "-c", _LANDLOCK_CHILD, str(BOOTSTRAP)])
    return int(out) if code == 0 and out.isdigit() else 0


def probe_seccomp(program: bytes, python: str = "/usr/bin/python3") -> bool:
    """Whether a child can set no_new_privs and install ``program`` (which refuses unshare)."""
    code, out, _ = _run([python, "-I", "-S", "-c", _SECCOMP_CHILD, str(BOOTSTRAP)], program)
    return code == 0 and out == "ok"


def probe(bwrap: str = "bwrap", python: str = "/usr/bin/python3") -> Probe:
    """Everything isolation.decide needs, probed for real."""
    features, error = probe_bwrap(bwrap)
    try:
        from . import seccomp

        program: bytes | None = seccomp.build_landlock_program()
    except (ImportError, OSError):
        program = None
    return Probe(
        bwrap_features=features,
        bwrap_error=error,
        landlock_abi=probe_landlock(python),
        seccomp=program is not None and probe_seccomp(program, python),
    )
